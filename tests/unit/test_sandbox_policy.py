"""The sandbox's reported controls and the `required` rule, from given probe outcomes (pure)."""

from __future__ import annotations

from agent.sandbox import jobside
from agent.sandbox.policy import Sandbox

FULL = {
    jobside.NETNS: "own network namespace",
    jobside.MOUNTNS: "own mount namespace",
    jobside.PIDNS: "own PID namespace",
    "secrets": "hidden",
    jobside.READONLY: "read-only but the job folder",
    jobside.NOCAPS: "no capabilities",
}


def test_everything_in_force_lacks_nothing() -> None:
    sandbox = Sandbox("required", frozenset(FULL) & frozenset(jobside.ALL_FEATURES), dict(FULL), {})
    assert sandbox.lacking() == []
    controls = {c.name: c for c in sandbox.controls()}
    assert controls["processes"].detail.startswith("own PID namespace")
    assert "no kernel limit" in controls["memory"].detail  # no cgroup: the watchdog alone, and why


def test_nothing_in_force_is_reported_with_the_reasons() -> None:
    missing = {name: f"{name} refused: Operation not permitted" for name in jobside.ALL_FEATURES}
    sandbox = Sandbox("required", frozenset(), {}, missing, cgroup_reason="no cgroup v2 filesystem is mounted")
    lacking = {c.name: c.detail for c in sandbox.lacking()}
    assert set(lacking) == {"processes", "network", "filesystem", "secrets", "privileges"}
    assert lacking["network"] == "netns refused: Operation not permitted"
    assert "readonly refused" in lacking["filesystem"] and "landlock refused" in lacking["filesystem"]


def test_a_subreaper_alone_still_contains_processes() -> None:
    sandbox = Sandbox("auto", subreaper="subreaper: orphaned processes are re-parented to the agent")
    controls = {c.name: c for c in sandbox.controls()}
    assert controls["processes"].enforced and "subreaper" in controls["processes"].detail


def test_a_job_report_overrides_the_agent_view() -> None:
    """Per job, the controls come from what the job process reported before it opened the model."""
    sandbox = Sandbox("auto", frozenset(FULL) & frozenset(jobside.ALL_FEATURES), dict(FULL), {})
    job = {k: v for k, v in FULL.items() if k != jobside.NETNS}
    controls = {c.name: c for c in sandbox.controls(job, {jobside.NETNS: "refused this time"})}
    assert not controls["network"].enforced and controls["network"].detail == "refused this time"
