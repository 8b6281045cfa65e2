"""Tests of agent.artifacts: the content-addressed store's uploads, resumption, verification and caps."""

from __future__ import annotations

import hashlib
import os
import time
from collections import namedtuple
from pathlib import Path

import pytest

from agent import artifacts
from agent.artifacts import (
    ArtifactMissing,
    ArtifactStore,
    ArtifactTooLarge,
    DigestMismatch,
    InvalidDigest,
    StoreFull,
    UploadConflict,
)

MiB = 2**20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_store(tmp_path: Path, *, max_artifact: int = 10 * MiB, max_total: int = 100 * MiB) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store", max_artifact_bytes=max_artifact, max_total_bytes=max_total)


def put(store: ArtifactStore, data: bytes) -> Path:
    upload = store.begin_upload(sha(data), len(data), 0)
    assert upload is not None
    upload.write(data)
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
    assert store.total_bytes() == len(data)
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
    assert store.total_bytes() == 3_000


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
    with pytest.raises(StoreFull, match="--max-cache-bytes"):
        put(store, data)
    assert all(store.has(d) for d in digests)
    assert not store.has(sha(data))
    # The upload is kept as a part file, and can be committed once the jobs released their artifacts.
    assert store.committed_offset(sha(data)) == 1_000
    store.unpin(digests)
    upload = store.begin_upload(sha(data), len(data), 1_000)
    assert upload is not None
    assert upload.commit().read_bytes() == data
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


def test_disk_nearly_full_is_store_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path)
    usage = namedtuple("usage", "total used free")
    # No public hook sets the free space the store sees, so the module's disk_usage is replaced.
    monkeypatch.setattr(artifacts.shutil, "disk_usage", lambda _path: usage(10**12, 10**12, 1_000))
    with pytest.raises(StoreFull, match=r"not enough disk space.*--workdir"):
        store.begin_upload(sha(b"x"), 1_000, 0)
    assert part_files(store) == []
    # Free space beyond the headroom lets the same upload start.
    room = 1_000 + artifacts.DISK_HEADROOM_BYTES
    monkeypatch.setattr(artifacts.shutil, "disk_usage", lambda _path: usage(10**12, 0, room))
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
