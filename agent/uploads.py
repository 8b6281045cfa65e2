"""One upload into the artifact store: written to a part file, hashed on its own thread as it arrives,
verified and published by the store (agent/artifacts.py), which also reserves its room."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.blobfiles import BLOCK, ChunkTooLarge, DigestMismatch, UploadConflict

if TYPE_CHECKING:
    from agent.artifacts import ArtifactStore

#: Bytes between background syncs of an upload in progress.
SYNC_EVERY_BYTES = 32 * 1024 * 1024
#: Largest upload chunk accepted (the protocol sends 256 KiB-1 MiB chunks). With at most QUEUED_CHUNKS waiting
#: to be hashed, one upload holds at most a few MiB of the agent's memory.
MAX_CHUNK_BYTES = 1 << 20
QUEUED_CHUNKS = 8


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
            # Resuming: the bytes already committed are hashed again from disk (the hasher state is not
            # persisted), so a part file changed while nobody uploaded fails the digest check at commit.
            with self._path.open("rb") as f:
                while block := f.read(BLOCK):
                    self._hasher.update(block)
            self._file = self._path.open("ab")
        else:
            self._file = self._path.open("wb")
        self.offset = offset
        # Hashing runs on its own thread, overlapping the file writes (hashlib releases the GIL on large
        # buffers); the bounded queue keeps at most QUEUED_CHUNKS chunks in memory.
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUED_CHUNKS)
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
        """Append one chunk. Raises ChunkTooLarge above MAX_CHUNK_BYTES, UploadConflict past the declared size."""
        if len(chunk) > MAX_CHUNK_BYTES:
            raise ChunkTooLarge(
                f"upload chunk of {len(chunk)} bytes is over the limit of {MAX_CHUNK_BYTES} bytes (1 MiB) per "
                "chunk; send the artifact in chunks of 256 KiB to 1 MiB"
            )
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
        """Verify size and digest, then atomically publish the blob (its room was reserved at the start)."""
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
            return self._store._publish(self.sha256, self._path)
        finally:
            self.close()


@dataclass
class Reservation:
    """Room an upload in progress holds: `size` bytes of the cache cap, its unwritten bytes on the disk."""

    size: int
    offset: int
    upload: Upload | None = None

    def owed(self) -> int:
        received = self.upload.received if self.upload is not None else 0
        return max(0, self.size - self.offset - received)


