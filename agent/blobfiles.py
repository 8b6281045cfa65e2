"""What the artifact store is made of, apart from the store itself: its errors, digests, hashing, and
placing a stored file into a job's folder without ever writing through an existing path."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from pathlib import Path

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: link() failures after which a copy is made instead: another filesystem, links not allowed or not
#: supported there, too many links to one file. Anything else (an existing destination above all) is raised.
_COPY_ERRNOS = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})
BLOCK = 4 * 1024 * 1024
READ_ONLY = 0o444


class ArtifactError(Exception):
    """Base of the store's errors; each message says what was wrong and what to do."""


class InvalidDigest(ArtifactError):
    pass


class ArtifactMissing(ArtifactError):
    pass


class ArtifactChanged(ArtifactMissing):
    """A stored blob no longer hashed to its name; it was removed, so it is missing now."""


class ArtifactTooLarge(ArtifactError):
    pass


class ChunkTooLarge(ArtifactError):
    """An upload chunk above MAX_CHUNK_BYTES: the request breaks the protocol."""


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


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` a hard link to `src`, or a copy of it where the filesystem cannot link (see _COPY_ERRNOS).

    Never replaces or follows anything already at `dst`: FileExistsError instead. The copy is written into
    `dst` itself, created with O_EXCL|O_NOFOLLOW (a temporary file renamed into place would replace an
    existing destination), and removed again if copying fails.
    """
    try:
        os.link(src, dst)
        return
    except OSError as exc:
        if exc.errno not in _COPY_ERRNOS:
            raise
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(dst, flags, READ_ONLY)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out, BLOCK)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


def signature(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What changes when a file's bytes change, even if its mtime is set back: ctime cannot be."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

