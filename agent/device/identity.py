"""The device's stable id, persisted as one line in `workdir/device_id`.

Contract: `load_or_create_device_id` returns the same id for the same workdir across restarts and across
agents racing to create it; it replaces a corrupt file with a fresh id and raises OSError only when the
workdir cannot be created or written.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from pathlib import Path

__all__ = ["DEVICE_ID_FILENAME", "load_or_create_device_id"]

DEVICE_ID_FILENAME = "device_id"

_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def load_or_create_device_id(workdir: Path) -> str:
    """Return this device's stable id, stored in `workdir/device_id`; create it on first use.

    An existing file is used when its content (whitespace stripped) is a plausible id: 1–128 characters of
    letters, digits, '.', '_' and '-', starting with a letter or digit. That admits the uuid4 hex this
    function writes and also an id an operator chose by hand. Anything else (empty, binary garbage, several
    lines) is treated as corrupt and replaced by a fresh uuid4 hex.

    The file is never observed half-written: the id goes to a temporary file in `workdir` first, and is
    then linked (first creation: fails if another process won the race, whose id is then returned) or
    os.replace-d (replacing a corrupt file) into place. Creates `workdir` if needed. Raises OSError when
    `workdir` cannot be created or written, since an agent without a stable id must not start.
    """
    path = workdir / DEVICE_ID_FILENAME
    existing = _read_device_id(path)
    if existing is not None:
        return existing
    workdir.mkdir(parents=True, exist_ok=True)
    new_id = uuid.uuid4().hex
    fd, tmp_name = tempfile.mkstemp(prefix=".device_id.", dir=workdir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(new_id + "\n")
            f.flush()
            os.fsync(f.fileno())
        if path.exists() or path.is_symlink():
            # Corrupt file: nobody can be relying on its content, so replacing it is safe.
            os.replace(tmp, path)
        else:
            try:
                # link() refuses to overwrite, so two agents starting together on one workdir agree on
                # the id of whichever linked first.
                os.link(tmp, path)
            except FileExistsError:
                winner = _read_device_id(path)
                if winner is not None:
                    return winner
                os.replace(tmp, path)
            except OSError:
                # Filesystems without hard links (FAT on some SD cards): fall back to a plain replace.
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return new_id


def _read_device_id(path: Path) -> str | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return text if _DEVICE_ID_RE.fullmatch(text) else None
