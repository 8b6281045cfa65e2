"""Content-addressed artifact store in the agent's work directory.

Layout: `blobs/<sha256>` (complete, read-only) and `partial/<sha256>.part` (an upload in progress or
abandoned; its size is the committed offset a client resumes from). A blob is only ever created by renaming a
part file whose sha256 was verified, so a reader never sees a half-written or wrong blob.

Any process with the agent's uid can chmod a blob (or a hard link to it in a job folder), write through it and
set its mtime back, but not its ctime: `verify` re-hashes a blob whose (device, inode, size, mtime, ctime)
changed since it last matched, and removes it if it no longer does. The runner calls it before each job.

Caps: one artifact may not exceed `max_artifact_bytes`. Blobs, part files and uploads in progress together
may not exceed `max_total_bytes`: an upload reserves its whole size when it begins, under the store's lock, so
concurrent uploads cannot all pass; least recently used blobs no queued or running job holds, and part files
no upload is writing, are evicted for room. The disk must keep the upload's remaining bytes, those still owed
to the other uploads in progress and DISK_HEADROOM_BYTES free. Part files untouched for `stale_partial_age_s`
are dropped at start-up and whenever an upload begins or is published.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from agent.blobfiles import (
    READ_ONLY,
    SHA256_RE,
    ArtifactChanged,
    ArtifactError,
    ArtifactMissing,
    ArtifactTooLarge,
    ChunkTooLarge,
    DigestMismatch,
    InvalidDigest,
    StoreFull,
    UploadConflict,
    UploadInProgress,
    check_digest,
    hash_file,
    link_or_copy,
)
from agent.blobfiles import signature as _signature
from agent.uploads import MAX_CHUNK_BYTES, QUEUED_CHUNKS, SYNC_EVERY_BYTES, Reservation, Upload

#: Re-exported: callers import the store's vocabulary from here.
__all__ = [
    "DISK_HEADROOM_BYTES",
    "MAX_CHUNK_BYTES",
    "QUEUED_CHUNKS",
    "SHA256_RE",
    "SYNC_EVERY_BYTES",
    "ArtifactChanged",
    "ArtifactError",
    "ArtifactMissing",
    "ArtifactStore",
    "ArtifactTooLarge",
    "ChunkTooLarge",
    "DigestMismatch",
    "InvalidDigest",
    "StoreFull",
    "Upload",
    "UploadConflict",
    "UploadInProgress",
    "check_digest",
    "hash_file",
    "link_or_copy",
]

#: Disk space left free beyond what an upload needs, so the agent never fills the disk it logs to.
DISK_HEADROOM_BYTES = 64 * 1024 * 1024
#: A part file nobody wrote to for this long is dropped (its upload would restart from 0).
DEFAULT_STALE_PARTIAL_AGE_S = 6 * 3600.0



class ArtifactStore:
    def __init__(
        self,
        root: Path,
        *,
        max_artifact_bytes: int,
        max_total_bytes: int,
        stale_partial_age_s: float = DEFAULT_STALE_PARTIAL_AGE_S,
        disk_free: Callable[[Path], int] | None = None,
    ) -> None:
        """`disk_free(root)` says how many bytes are free on the store's disk (default: shutil.disk_usage)."""
        self.root = root
        self.max_artifact_bytes = max_artifact_bytes
        self.max_total_bytes = max_total_bytes
        self.stale_partial_age_s = stale_partial_age_s
        self._disk_free = disk_free or (lambda path: shutil.disk_usage(path).free)
        self._blobs = root / "blobs"
        self._partial = root / "partial"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._partial.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()  # re-entered by remove_stale_partials from begin_upload and _publish
        self._reserved: dict[str, Reservation] = {}
        self._pins: Counter[str] = Counter()
        #: Signature of each blob when it last hashed to its name (none yet: each is hashed at first use).
        self._verified: dict[str, tuple[int, int, int, int, int]] = {}
        #: Last use of each blob (ns) for LRU; kept in memory because touching the file would change its ctime.
        self._used: dict[str, int] = {}
        for blob in self._blobs.iterdir():  # stores written before blobs were made read-only
            with contextlib.suppress(OSError):
                blob.chmod(READ_ONLY)

    # -------------------------------------------------------------- queries

    def blob_path(self, sha256: str) -> Path:
        return self._blobs / check_digest(sha256)

    def part_path(self, sha256: str) -> Path:
        return self._partial / f"{check_digest(sha256)}.part"

    def has(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def missing(self, digests: Iterable[str]) -> list[str]:
        """The digests (validated, de-duplicated, in request order) that are not stored."""
        seen: dict[str, None] = {}
        for d in digests:
            seen.setdefault(check_digest(d), None)
        return [d for d in seen if not self.has(d)]

    def committed_offset(self, sha256: str) -> int:
        part = self.part_path(sha256)
        try:
            return part.stat().st_size
        except FileNotFoundError:
            return 0

    def path_for_use(self, sha256: str) -> Path:
        """The blob's path, marked as just used (LRU). Raises ArtifactMissing if not stored."""
        path = self.blob_path(sha256)
        if not path.is_file():
            raise ArtifactMissing(
                f"artifact {sha256} is not on this agent; upload it first (FindMissingArtifacts, UploadArtifact)"
            )
        with self._lock:
            self._used[sha256] = time.time_ns()
        return path

    def used_bytes(self) -> int:
        """What counts against `max_total_bytes`: blobs, part files no upload is writing, reservations."""
        with self._lock:
            blobs = sum(size for _, size, _ in self._entries(self._blobs.iterdir()))
            return blobs + sum(size for _, size, _ in self._idle_parts()) + self._reserved_bytes()

    def verify(self, path: Path) -> None:
        """Check that blob `path` (from path_for_use) still holds the bytes its name is the digest of.

        Re-hashes only when its signature differs from the one recorded when it last matched. A blob that no
        longer matches, or changes while it is hashed, is removed (a new upload stores it again) and
        ArtifactChanged is raised; a blob that is gone raises ArtifactMissing.
        """
        sha256 = check_digest(path.name)
        if path != self.blob_path(sha256):
            raise ValueError(f"{path} is not a blob of the store in {self.root}")
        try:
            before = _signature(path.stat())
            with self._lock:
                if self._verified.get(sha256) == before:
                    return
            actual = hash_file(path)
            after = _signature(path.stat())
        except FileNotFoundError:
            raise ArtifactMissing(
                f"artifact {sha256} is no longer on this agent (evicted, or removed because it changed on disk); "
                "upload it again"
            ) from None
        with self._lock:
            if actual == sha256 and after == before:
                self._verified[sha256] = before
                return
            self._forget(sha256)
            if after[:2] == before[:2]:  # the same file, not a new upload of the digest
                path.unlink(missing_ok=True)
        now = "changed while it was hashed" if actual == sha256 else f"now hashes to {actual}"
        raise ArtifactChanged(
            f"artifact {sha256} changed on disk since it was verified (it {now}); it was removed: upload it again"
        )

    def is_verified(self, path: Path) -> bool:
        """Whether `verify(path)` would return without hashing (its signature is the one last verified)."""
        try:
            current = _signature(path.stat())
        except OSError:
            return False
        with self._lock:
            return self._verified.get(path.name) == current

    @contextlib.contextmanager
    def links_removed(self, paths: Iterable[Path]) -> Iterator[None]:
        """Around removing a finished job's folder: unlinking its hard links changes the blobs' ctime, which
        would make the next job hash them again. A blob whose signature is still the one recorded when it
        last verified (nothing wrote to it during the job) is recorded anew after the removal. Only for use
        once every process of the job is gone: nothing else can touch the blobs in between."""
        unchanged = [(path.name, path) for path in dict.fromkeys(paths) if self.is_verified(path)]
        yield
        for sha256, path in unchanged:
            with contextlib.suppress(OSError), self._lock:
                self._verified[sha256] = _signature(path.stat())

    # -------------------------------------------------------------- uploads

    def begin_upload(self, sha256: str, size: int, offset: int) -> Upload | None:
        """Start (offset 0) or resume an upload, reserving room for it. None when the artifact is stored."""
        check_digest(sha256)
        if self.has(sha256):
            return None
        if size > self.max_artifact_bytes:
            raise ArtifactTooLarge(
                f"artifact of {size} bytes exceeds this agent's per-artifact cap of {self.max_artifact_bytes} "
                "bytes; raise --max-artifact-bytes on the agent or send a smaller model"
            )
        if size > self.max_total_bytes:
            raise StoreFull(
                f"artifact of {size} bytes exceeds the whole cache cap of {self.max_total_bytes} bytes; "
                "raise --max-cache-bytes on the agent"
            )
        with self._lock:
            # Checked first: while another call uploads, its part file (and so the offset) keeps moving.
            if sha256 in self._reserved:
                raise UploadInProgress(
                    f"artifact {sha256[:12]} is already being uploaded by another call; retry once it is done"
                )
            if self.has(sha256):
                return None  # another call published it since the check above (publishing holds this lock)
            self.remove_stale_partials(keep=sha256)
            committed = self.committed_offset(sha256)
            if offset not in (0, committed) or offset > size:
                raise UploadConflict(
                    f"upload of {sha256[:12]} asked to resume at offset {offset} but {committed} bytes are "
                    f"committed; resume from {committed} or restart from 0"
                )
            self._check_disk(size - offset)
            self._make_room(size, resuming=sha256)
            reservation = Reservation(size, offset)
            self._reserved[sha256] = reservation
        try:
            upload = Upload(self, sha256, size, offset)
        except BaseException:
            self._release_upload(sha256)
            raise
        reservation.upload = upload
        return upload

    def _release_upload(self, sha256: str) -> None:
        with self._lock:
            self._reserved.pop(sha256, None)

    def _publish(self, sha256: str, part: Path) -> Path:
        with self._lock:
            part.chmod(READ_ONLY)
            target = self._blobs / sha256
            # Never replaces a blob: begin_upload refuses stored digests and runs one upload per digest.
            os.replace(part, target)
            # Its room moves from the reservation to the blob in one step. It was hashed as received, not as
            # stored, so verify() hashes the stored bytes at first use.
            self._reserved.pop(sha256, None)
            self._verified.pop(sha256, None)
            self._used[sha256] = time.time_ns()
            self.remove_stale_partials()
        return target

    def _reserved_bytes(self) -> int:
        return sum(r.size for r in self._reserved.values())

    def _check_disk(self, need: int) -> None:
        """Refuse an upload the disk cannot hold next to what the uploads in progress still owe. Holds lock."""
        free = self._disk_free(self.root)
        owed = sum(r.owed() for r in self._reserved.values())
        if need + owed + DISK_HEADROOM_BYTES > free:
            raise StoreFull(
                f"not enough disk space for {need} more bytes: {free} bytes are free in the agent's work "
                f"directory, {owed} of them promised to uploads in progress, and {DISK_HEADROOM_BYTES} are kept "
                "free; retry when those uploads are done, free some space or point --workdir at a larger disk"
            )

    # -------------------------------------------------------------- eviction

    def pin(self, digests: Iterable[str]) -> None:
        """Keep these blobs from eviction while a queued or running job needs them (counted; see unpin)."""
        with self._lock:
            self._pins.update(digests)

    def unpin(self, digests: Iterable[str]) -> None:
        with self._lock:
            self._pins.subtract(digests)
            self._pins += Counter()

    @staticmethod
    def _entries(paths: Iterable[Path]) -> list[tuple[int, int, Path]]:
        """(mtime_ns, size, path) of the regular files among `paths`; files that vanish are skipped."""
        out = []
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                st = path.lstat()
                if stat.S_ISREG(st.st_mode):
                    out.append((st.st_mtime_ns, st.st_size, path))
        return out

    def _idle_parts(self, resuming: str = "") -> list[tuple[int, int, Path]]:
        """Part files no upload is writing (nor `resuming`, which is about to be), by last write. Holds lock."""
        busy = {f"{sha}.part" for sha in (*self._reserved, resuming) if sha}
        return [e for e in self._entries(self._partial.glob("*.part")) if e[2].name not in busy]

    def _make_room(self, need: int, resuming: str) -> None:
        """Evict least recently used unpinned blobs and idle part files until `need` more bytes fit under the
        cap; evict nothing and raise StoreFull if even that would not be enough. Holds lock."""
        candidates: list[tuple[int, int, Path]] = []
        held = reserved = self._reserved_bytes()
        for mtime, size, path in self._entries(self._blobs.iterdir()):
            if self._pins[path.name]:
                held += size
            else:
                candidates.append((self._used.get(path.name, mtime), size, path))
        candidates += self._idle_parts(resuming)
        total = held + sum(size for _, size, _ in candidates)
        if total + need <= self.max_total_bytes:
            return
        if held + need > self.max_total_bytes:
            raise StoreFull(
                f"cache cap of {self.max_total_bytes} bytes cannot fit {need} more: {held - reserved} bytes are "
                f"artifacts that queued or running jobs need and {reserved} are reserved by uploads in progress; "
                "retry when they finish or raise --max-cache-bytes"
            )
        for _, size, path in sorted(candidates, key=lambda e: e[0]):
            if total + need <= self.max_total_bytes:
                break
            path.unlink(missing_ok=True)
            self._forget(path.name)  # a part file's name is no digest: nothing to forget
            total -= size

    def _forget(self, sha256: str) -> None:
        self._verified.pop(sha256, None)
        self._used.pop(sha256, None)

    def remove_stale_partials(self, older_than_s: float | None = None, keep: str = "") -> int:
        """Drop part files that no upload is writing (nor `keep`'s, resuming now) and nobody wrote to for
        `older_than_s` (default: the store's `stale_partial_age_s`). Returns how many were removed."""
        age = self.stale_partial_age_s if older_than_s is None else older_than_s
        with self._lock:
            cutoff = time.time_ns() - int(age * 1e9)
            stale = [path for mtime, _, path in self._idle_parts(keep) if mtime <= cutoff]
            for path in stale:
                path.unlink(missing_ok=True)
        return len(stale)
