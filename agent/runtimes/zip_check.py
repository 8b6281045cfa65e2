"""Strict structural reading of a zip archive, so that every zip reader sees the same members.

Zip readers disagree on malformed or ambiguous archives. Python's `zipfile` finds the central directory
just before the end record and shifts every offset by any data prepended to the archive; miniz (torch's
PyTorchStreamReader) reads the directory at the offset the end record states. A polyglot (one archive
prepended to another, end records pointing at the first directory) therefore shows `zipfile` one set of
members and torch another, and a check made through one reader says nothing about what the other runs.

`read_members` accepts only archives whose layout leaves no room for such a disagreement:

* the end record ends the file (no archive comment, nothing appended); a zip64 end record and locator,
  when present, sit right before it, agree with it, and are where the locator says;
* the central directory ends exactly where the end records begin and sits exactly at its recorded
  offset (nothing prepended), and holds exactly the recorded number of entries in the recorded size;
* every local header agrees with its directory entry (signature, name bytes, flags, method, sizes and
  CRC unless a data descriptor carries them; the descriptor then agrees with the directory);
* the members tile the file from byte 0 to the directory: no bytes before the first local header, none
  between members (padding belongs inside local extra fields, where torch.export.save puts it), no
  overlapping members; names are unique, compared case-insensitively (miniz looks names up that way);
* no encryption, only the compression methods the caller allows, single-disk archives, no Info-ZIP
  Unicode path fields (newer Python versions take the name from them; other readers ignore them).

What torch.export.save writes passes: data descriptors after each member, alignment padding in a local
"FB" extra field, zip64 end records. So do archives that Python's `zipfile` writes.

`copy_member` streams one stored member's bytes from the offsets checked here and verifies its CRC.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from agent.runtimes.base import ModelLoadError

STORED, DEFLATED = 0, 8
_METHOD_NAMES = {STORED: "stored", DEFLATED: "deflated"}
CHUNK = 1 << 20

_EOCD = struct.Struct("<4sHHHHIIH")  # signature, disk, cd disk, entries on disk, entries, cd size, cd offset, comment
_ZIP64_LOCATOR = struct.Struct("<4sIQI")  # signature, disk of zip64 record, its offset, total disks
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")  # sig, record size, made by, needed, disk, cd disk, n disk, n, size, off
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_SIG_EOCD, _SIG_LOCATOR, _SIG_ZIP64 = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
_SIG_CENTRAL, _SIG_LOCAL, _SIG_DESCRIPTOR = b"PK\x01\x02", b"PK\x03\x04", b"PK\x07\x08"
_U16, _U32 = 0xFFFF, 0xFFFFFFFF
_ENCRYPTED_FLAGS = 0x1 | 0x40 | 0x2000  # traditional, strong, masked central directory
_DESCRIPTOR_FLAG = 0x8
_UTF8_FLAG = 0x800
_ZIP64_EXTRA = 0x0001
#: Info-ZIP Unicode path and comment fields: Python >= 3.12 replaces the member's name with the former.
_REFUSED_EXTRAS = frozenset({0x7075, 0x6375})


class ZipLayoutError(ModelLoadError):
    """The archive's layout is ambiguous or inconsistent; the message says what (callers add context)."""


@dataclass(frozen=True)
class Member:
    """One member as its directory entry and local header, checked against each other, describe it."""

    name: str
    header_offset: int
    data_offset: int
    compressed_size: int
    file_size: int
    crc: int
    method: int
    flags: int
    external_attr: int
    #: Where this member's record (header, data, data descriptor) ends: the next member's header offset.
    end: int


def _extras(blob: bytes, where: str) -> dict[int, bytes]:
    """Extra fields by id; refuses malformed ones (a truncated field hides bytes from one reader only)."""
    fields: dict[int, bytes] = {}
    pos = 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise ZipLayoutError(f"{where} has a truncated extra field")
        tag, size = struct.unpack_from("<HH", blob, pos)
        if pos + 4 + size > len(blob):
            raise ZipLayoutError(f"{where} has an extra field running past its end")
        if tag in fields:
            raise ZipLayoutError(f"{where} repeats the extra field 0x{tag:04x}")
        if tag in _REFUSED_EXTRAS:
            raise ZipLayoutError(f"{where} carries an Info-ZIP Unicode name field (readers disagree on its name)")
        fields[tag] = blob[pos + 4 : pos + 4 + size]
        pos += 4 + size
    return fields


