"""Tests of agent.artifacts: the content-addressed store's uploads, resumption, verification and caps."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent import artifacts
from agent.artifacts import (
    ArtifactChanged,
    ArtifactMissing,
    ArtifactStore,
    ArtifactTooLarge,
    ChunkTooLarge,
    DigestMismatch,
    InvalidDigest,
    StoreFull,
    UploadConflict,
    link_or_copy,
)

MiB = 2**20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_store(
    tmp_path: Path, *, max_artifact: int = 10 * MiB, max_total: int = 100 * MiB, **kwargs: Any
) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store", max_artifact_bytes=max_artifact, max_total_bytes=max_total, **kwargs)


def put(store: ArtifactStore, data: bytes) -> Path:
    upload = store.begin_upload(sha(data), len(data), 0)
    assert upload is not None
    for i in range(0, len(data), MiB):
        upload.write(data[i : i + MiB])
    return upload.commit()


def blob_files(store: ArtifactStore) -> list[str]:
    return sorted(p.name for p in (store.root / "blobs").iterdir())


def part_files(store: ArtifactStore) -> list[str]:
    return sorted(p.name for p in (store.root / "partial").iterdir())


# ------------------------------------------------------------------ queries


def test_missing_validates_dedupes_and_keeps_request_order(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    present = put(store, b"present").name
    a, b = sha(b"a"), sha(b"b")
    assert store.missing([b, present, a, b, a]) == [b, a]
    with pytest.raises(InvalidDigest):
        store.missing([a, "not-a-digest"])


@pytest.mark.parametrize(
    "digest",
    [
        "",
        "abc",
        "A" * 64,  # upper case is not the canonical form
        "g" * 64,
        "a" * 63,
        "a" * 65,
        "../" + "a" * 61,
        " " + "a" * 63,
    ],
)
def test_invalid_digests_are_refused_everywhere(tmp_path: Path, digest: str) -> None:
    store = make_store(tmp_path)
    with pytest.raises(InvalidDigest, match="not a sha256 digest"):
        store.missing([digest])
    with pytest.raises(InvalidDigest):
        store.begin_upload(digest, 1, 0)
    with pytest.raises(InvalidDigest):
        store.path_for_use(digest)
    with pytest.raises(InvalidDigest):
        store.committed_offset(digest)


def test_digest_with_trailing_newline_is_invalid(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(InvalidDigest):
        store.missing([sha(b"x") + "\n"])


def test_path_for_use_on_missing_digest_says_to_upload_first(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    digest = sha(b"never uploaded")
    with pytest.raises(ArtifactMissing, match="upload it first") as info:
        store.path_for_use(digest)
    assert digest in str(info.value)


# ------------------------------------------------------------------ uploads


def test_upload_and_commit_stores_the_exact_bytes(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = os.urandom(300_000)
    upload = store.begin_upload(sha(data), len(data), 0)
    assert upload is not None
    for i in range(0, len(data), 65_536):
        upload.write(data[i : i + 65_536])
    path = upload.commit()
    assert path.read_bytes() == data
    assert store.has(sha(data))
    assert store.path_for_use(sha(data)) == path
    assert store.missing([sha(data)]) == []
    assert store.used_bytes() == len(data)
    assert part_files(store) == []


def test_already_present_needs_zero_bytes(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = b"model bytes"
    put(store, data)
    assert store.begin_upload(sha(data), len(data), 0) is None


def test_resume_from_committed_offset_after_a_broken_upload(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = os.urandom(100_000)
    digest = sha(data)
    first = store.begin_upload(digest, len(data), 0)
    assert first is not None
    first.write(data[:40_000])
    first.close()  # the stream broke: no commit

    assert not store.has(digest)
    assert part_files(store) == [f"{digest}.part"]
    assert store.committed_offset(digest) == 40_000

    second = store.begin_upload(digest, len(data), 40_000)
    assert second is not None
    second.write(data[40_000:])
    path = second.commit()
    assert path.read_bytes() == data
    assert part_files(store) == []
    assert store.committed_offset(digest) == 0


def test_resume_with_a_wrong_offset_is_a_conflict_naming_the_committed_offset(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = os.urandom(10_000)
    upload = store.begin_upload(sha(data), len(data), 0)
    assert upload is not None
    upload.write(data[:3_000])
    upload.close()
    with pytest.raises(UploadConflict, match=r"3000 bytes are committed; resume from 3000"):
        store.begin_upload(sha(data), len(data), 5_000)
    # Restarting from 0 is always allowed and discards the old part.
    again = store.begin_upload(sha(data), len(data), 0)
    assert again is not None
    again.write(data)
    assert again.commit().read_bytes() == data


def test_commit_before_all_bytes_arrived_keeps_the_part_for_resuming(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = os.urandom(5_000)
    upload = store.begin_upload(sha(data), len(data), 0)
    assert upload is not None
    upload.write(data[:2_000])
    with pytest.raises(UploadConflict, match="resume from offset 2000"):
        upload.commit()
    assert not store.has(sha(data))
    assert store.committed_offset(sha(data)) == 2_000


def test_digest_mismatch_stores_nothing_and_removes_the_part(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    declared = sha(b"what the client meant")
    upload = store.begin_upload(declared, 9, 0)
    assert upload is not None
    upload.write(b"corrupted")
    with pytest.raises(DigestMismatch, match="nothing was stored") as info:
        upload.commit()
    assert sha(b"corrupted") in str(info.value)
    assert not store.has(declared)
    assert blob_files(store) == []
    assert part_files(store) == []
    assert store.committed_offset(declared) == 0
    # The failed upload no longer holds the digest: a correct retry goes through.
    assert store.begin_upload(declared, 9, 0) is not None


def test_writing_past_the_declared_size_is_a_conflict(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = b"0123456789"
    upload = store.begin_upload(sha(data), len(data), 0)
    assert upload is not None
    upload.write(data[:6])
    with pytest.raises(UploadConflict, match="more than its declared size of 10 bytes"):
        upload.write(data[6:] + b"extra")
    upload.close()
    assert not store.has(sha(data))


def test_concurrent_upload_of_the_same_digest_is_a_conflict(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = b"shared model"
    first = store.begin_upload(sha(data), len(data), 0)
    assert first is not None
    with pytest.raises(UploadConflict, match="already being uploaded"):
        store.begin_upload(sha(data), len(data), 0)
    # A different artifact is not blocked.
    other = store.begin_upload(sha(b"other"), 5, 0)
    assert other is not None
    other.close()
    first.close()
    # Once the first upload ended, the digest is free again.
    second = store.begin_upload(sha(data), len(data), 0)
    assert second is not None
    second.close()


# ------------------------------------------------------------------ caps


def test_per_artifact_cap_names_the_cap_and_how_to_raise_it(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_artifact=1_000, max_total=10_000)
    with pytest.raises(ArtifactTooLarge, match=r"cap of 1000 bytes.*--max-artifact-bytes"):
        store.begin_upload(sha(b"big"), 1_001, 0)
    assert store.begin_upload(sha(b"ok"), 1_000, 0) is not None


def lru_store(tmp_path: Path) -> tuple[ArtifactStore, list[str]]:
    """A store capped at 3000 bytes holding three 1000-byte blobs, used oldest (0) to newest (2)."""
    store = make_store(tmp_path, max_artifact=3_000, max_total=3_000)
    digests = []
    now = time.time()
    for i in range(3):
        data = bytes([i]) * 1_000
        path = put(store, data)
        os.utime(path, (now - 300 + 100 * i, now - 300 + 100 * i))
        digests.append(sha(data))
    return store, digests


def test_total_cap_evicts_least_recently_used_first(tmp_path: Path) -> None:
    store, (old, middle, new) = lru_store(tmp_path)
    put(store, b"\xff" * 1_000)
    assert not store.has(old)
    assert store.has(middle)
    assert store.has(new)
    assert store.used_bytes() == 3_000


def test_use_refreshes_a_blob_for_lru(tmp_path: Path) -> None:
    store, (old, middle, new) = lru_store(tmp_path)
    store.path_for_use(old)  # now the most recently used
    put(store, b"\xff" * 1_500)
    assert store.has(old)
    assert not store.has(middle)
    assert not store.has(new)


def test_pinned_blobs_are_not_evicted(tmp_path: Path) -> None:
    store, (old, middle, new) = lru_store(tmp_path)
    store.pin([old])
    put(store, b"\xff" * 1_000)
    assert store.has(old)
    assert not store.has(middle)
    assert store.has(new)


def test_store_full_when_only_pinned_blobs_remain(tmp_path: Path) -> None:
    store, digests = lru_store(tmp_path)
    store.pin(digests)
    data = b"\xff" * 1_000
    # Refused when it begins (its room could not be reserved), before any byte is sent, and nothing evicted.
    with pytest.raises(
        StoreFull, match=r"3000 bytes are artifacts that queued or running jobs need.*--max-cache-bytes"
    ):
        store.begin_upload(sha(data), len(data), 0)
    assert all(store.has(d) for d in digests)
    assert part_files(store) == []
    store.unpin(digests)
    put(store, data)
    assert store.has(sha(data))
    assert not store.has(digests[0])


def test_pins_are_counted(tmp_path: Path) -> None:
    store, (old, _, _) = lru_store(tmp_path)
    store.pin([old])
    store.pin([old])
    store.unpin([old])
    put(store, b"\xff" * 1_000)  # evicts the middle one: old is still pinned once
    assert store.has(old)
    store.unpin([old])
    put(store, b"\xfe" * 1_000)
    assert not store.has(old)


def test_artifact_larger_than_the_whole_cache_is_refused_up_front(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_artifact=5_000, max_total=2_000)
    with pytest.raises(StoreFull, match="whole cache cap of 2000"):
        store.begin_upload(sha(b"x"), 3_000, 0)


def test_disk_nearly_full_is_store_full(tmp_path: Path) -> None:
    free = [1_000]
    store = make_store(tmp_path, disk_free=lambda _root: free[0])
    with pytest.raises(StoreFull, match=r"not enough disk space.*--workdir"):
        store.begin_upload(sha(b"x"), 1_000, 0)
    assert part_files(store) == []
    # Free space beyond the headroom lets the same upload start.
    free[0] = 1_000 + artifacts.DISK_HEADROOM_BYTES
    upload = store.begin_upload(sha(b"x"), 1_000, 0)
    assert upload is not None
    upload.close()


def test_remove_stale_partials(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    stale, fresh = sha(b"stale"), sha(b"fresh")
    for digest in (stale, fresh):
        upload = store.begin_upload(digest, 100, 0)
        assert upload is not None
        upload.write(b"12345")
        upload.close()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(store.part_path(stale), (two_days_ago, two_days_ago))
    assert store.remove_stale_partials() == 1
    assert store.committed_offset(stale) == 0
    assert store.committed_offset(fresh) == 5
    assert store.remove_stale_partials(older_than_s=0) == 1
    assert part_files(store) == []


def test_store_reopened_on_the_same_root_keeps_blobs_and_parts(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    put(store, b"kept")
    upload = store.begin_upload(sha(b"half"), 10, 0)
    assert upload is not None
    upload.write(b"half")
    upload.close()
    reopened = make_store(tmp_path)
    assert reopened.has(sha(b"kept"))
    assert reopened.committed_offset(sha(b"half")) == 4


# ------------------------------------------------------------------ F9: chunk size


def test_chunk_over_one_mib_is_refused_and_says_the_limit(tmp_path: Path) -> None:
    """A client streaming chunks above MAX_CHUNK_BYTES is refused at the first one, whatever the transport
    allowed: otherwise each upload could hold QUEUED_CHUNKS of them (the 64 MiB case took 8 uploads to 2 GiB)."""
    store = make_store(tmp_path)
    data = os.urandom(artifacts.MAX_CHUNK_BYTES + 1)
    upload = store.begin_upload(sha(data), len(data), 0)
    assert upload is not None
    with pytest.raises(ChunkTooLarge, match=r"over the limit of 1048576 bytes \(1 MiB\)"):
        upload.write(data)
    assert upload.received == 0
    upload.write(data[: artifacts.MAX_CHUNK_BYTES])  # exactly the limit is fine
    upload.write(data[artifacts.MAX_CHUNK_BYTES :])
    assert upload.commit().read_bytes() == data


# ------------------------------------------------------------------ F1: links and verification


def test_link_or_copy_never_writes_through_an_existing_destination(tmp_path: Path) -> None:
    """The F1 attack at its root: a companion named like the model file used to be copied over the model's
    hard link, i.e. into the stored blob. The helper refuses any existing destination instead."""
    store = make_store(tmp_path)
    blob = put(store, b"the verified model")
    other = put(store, b"other bytes")
    dst = tmp_path / "model.onnx"
    link_or_copy(blob, dst)
    assert dst.stat().st_ino == blob.stat().st_ino
    with pytest.raises(FileExistsError):
        link_or_copy(other, dst)
    assert blob.read_bytes() == b"the verified model"
    # A symlink at the destination is not followed either (nothing is created at its target).
    target = tmp_path / "elsewhere"
    (tmp_path / "trap").symlink_to(target)
    with pytest.raises(FileExistsError):
        link_or_copy(other, tmp_path / "trap")
    assert not target.exists()


def test_link_or_copy_copies_across_filesystems_without_replacing(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second filesystem (/dev/shm) to make os.link fail with EXDEV")
    store = make_store(tmp_path)
    blob = put(store, os.urandom(3 * MiB))
    folder = Path(tempfile.mkdtemp(dir=shm))
    try:
        dst = folder / "model.onnx"
        link_or_copy(blob, dst)
        assert dst.stat().st_ino != blob.stat().st_ino
        assert dst.read_bytes() == blob.read_bytes()
        assert stat.S_IMODE(dst.stat().st_mode) == 0o444
        with pytest.raises(FileExistsError):
            link_or_copy(blob, dst)
    finally:
        shutil.rmtree(folder)


def test_published_blobs_are_read_only(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    path = put(store, b"model")
    assert stat.S_IMODE(path.stat().st_mode) == 0o444


def tamper(path: Path, data: bytes) -> None:
    """What a process with the agent's uid can do to a blob through a hard link: chmod, write the same number
    of bytes, then set atime and mtime back. Only the ctime shows it."""
    before = path.stat()
    alias = path.parent.parent / "alias"
    os.link(path, alias)
    # Timestamps can be as coarse as a clock tick: let it pass so the write gets a new ctime.
    time.sleep(0.05)
    alias.chmod(0o644)
    with alias.open("r+b") as f:
        f.write(data)
    alias.chmod(0o444)
    os.utime(alias, ns=(before.st_atime_ns, before.st_mtime_ns))
    alias.unlink()
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def test_verify_removes_a_blob_changed_through_a_hard_link_with_its_mtime_set_back(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = b"original model bytes"
    path = put(store, data)
    store.verify(path)  # first use: hashed, matches, signature recorded
    store.verify(path)
    tamper(path, b"ORIGINAL")
    with pytest.raises(ArtifactChanged, match=r"changed on disk since it was verified.*upload it again") as info:
        store.verify(path)
    assert sha(data) in str(info.value)
    assert not store.has(sha(data))
    assert store.missing([sha(data)]) == [sha(data)]
    with pytest.raises(ArtifactMissing, match="no longer on this agent"):
        store.verify(path)
    # A fresh upload repairs it, and is verified again at its first use.
    repaired = put(store, data)
    store.verify(repaired)
    assert repaired.read_bytes() == data


def test_verify_catches_a_blob_changed_before_its_first_use(tmp_path: Path) -> None:
    """Publishing records no signature: the stored bytes (not only those received) are hashed at first use."""
    store = make_store(tmp_path)
    path = put(store, b"abcdef")
    tamper(path, b"x")
    with pytest.raises(ArtifactChanged):
        store.verify(path)


def test_verify_refuses_paths_outside_the_store(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    path = put(store, b"abc")
    stray = tmp_path / path.name
    stray.write_bytes(b"abc")
    with pytest.raises(ValueError, match="is not a blob"):
        store.verify(stray)
    with pytest.raises(InvalidDigest):
        store.verify(tmp_path / "model.onnx")


# ------------------------------------------------------------------ F4: disk reservations


def test_concurrent_uploads_reserve_disk_space_so_at_most_one_starts(tmp_path: Path) -> None:
    """Each upload's remaining bytes are promised under the store's lock: two uploads that each fit the free
    space, but not together, cannot both start (before, both passed the check and filled the disk)."""
    size = 10 * MiB
    free = size + size // 2 + artifacts.DISK_HEADROOM_BYTES
    store = make_store(tmp_path, max_artifact=size, disk_free=lambda _root: free)
    a, b = os.urandom(size), os.urandom(size)
    first = store.begin_upload(sha(a), size, 0)
    assert first is not None
    with pytest.raises(StoreFull, match=rf"{size} of them promised to uploads in progress"):
        store.begin_upload(sha(b), size, 0)
    # What the first upload has written is no longer owed (the disk's free space already shows it).
    first.write(a[: MiB // 2])
    with pytest.raises(StoreFull):
        store.begin_upload(sha(b), size, 0)
    first.close()  # aborted: its promise is released
    second = store.begin_upload(sha(b), size, 0)
    assert second is not None
    second.close()


def test_racing_uploads_only_one_reserves_the_last_room(tmp_path: Path) -> None:
    size = MiB
    store = make_store(tmp_path, disk_free=lambda _root: size + artifacts.DISK_HEADROOM_BYTES)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def begin(i: int) -> None:
        barrier.wait()
        try:
            upload = store.begin_upload(sha(bytes([i])), size, 0)
        except StoreFull:
            outcomes.append("full")
        else:
            outcomes.append("started")
            assert upload is not None
            time.sleep(0.2)  # still in progress while the others try
            upload.close()

    threads = [threading.Thread(target=begin, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == ["full"] * 7 + ["started"]


def test_uploads_in_progress_count_against_the_cache_cap(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_artifact=1_000, max_total=1_500)
    a, b = b"a" * 1_000, b"b" * 1_000
    first = store.begin_upload(sha(a), 1_000, 0)
    assert first is not None
    assert store.used_bytes() == 1_000
    with pytest.raises(StoreFull, match="1000 are reserved by uploads in progress"):
        store.begin_upload(sha(b), 1_000, 0)
    first.write(a)
    first.commit()
    assert store.used_bytes() == 1_000  # the reservation became the blob, not both
    second = store.begin_upload(sha(b), 1_000, 0)  # evicts the first blob (LRU, unpinned)
    assert second is not None
    assert not store.has(sha(a))
    second.close()


# ------------------------------------------------------------------ F8: part files and the cap


def abandon(store: ArtifactStore, digest: str, size: int, sent: int, age_s: float = 0) -> Path:
    upload = store.begin_upload(digest, size, 0)
    assert upload is not None
    upload.write(b"p" * sent)
    upload.close()  # the stream broke
    part = store.part_path(digest)
    if age_s:
        then = time.time() - age_s
        os.utime(part, (then, then))
    return part


def test_abandoned_part_files_count_against_the_cap_and_are_evicted_lru(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_artifact=1_000, max_total=2_000)
    old = abandon(store, sha(b"old"), 1_000, 900, age_s=60)
    new = abandon(store, sha(b"new"), 1_000, 800)
    assert store.used_bytes() == 1_700
    data = b"\x01" * 600
    put(store, data)  # needs 300 more: the least recently written part goes
    assert not old.exists()
    assert new.exists() and store.committed_offset(sha(b"new")) == 800
    assert store.used_bytes() == 1_400


def test_a_part_being_written_is_never_evicted(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_artifact=1_000, max_total=1_000)
    writing = store.begin_upload(sha(b"w" * 1_000), 1_000, 0)
    assert writing is not None
    writing.write(b"w" * 500)
    with pytest.raises(StoreFull, match="reserved by uploads in progress"):
        store.begin_upload(sha(b"other"), 100, 0)
    assert store.part_path(sha(b"w" * 1_000)).exists()
    writing.write(b"w" * 500)
    assert writing.commit().read_bytes() == b"w" * 1_000


def test_resuming_an_idle_part_reserves_its_whole_size_once(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_artifact=1_000, max_total=1_000)
    data = os.urandom(1_000)
    part = abandon(store, sha(data), 1_000, 0)
    upload = store.begin_upload(sha(data), 1_000, 0)
    assert upload is not None
    upload.write(data[:400])
    upload.close()
    assert part.exists()
    resumed = store.begin_upload(sha(data), 1_000, 400)  # its own part is not counted twice, nor evicted
    assert resumed is not None
    resumed.write(data[400:])
    assert resumed.commit().read_bytes() == data


def test_stale_part_files_are_dropped_whenever_an_upload_begins(tmp_path: Path) -> None:
    store = make_store(tmp_path, stale_partial_age_s=60)
    stale = abandon(store, sha(b"stale"), 100, 10, age_s=120)
    fresh = abandon(store, sha(b"fresh"), 100, 10)
    comeback = abandon(store, sha(b"comeback"), 100, 10, age_s=120)
    # The client of a stale part coming back resumes it: it is not dropped under its feet.
    resumed = store.begin_upload(sha(b"comeback"), 100, 10)
    assert resumed is not None
    assert not stale.exists()
    assert fresh.exists() and comeback.exists()
    # A part that is being written is never stale, however old its mtime looks.
    os.utime(comeback, (time.time() - 600, time.time() - 600))
    assert store.remove_stale_partials() == 0
    resumed.close()
    assert store.remove_stale_partials() == 1
    assert not comeback.exists()


def test_removing_a_finished_jobs_links_keeps_the_blob_verified(tmp_path: Path) -> None:
    """Linking a blob into a job folder and unlinking it change its ctime; the agent itself did both, so the
    next job does not hash the blob again, unless something wrote to it in between."""
    store = ArtifactStore(tmp_path / "store", max_artifact_bytes=2**20, max_total_bytes=2**22)
    data = b"model bytes" * 1000
    sha = hashlib.sha256(data).hexdigest()
    upload = store.begin_upload(sha, len(data), 0)
    assert upload is not None
    upload.write(data)
    blob = upload.commit()
    job = tmp_path / "job"
    job.mkdir()
    os.link(blob, job / "model.onnx")
    store.verify(blob)
    assert store.is_verified(blob)
    with store.links_removed([blob]):
        (job / "model.onnx").unlink()
    assert store.is_verified(blob)  # no second hash for the next job
    # A write during the job (through the link, mtime set back) is not carried over.
    os.link(blob, job / "model.onnx")
    store.verify(blob)
    st = blob.stat()
    (job / "model.onnx").chmod(0o644)
    with (job / "model.onnx").open("r+b") as f:
        f.write(b"M")
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    with store.links_removed([blob]):
        (job / "model.onnx").unlink()
    assert not store.is_verified(blob)
