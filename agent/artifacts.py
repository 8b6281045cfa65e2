"""Content-addressed artifact store in the agent's work directory.

Layout: `blobs/<sha256>` (verified, complete) and `partial/<sha256>.part` (an upload in progress; its size
is the committed offset a client resumes from). A blob is only ever created by renaming a part file whose
sha256 was verified, so a reader never sees a half-written or wrong blob. Caps: one artifact may not
exceed `max_artifact_bytes`; the blobs together may not exceed `max_total_bytes`, and least recently used
blobs that no queued or running job holds are evicted to make room.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: Disk space left free beyond what an upload needs, so the agent never fills the disk it logs to.
DISK_HEADROOM_BYTES = 64 * 1024 * 1024
#: Bytes between background syncs of an upload in progress.
SYNC_EVERY_BYTES = 32 * 1024 * 1024


class ArtifactError(Exception):
    """Base of the store's errors; each message says what was wrong and what to do."""


class InvalidDigest(ArtifactError):
    pass


class ArtifactMissing(ArtifactError):
    pass


class ArtifactTooLarge(ArtifactError):
    pass


class StoreFull(ArtifactError):
    """Cache cap or disk full, even after evicting everything evictable."""


class UploadConflict(ArtifactError):
    """Offset does not match the committed one, or the same artifact is being uploaded concurrently."""


class UploadInProgress(UploadConflict):
    """Another call is uploading the same artifact right now: wait for it, then the artifact is present."""


class DigestMismatch(ArtifactError):
    pass


def check_digest(sha256: str) -> str:
    if not SHA256_RE.fullmatch(sha256):
        raise InvalidDigest(f"{sha256[:80]!r} is not a sha256 digest (64 lowercase hex characters)")
    return sha256


class Upload:
    """One upload of one artifact, from a committed offset to its declared size. Not thread-safe."""

    def __init__(self, store: ArtifactStore, sha256: str, size: int, offset: int) -> None:
        self._store = store
        self.sha256 = sha256
        self.size = size
        self.received = 0
        self._path = store.part_path(sha256)
        self._hasher = hashlib.sha256()
        if offset:
            # Resuming: the bytes already committed must be hashed again (the hasher state is not persisted).
            with self._path.open("rb") as f:
                while block := f.read(4 * 1024 * 1024):
                    self._hasher.update(block)
            self._file = self._path.open("ab")
        else:
            self._file = self._path.open("wb")
        self.offset = offset
        # Hashing runs on its own thread, overlapping the file writes (hashlib releases the GIL on large
        # buffers); the bounded queue keeps at most a few chunks in memory.
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._hash_thread = threading.Thread(target=self._hash_loop, name="edgebench-hash", daemon=True)
        self._hash_thread.start()

    def _hash_loop(self) -> None:
        unsynced = 0
        while (chunk := self._chunks.get()) is not None:
            self._hasher.update(chunk)
            unsynced += len(chunk)
            if unsynced >= SYNC_EVERY_BYTES:
                # Start write-back while more data arrives, so the fsync at commit has little left to do.
                # A failing sync (e.g. a filesystem without it) must not stop the hashing this thread owes.
                with contextlib.suppress(OSError):
                    os.fdatasync(self._file.fileno())
                unsynced = 0

    def _finish_hashing(self) -> None:
        """Wait for the hashing thread; must run while the file is still open (it syncs the descriptor)."""
        if self._hash_thread.is_alive():
            self._chunks.put(None)
            self._hash_thread.join()

    def write(self, chunk: bytes) -> None:
        if self.offset + self.received + len(chunk) > self.size:
            raise UploadConflict(f"upload of {self.sha256[:12]} sent more than its declared size of {self.size} bytes")
        self._file.write(chunk)
        self._chunks.put(chunk)
        self.received += len(chunk)

    def close(self) -> None:
        """End without committing: what was written stays as a resumable part file."""
        if not self._file.closed:
            self._file.flush()
            self._finish_hashing()
            self._file.close()
        self._store._release_upload(self.sha256)

    def commit(self) -> Path:
        """Verify size and digest, make room under the cap, then atomically publish the blob."""
        try:
            self._file.flush()
            self._finish_hashing()  # before close: the hashing thread syncs this file descriptor
            os.fsync(self._file.fileno())
            self._file.close()
            total = self.offset + self.received
            if total != self.size:
                raise UploadConflict(
                    f"upload of {self.sha256[:12]} ended at {total} of {self.size} bytes; "
                    f"resume from offset {total} (GetUploadStatus) to finish it"
                )
            actual = self._hasher.hexdigest()
            if actual != self.sha256:
                self._path.unlink(missing_ok=True)
                raise DigestMismatch(
                    f"the {self.size} bytes received hash to {actual}, not the declared {self.sha256}; "
                    "nothing was stored: check the file and upload it again"
                )
            return self._store._publish(self.sha256, self._path, self.size)
        finally:
            self.close()