def _zip64_values(extra: bytes, wanted: list[bool], where: str) -> list[int]:
    """The zip64 extra's 8-byte values for the fields whose 32-bit value is the 0xFFFFFFFF sentinel."""
    count = sum(wanted)
    if len(extra) < 8 * count:
        raise ZipLayoutError(f"{where}'s zip64 extra field is shorter than its sentinel sizes need")
    return [struct.unpack_from("<Q", extra, 8 * i)[0] for i in range(count)]


def _end_records(f: BinaryIO, size: int) -> tuple[int, int, int, int]:
    """(entries, directory size, directory offset, where the end records begin)."""
    if size < _EOCD.size:
        raise ZipLayoutError(f"the file is {size} bytes, too short for a zip archive")
    f.seek(size - _EOCD.size)
    sig, disk, cd_disk, n_disk, n, cd_size, cd_offset, comment = _EOCD.unpack(f.read(_EOCD.size))
    if sig != _SIG_EOCD or comment:
        raise ZipLayoutError(
            "the zip end record is not the last 22 bytes of the file (an archive comment, or data appended)"
        )
    if disk or cd_disk or n_disk != n:
        raise ZipLayoutError("the archive claims to span several disks")
    end_start = size - _EOCD.size
    locator_at = end_start - _ZIP64_LOCATOR.size
    locator = b""
    if locator_at >= 0:
        f.seek(locator_at)
        locator = f.read(_ZIP64_LOCATOR.size)
    if not locator.startswith(_SIG_LOCATOR):
        if _U16 in (n_disk, n) or _U32 in (cd_size, cd_offset):
            raise ZipLayoutError("the end record holds zip64 sentinels but no zip64 end record follows them")
        return n, cd_size, cd_offset, end_start
    _, z_disk, z_offset, disks = _ZIP64_LOCATOR.unpack(locator)
    record_at = locator_at - _ZIP64_EOCD.size
    if z_disk or disks != 1 or z_offset != record_at or record_at < 0:
        raise ZipLayoutError(
            f"the zip64 locator points at offset {z_offset}, not at the zip64 end record right before it "
            f"(offset {record_at}): data was prepended to the archive or its records were moved"
        )
    f.seek(record_at)
    fields = _ZIP64_EOCD.unpack(f.read(_ZIP64_EOCD.size))
    z_sig, record_size, _, _, z_disk, z_cd_disk, z_n_disk, z_n, z_cd_size, z_cd_offset = fields
    if z_sig != _SIG_ZIP64 or record_size != _ZIP64_EOCD.size - 12:
        raise ZipLayoutError("the zip64 end record is malformed (or carries extensible data)")
    if z_disk or z_cd_disk or z_n_disk != z_n:
        raise ZipLayoutError("the archive claims to span several disks")
    for short, long, sentinel in ((n, z_n, _U16), (cd_size, z_cd_size, _U32), (cd_offset, z_cd_offset, _U32)):
        if short not in (long, sentinel):
            raise ZipLayoutError("the zip end record and the zip64 end record disagree")
    return z_n, z_cd_size, z_cd_offset, record_at


