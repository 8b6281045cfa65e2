"""The protocol version both sides speak, and the one rule that decides whether two versions can talk.

Agent and coordinator share only the `protos` package; this rule lives here so both apply the same one.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Bump MINOR for additive, backward-compatible changes (new optional fields, new RPCs, new enum values);
#: bump MAJOR for anything an older peer would misread. Field numbers are never reused.
PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0


@dataclass(frozen=True)
class Version:
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


CURRENT = Version(PROTOCOL_MAJOR, PROTOCOL_MINOR)


@dataclass(frozen=True)
class Compatibility:
    compatible: bool
    reason: str


def check_compatibility(client: Version, agent: Version) -> Compatibility:
    """Decide whether a client speaking `client` can drive an agent speaking `agent`.

    Same major: compatible (minor differences are additive by the versioning rule; the side with the
    lower minor ignores fields it does not know). Different major: incompatible, and the reason says
    which side to upgrade. A zero major means the peer sent no version at all (pre-release peer).
    """
    if client.major == 0 or agent.major == 0:
        return Compatibility(False, f"peer sent no protocol version (client {client}, agent {agent})")
    if client.major == agent.major:
        if client.minor == agent.minor:
            return Compatibility(True, f"same protocol {agent}")
        newer = "agent" if agent.minor > client.minor else "client"
        return Compatibility(
            True, f"client {client}, agent {agent}: compatible; the {newer} has features the other ignores"
        )
    upgrade = "agent" if agent.major < client.major else "coordinator"
    return Compatibility(
        False,
        f"client speaks protocol {client}, agent speaks {agent}: incompatible majors; upgrade the {upgrade}",
    )