class ArtifactStore:
    def __init__(self, root: Path, *, max_artifact_bytes: int, max_total_bytes: int) -> None:
        self.root = root
        self.max_artifact_bytes = max_artifact_bytes
        self.max_total_bytes = max_total_bytes
        self._blobs = root / "blobs"
        self._partial = root / "partial"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._partial.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._uploading: set[str] = set()
        self._pins: Counter[str] = Counter()

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
        return part.stat().st_size if part.exists() else 0

    def path_for_use(self, sha256: str) -> Path:
        """The blob's path, marked as just used (LRU). Raises ArtifactMissing if not stored."""
        path = self.blob_path(sha256)
        try:
            os.utime(path)
        except FileNotFoundError:
            raise ArtifactMissing(
                f"artifact {sha256} is not on this agent; upload it first (FindMissingArtifacts, UploadArtifact)"
            ) from None
        return path

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._blobs.iterdir() if p.is_file())

    # -------------------------------------------------------------- uploads

    def begin_upload(self, sha256: str, size: int, offset: int) -> Upload | None:
        """Start (offset 0) or resume an upload. Returns None when the artifact is already stored."""
        check_digest(sha256)
        if self.has(sha256):
            return None
        if size > self.max_artifact_bytes:
            raise ArtifactTooLarge(
                f"artifact of {size} bytes exceeds this agent's per-artifact cap of {self.max_artifact_bytes} "
                "bytes; raise --max-artifact-bytes on the agent or send a smaller model"
            )
        if size > self.max_total_bytes:
            raise StoreFull(f"artifact of {size} bytes exceeds the whole cache cap of {self.max_total_bytes} bytes")
        with self._lock:
            # Checked first: while another call uploads, its part file (and so the offset) keeps moving.
            if sha256 in self._uploading:
                raise UploadInProgress(
                    f"artifact {sha256[:12]} is already being uploaded by another call; retry once it is done"
                )
            self._uploading.add(sha256)
        try:
            committed = self.committed_offset(sha256)
            if offset not in (0, committed):
                raise UploadConflict(
                    f"upload of {sha256[:12]} asked to resume at offset {offset} but {committed} bytes are "
                    f"committed; resume from {committed} or restart from 0"
                )
            free = shutil.disk_usage(self.root).free
            if size - offset + DISK_HEADROOM_BYTES > free:
                raise StoreFull(
                    f"not enough disk space for {size - offset} more bytes ({free} free in the agent's work "
                    "directory); free some space or point --workdir at a larger disk"
                )
            return Upload(self, sha256, size, offset)
        except BaseException:
            self._release_upload(sha256)
            raise

    def _release_upload(self, sha256: str) -> None:
        with self._lock:
            self._uploading.discard(sha256)

    def _publish(self, sha256: str, part: Path, size: int) -> Path:
        with self._lock:
            self._evict_for(size)
            target = self._blobs / sha256
            os.replace(part, target)
        return target

    # -------------------------------------------------------------- eviction

    def pin(self, digests: Iterable[str]) -> None:
        """Keep these blobs from eviction while a queued or running job needs them (counted; see unpin)."""
        with self._lock:
            self._pins.update(digests)

    def unpin(self, digests: Iterable[str]) -> None:
        with self._lock:
            self._pins.subtract(digests)
            self._pins += Counter()

    def _evict_for(self, incoming: int) -> None:
        """Evict least recently used, unpinned blobs until `incoming` more bytes fit. Caller holds the lock."""
        blobs = [(p.stat().st_mtime_ns, p.stat().st_size, p) for p in self._blobs.iterdir() if p.is_file()]
        total = sum(size for _, size, _ in blobs)
        for _, size, path in sorted(blobs):
            if total + incoming <= self.max_total_bytes:
                break
            if self._pins[path.name]:
                continue
            path.unlink(missing_ok=True)
            total -= size
        if total + incoming > self.max_total_bytes:
            raise StoreFull(
                f"cache cap of {self.max_total_bytes} bytes is full of artifacts that queued or running jobs "
                "need; retry when they finish or raise --max-cache-bytes"
            )

    def remove_stale_partials(self, older_than_s: float = 24 * 3600) -> int:
        """Drop part files nobody resumed for a day (run at start-up)."""
        now = time.time()
        removed = 0
        for part in self._partial.glob("*.part"):
            if now - part.stat().st_mtime > older_than_s:
                part.unlink(missing_ok=True)
                removed += 1
        return removed