def _central_entries(f: BinaryIO, n: int, cd_size: int, cd_offset: int) -> Iterator[tuple[bytes, tuple[int, ...]]]:
    """(raw name, (flags, method, crc, compressed, size, offset, external attributes)) per directory entry."""
    f.seek(cd_offset)
    directory = f.read(cd_size)
    if len(directory) != cd_size:
        raise ZipLayoutError("the central directory runs past the end of the file")
    pos = 0
    for index in range(n):
        where = f"central directory entry {index}"
        if pos + _CENTRAL.size > cd_size:
            raise ZipLayoutError(f"the central directory holds fewer than the {n} entries its end record states")
        fields = _CENTRAL.unpack_from(directory, pos)
        sig, _, _, flags, method, _, _, crc, csize, usize, nlen, elen, clen, disk, _, attr, offset = fields
        if sig != _SIG_CENTRAL:
            raise ZipLayoutError(f"{where} has no valid signature")
        start = pos + _CENTRAL.size
        pos = start + nlen + elen + clen
        if pos > cd_size:
            raise ZipLayoutError(f"{where} runs past the central directory")
        raw = directory[start : start + nlen]
        extras = _extras(directory[start + nlen : start + nlen + elen], where)
        wanted = [usize == _U32, csize == _U32, offset == _U32, disk == _U16]
        if any(wanted):
            values = iter(_zip64_values(extras.get(_ZIP64_EXTRA, b""), wanted, where))
            usize = next(values) if wanted[0] else usize
            csize = next(values) if wanted[1] else csize
            offset = next(values) if wanted[2] else offset
            disk = next(values) if wanted[3] else disk
        if disk:
            raise ZipLayoutError(f"{where} starts on another disk")
        yield raw, (flags, method, crc, csize, usize, offset, attr)
    if pos != cd_size:
        raise ZipLayoutError(
            f"the central directory is {cd_size} bytes but its {n} entries fill {pos}: hidden directory data"
        )


def _decode(raw: bytes, flags: int) -> str:
    # The same rule as Python's zipfile: UTF-8 when flagged, else code page 437.
    return raw.decode("utf-8" if flags & _UTF8_FLAG else "cp437")


def _check_local(f: BinaryIO, raw: bytes, values: tuple[int, ...], where: str) -> int:
    """Check the local header against the directory entry; return where the member's data starts."""
    flags, method, crc, csize, usize, offset, _ = values
    f.seek(offset)
    header = f.read(_LOCAL.size)
    if len(header) != _LOCAL.size:
        raise ZipLayoutError(f"{where}'s local header lies past the end of the file")
    sig, _, l_flags, l_method, _, _, l_crc, l_csize, l_usize, nlen, elen = _LOCAL.unpack(header)
    if sig != _SIG_LOCAL:
        raise ZipLayoutError(f"{where} has no local header at its recorded offset {offset}")
    name_and_extra = f.read(nlen + elen)
    if l_flags != flags or l_method != method or name_and_extra[:nlen] != raw:
        raise ZipLayoutError(f"{where}'s local header disagrees with the central directory (name, flags or method)")
    extras = _extras(name_and_extra[nlen:], f"{where}'s local header")
    if _U32 in (l_usize, l_csize):
        big = _zip64_values(extras.get(_ZIP64_EXTRA, b""), [True, True], f"{where}'s local header")
        l_usize, l_csize = big[0], big[1]
    deferred = bool(flags & _DESCRIPTOR_FLAG)  # values may be 0 here and follow the data instead
    for local, central in ((l_crc, crc), (l_csize, csize), (l_usize, usize)):
        if local != central and not (deferred and local == 0):
            raise ZipLayoutError(f"{where}'s local header disagrees with the central directory (sizes or CRC)")
    return int(offset + _LOCAL.size + nlen + elen)


def _check_descriptor(f: BinaryIO, member: Member, where: str) -> None:
    """The bytes between a member's data and the next header: a data descriptor when flagged, else none."""
    gap = member.end - member.data_offset - member.compressed_size
    if not member.flags & _DESCRIPTOR_FLAG:
        if gap:
            raise ZipLayoutError(f"{where} is followed by {gap} bytes that belong to no member")
        return
    f.seek(member.data_offset + member.compressed_size)
    blob = f.read(gap) if 0 <= gap <= 24 else b""
    signed = blob.startswith(_SIG_DESCRIPTOR)
    body = blob[4:] if signed else blob
    if len(body) == 12:
        crc, csize, usize = struct.unpack("<III", body)
    elif len(body) == 20:
        crc, csize, usize = struct.unpack("<IQQ", body)
    else:
        raise ZipLayoutError(f"{where} is followed by {gap} bytes, not a data descriptor")
    if (crc, csize, usize) != (member.crc, member.compressed_size, member.file_size):
        raise ZipLayoutError(f"{where}'s data descriptor disagrees with the central directory")


