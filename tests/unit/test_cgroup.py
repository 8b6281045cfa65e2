"""Job cgroups (agent/sandbox/cgroup.py) on a folder laid out like a cgroup v2 tree.

The real hierarchy is exercised by the attack tests through real agents (tracking every process and
`cgroup.kill`); this machine's memory and pids controllers belong to cgroup v1, so what the agent writes
for the kernel limits, and how it reads an OOM kill back, is checked here on plain files.
"""

from __future__ import annotations

from pathlib import Path

from agent.sandbox.cgroup import CgroupManager, JobCgroup
from agent.sandbox.policy import memory_cgroup_reason


def _fake_root(tmp_path: Path, controllers: str) -> Path:
    root = tmp_path / "service"
    root.mkdir()
    (root / "cgroup.procs").write_text("")
    (root / "cgroup.controllers").write_text(controllers)
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_manager_enables_the_delegated_controllers_for_job_cgroups(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, "cpu io memory pids")
    manager, why = CgroupManager.detect(root)
    assert manager is not None, why
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids"
    # A plain file keeps what was written last; the kernel would list the enabled set.
    (manager.base / "cgroup.subtree_control").write_text("memory pids")
    manager = CgroupManager(manager.base, frozenset({"memory", "pids"}))
    job = manager.create()
    assert job.path.parent == manager.base and job.path.name.startswith("job-")
    assert job.limit(300 * 2**20, 4096) == ["memory.max", "pids.max"]
    assert (job.path / "memory.max").read_text() == str(300 * 2**20)
    assert (job.path / "memory.swap.max").read_text() == "0"  # a swapping job would hide its footprint
    assert (job.path / "memory.oom.group").read_text() == "1"  # a breach kills the whole job
    assert (job.path / "pids.max").read_text() == "4096"
    assert "memory" in manager.describe() and "pids" in manager.describe()


def test_without_controllers_nothing_is_limited_and_the_reason_is_given(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, "")
    manager, _ = CgroupManager.detect(root)
    assert manager is not None and manager.controllers == frozenset()
    job = manager.create()
    assert job.limit(300 * 2**20, 4096) == []
    assert not (job.path / "memory.max").exists()
    assert memory_cgroup_reason(manager.controllers)  # says why the watchdog alone enforces memory


def test_oom_kills_are_read_from_memory_events(tmp_path: Path) -> None:
    job = JobCgroup(tmp_path, frozenset({"memory"}))
    assert job.oom_kills() == 0  # no file: none
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n")
    assert job.oom_kills() == 1


def test_not_a_cgroup_folder_is_refused_with_the_reason(tmp_path: Path) -> None:
    manager, why = CgroupManager.detect(tmp_path)
    assert manager is None and "is not a cgroup v2 folder" in why

