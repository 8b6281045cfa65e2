"""Probe every registered runtime in a throwaway process and print the result as JSON.

The agent server runs this as a child (`python -m agent.runtimes.probe`) so that importing runtime SDKs
never inflates or endangers the long-lived server process.
"""

from __future__ import annotations

import json
import sys

from agent.jobspec import to_jsonable
from agent.runtimes import REGISTRY, load_backend
from agent.runtimes.base import unavailable
from agent.types import RuntimeInfo


def probe_all() -> list[RuntimeInfo]:
    infos = []
    for name in REGISTRY:
        try:
            infos.append(load_backend(name).probe())
        except Exception as exc:  # a broken SDK install must not hide the other runtimes
            infos.append(unavailable(name, (), f"probe failed: {type(exc).__name__}: {exc}"))
    return infos


def main() -> None:
    json.dump([to_jsonable(i) for i in probe_all()], sys.stdout)


if __name__ == "__main__":
    main()