def read_members(f: BinaryIO, *, methods: frozenset[int], max_members: int) -> list[Member]:
    """Every member of the archive open in `f` (binary, seekable), in directory order, once the layout
    has been checked as the module docstring describes. Raises ZipLayoutError naming the first problem.
    Reads the end records, the directory and each local header; member data is not read."""
    size = f.seek(0, 2)
    n, cd_size, cd_offset, end_start = _end_records(f, size)
    if cd_offset + cd_size != end_start:
        shift = end_start - cd_size - cd_offset
        raise ZipLayoutError(
            f"the central directory is recorded at offset {cd_offset} but lies at {cd_offset + shift}: "
            "data was prepended to the archive or the directory was moved (a polyglot file)"
        )
    if n > max_members:
        raise ZipLayoutError(f"the archive has {n} members, over the cap of {max_members}")
    entries = list(_central_entries(f, n, cd_size, cd_offset))
    members: list[Member] = []
    seen: dict[str, str] = {}
    for index, (raw, values) in enumerate(entries):
        flags, method, crc, csize, usize, offset, attr = values
        try:
            name = _decode(raw, flags)
        except UnicodeDecodeError:
            raise ZipLayoutError(f"central directory entry {index} has a name that is not valid UTF-8") from None
        where = f"the member {name[:200]!r}"
        if "\0" in name:
            raise ZipLayoutError(f"{where} has a NUL byte in its name")
        if flags & _ENCRYPTED_FLAGS:
            raise ZipLayoutError(f"{where} is encrypted")
        if method not in methods:
            accepted = ", ".join(_METHOD_NAMES.get(m, str(m)) for m in sorted(methods))
            raise ZipLayoutError(f"{where} is compressed (method {method}); accepted: {accepted}")
        key = name.casefold()
        if key in seen:
            raise ZipLayoutError(
                f"{where} appears twice (as {seen[key][:200]!r} too; names compare case-insensitively)"
            )
        seen[key] = name
        data_offset = _check_local(f, raw, values, where)
        members.append(Member(name, offset, data_offset, csize, usize, crc, method, flags, attr, 0))
    ordered = sorted(members, key=lambda m: m.header_offset)
    position = 0
    checked: dict[int, Member] = {}
    for i, member in enumerate(ordered):
        where = f"the member {member.name[:200]!r}"
        if member.header_offset != position:
            what = "bytes before it that belong to no member" if member.header_offset > position else "overlaps"
            raise ZipLayoutError(
                f"{where} starts at offset {member.header_offset}, where {position} was expected ({what}); "
                "the members must tile the archive"
            )
        end = ordered[i + 1].header_offset if i + 1 < len(ordered) else cd_offset
        if member.data_offset + member.compressed_size > end:
            raise ZipLayoutError(f"{where}'s data runs into the next member or the directory (overlapping members)")
        placed = dataclasses.replace(member, end=end)
        _check_descriptor(f, placed, where)
        checked[placed.header_offset] = placed
        position = end
    if position != cd_offset:
        raise ZipLayoutError(f"{cd_offset - position} bytes between the last member and the central directory")
    return [checked[m.header_offset] for m in members]


def copy_member(f: BinaryIO, member: Member, chunk: int = CHUNK) -> Iterator[bytes]:
    """Yield a stored member's bytes, read from its checked data offset; ZipLayoutError if its CRC is wrong."""
    if member.method != STORED or member.compressed_size != member.file_size:
        raise ZipLayoutError(f"the member {member.name[:200]!r} is not stored uncompressed")
    f.seek(member.data_offset)
    left, crc = member.file_size, 0
    while left:
        data = f.read(min(chunk, left))
        if not data:
            raise ZipLayoutError(f"the member {member.name[:200]!r} runs past the end of the file")
        left -= len(data)
        crc = zlib.crc32(data, crc)
        yield data
    if crc != member.crc:
        raise ZipLayoutError(f"the member {member.name[:200]!r} fails its CRC check (corrupt or altered)")
