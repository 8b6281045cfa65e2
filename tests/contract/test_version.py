"""protos.version.check_compatibility: the one rule deciding whether a client and an agent can talk."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protos.version import CURRENT, PROTOCOL_MAJOR, PROTOCOL_MINOR, Version, check_compatibility

uint32 = st.integers(min_value=0, max_value=2**32 - 1)  # ProtocolVersion fields are uint32 on the wire
versions = st.builds(Version, uint32, uint32)


def test_current_is_the_declared_version() -> None:
    assert Version(PROTOCOL_MAJOR, PROTOCOL_MINOR) == CURRENT
    assert CURRENT.major >= 1
    assert str(Version(3, 14)) == "3.14"


@pytest.mark.parametrize("v", [CURRENT, Version(1, 0), Version(7, 42)])
def test_same_version_is_compatible(v: Version) -> None:
    c = check_compatibility(v, v)
    assert c.compatible
    assert str(v) in c.reason


def test_newer_agent_minor_is_compatible_and_named() -> None:
    c = check_compatibility(Version(1, 0), Version(1, 3))
    assert c.compatible
    assert "agent has" in c.reason
    assert "1.0" in c.reason
    assert "1.3" in c.reason


def test_newer_client_minor_is_compatible_and_named() -> None:
    c = check_compatibility(Version(1, 5), Version(1, 2))
    assert c.compatible
    assert "client has" in c.reason


def test_older_agent_major_says_upgrade_the_agent() -> None:
    c = check_compatibility(Version(2, 0), Version(1, 9))
    assert not c.compatible
    assert "upgrade the agent" in c.reason
    assert "2.0" in c.reason
    assert "1.9" in c.reason


def test_older_client_major_says_upgrade_the_coordinator() -> None:
    c = check_compatibility(Version(1, 9), Version(2, 0))
    assert not c.compatible
    assert "upgrade the coordinator" in c.reason


@pytest.mark.parametrize(
    ("client", "agent"),
    [
        (Version(0, 0), CURRENT),
        (CURRENT, Version(0, 0)),
        (Version(0, 0), Version(0, 0)),
        (Version(0, 3), CURRENT),
    ],
)
def test_zero_major_means_no_version_and_is_incompatible(client: Version, agent: Version) -> None:
    c = check_compatibility(client, agent)
    assert not c.compatible
    assert "no protocol version" in c.reason


@given(versions, versions)
def test_compatibility_is_symmetric_and_depends_only_on_majors(a: Version, b: Version) -> None:
    ab = check_compatibility(a, b)
    ba = check_compatibility(b, a)
    assert ab.compatible == ba.compatible
    assert ab.compatible == (a.major == b.major != 0)
    assert ab.reason  # always explained


@given(versions, versions, uint32, uint32)
def test_minors_never_change_the_verdict(a: Version, b: Version, minor_a: int, minor_b: int) -> None:
    moved = check_compatibility(Version(a.major, minor_a), Version(b.major, minor_b))
    assert moved.compatible == check_compatibility(a, b).compatible


@given(st.integers(min_value=1, max_value=2**32 - 1), uint32, uint32)
def test_a_minor_difference_names_the_newer_side(major: int, minor_a: int, minor_b: int) -> None:
    c = check_compatibility(Version(major, minor_a), Version(major, minor_b))
    assert c.compatible
    if minor_a > minor_b:
        assert "client has" in c.reason
    elif minor_b > minor_a:
        assert "agent has" in c.reason
    else:
        assert "same protocol" in c.reason
