"""Entry point of a job process: `python -m agent.child --event-fd N [--sandbox STEPS]`, job envelope on stdin.

Started by exec from the agent (never a fork of the gRPC server). Before anything else is imported (the
interpreter must still be single-threaded for a user namespace, and a PID namespace needs a fork), it
enters the sandbox namespaces the agent asked for (agent.sandbox.jobside.enter); only then does it import
the harness, numpy and the runtimes (agent.jobmain) and wait for its job.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys

from agent.sandbox import jobside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.child")
    parser.add_argument("--event-fd", type=int, required=True)
    parser.add_argument("--sandbox", default="", help="comma-separated steps of agent.sandbox.jobside")
    parser.add_argument("--agent-pid", type=int, default=0, help="die with this process (the agent)")
    args = parser.parse_args(argv)
    if args.agent_pid:
        # Die with the agent, however it dies (SIGKILL, the OOM killer): a job left running unsupervised
        # would disturb every later measurement. PID 1 of the job's namespace dies with this process, and the
        # kernel then kills the rest of the namespace. If the agent died before this line, leave at once.
        jobside.die_with_parent()
        if os.getppid() != args.agent_pid:
            return 3
    # A crashing runtime must not fill the agent's disk with core files.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    features = jobside.parse_features(args.sandbox)
    state = jobside.Confinement()
    jobside.enter(features, state, close_in_keeper=(0, args.event_fd))
    from agent.jobmain import serve_one

    return serve_one(args.event_fd, features, state)


if __name__ == "__main__":
    sys.exit(main())
