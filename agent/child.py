"""Entry point of a job process: `python -m agent.child --event-fd N [--sandbox STEPS]`, job envelope on stdin.

Started by exec from the agent (never a fork of the gRPC server). Before anything else is imported (the
interpreter must still be single-threaded for a user namespace, and a PID namespace needs a fork), it
enters the sandbox namespaces the agent asked for (agent.sandbox.jobside.enter); only then does it import
the harness, numpy and the runtimes (agent.jobmain) and wait for its job.
"""

from __future__ import annotations

import argparse
import resource
import sys

from agent.sandbox import jobside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.child")
    parser.add_argument("--event-fd", type=int, required=True)
    parser.add_argument("--sandbox", default="", help="comma-separated steps of agent.sandbox.jobside")
    args = parser.parse_args(argv)
    # A crashing runtime must not fill the agent's disk with core files.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    features = jobside.parse_features(args.sandbox)
    state = jobside.Confinement()
    jobside.enter(features, state, close_in_keeper=(0, args.event_fd))
    from agent.jobmain import serve_one

    return serve_one(args.event_fd, features, state)


if __name__ == "__main__":
    sys.exit(main())
