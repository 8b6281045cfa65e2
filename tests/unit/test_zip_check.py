"""The strict zip layout check (`agent.runtimes.zip_check`) that the .pt2 guard relies on.

Each malformed archive below is one that two zip readers could read differently (or that hides bytes from
one of them); each is refused with a message naming the problem. Archives written by Python's `zipfile`
and by `torch.export.save` pass, members and data offsets as `zipfile` reports them.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zipfile
from pathlib import Path

import pytest

from agent.runtimes.base import ModelLoadError
from agent.runtimes.zip_check import DEFLATED, STORED, Member, ZipLayoutError, copy_member, read_members

ANY = frozenset({STORED, DEFLATED})


def _read(data: bytes, methods: frozenset[int] = ANY) -> list[Member]:
    return read_members(io.BytesIO(data), methods=methods, max_members=100)


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip written by Python's zipfile."""
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return raw.getvalue()


MEMBERS = {"pkg/a.json": b'{"a": 1}' * 10, "pkg/b.bin": bytes(range(256)) * 4}


def _same_as_zipfile(data: bytes, members: list[Member]) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        assert [m.name for m in members] == [i.filename for i in infos]
        assert [m.header_offset for m in members] == [i.header_offset for i in infos]
        assert [m.crc for m in members] == [i.CRC for i in infos]
        for m, info in zip(members, infos, strict=True):
            if m.method == STORED:
                assert b"".join(copy_member(io.BytesIO(data), m)) == zf.read(info)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_python_zipfile_archives_pass(compression: int) -> None:
    data = _zip(MEMBERS, compression)
    _same_as_zipfile(data, _read(data))


def test_torch_export_save_archives_pass(tmp_path: Path) -> None:
    """What torch writes: data descriptors after each member, 64-byte alignment padding in a local extra
    field, zip64 end records."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(4, 3), (torch.randn(1, 4),)), path)
    data = path.read_bytes()
    assert b"PK\x06\x06" in data[-200:] and b"PK\x07\x08" in data  # the features this test is about
    members = _read(data, frozenset({STORED}))
    assert all(m.data_offset % 64 == 0 for m in members)
    _same_as_zipfile(data, members)


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    patched = bytearray(data)
    struct.pack_into(fmt, patched, offset, value)
    return bytes(patched)


def _overlapping() -> bytes:
    """Member "b"'s directory entry points inside member "a"'s data, where a complete local header of "b"
    hides: two names for overlapping bytes (the trick of overlapping-member zip bombs)."""
    inner = _zip({"b": b"hidden"})
    inner_local = inner[: inner.index(b"PK\x01\x02")]
    outer = _zip({"a": inner_local})
    cd = outer.index(b"PK\x01\x02")
    eocd = outer.index(b"PK\x05\x06")
    entry_b = bytearray(inner[inner.index(b"PK\x01\x02") : inner.index(b"PK\x05\x06")])
    struct.pack_into("<I", entry_b, 42, 30 + 1)  # "a"'s data starts after its 30-byte header and 1-byte name
    directory = outer[cd:eocd] + bytes(entry_b)
    end = bytearray(outer[eocd:])
    struct.pack_into("<HHII", end, 8, 2, 2, len(directory), cd)
    return outer[:cd] + directory + bytes(end)


def _duplicate(second: str) -> bytes:
    raw = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(raw, "w") as zf:
        warnings.simplefilter("ignore")  # zipfile warns about a duplicate name, and writes it
        zf.writestr("pkg/a.json", b"1")
        zf.writestr(second, b"2")
    return raw.getvalue()


def _commented() -> bytes:
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as zf:
        zf.writestr("pkg/a.json", b"1")
        zf.comment = b"note"
    return raw.getvalue()


def _local_name_changed() -> bytes:
    data = _zip(MEMBERS)
    return data.replace(b"pkg/a.json", b"pkg/x.json", 1)  # the first occurrence is the local header


def _local_size_changed() -> bytes:
    return _patch(_zip(MEMBERS), 22, "<I", 3)  # uncompressed size of the first local header


def _descriptor_changed(tmp_path: Path) -> bytes:
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(4, 3), (torch.randn(1, 4),)), path)
    data = path.read_bytes()
    at = data.index(b"PK\x07\x08")
    return _patch(data, at + 4, "<I", 0x12345678)


def _encrypted() -> bytes:
    data = _zip(MEMBERS)
    data = _patch(data, 6, "<H", 1)  # local header flags
    return _patch(data, data.index(b"PK\x01\x02") + 8, "<H", 1)


def _unicode_path() -> bytes:
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as zf:
        info = zipfile.ZipInfo("pkg/a.json")
        info.extra = struct.pack("<HHB", 0x7075, 5, 1) + b"\0\0\0\0"
        zf.writestr(info, b"1")
    return raw.getvalue()


def _shifted() -> bytes:
    """A whole zip behind other bytes: its recorded offsets no longer match, which zipfile tolerates (it
    shifts every offset) and miniz does not; the F2 polyglot is built on this."""
    return b"#!/bin/sh\necho prepended\n" + _zip(MEMBERS)


def _leading_bytes() -> bytes:
    """zipfile writing from a file position other than 0: offsets are right, but bytes precede the first
    member (room for a second archive's records)."""
    raw = io.BytesIO()
    raw.write(b"#!/bin/sh\necho prepended\n")
    with zipfile.ZipFile(raw, "w") as zf:
        for name, data in MEMBERS.items():
            zf.writestr(name, data)
    return raw.getvalue()


def _gap() -> bytes:
    """Junk inserted between the two members, every offset after it moved to match."""
    data = _zip(MEMBERS)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        second = zf.infolist()[1].header_offset
    junk = b"junk"
    out = bytearray(data[:second] + junk + data[second:])
    cd = out.index(b"PK\x01\x02")
    entry = out.index(b"PK\x01\x02", cd + 4)
    struct.pack_into("<I", out, entry + 42, second + len(junk))
    struct.pack_into("<I", out, len(out) - 6, cd)
    return bytes(out)


CASES = {
    "archive behind other data": (_shifted, "data was prepended"),
    "bytes before the first member": (_leading_bytes, "bytes before it that belong to no member"),
    "data appended": (lambda: _zip(MEMBERS) + b"tail", "not the last 22 bytes"),
    "archive comment": (_commented, "not the last 22 bytes"),
    "bytes between members": (_gap, "is followed by 4 bytes that belong to no member"),
    "overlapping members": (_overlapping, "overlapping members"),
    "duplicate name": (lambda: _duplicate("pkg/a.json"), "appears twice"),
    "names differing in case only": (lambda: _duplicate("PKG/A.json"), "appears twice"),
    "local name differs": (_local_name_changed, "local header disagrees with the central directory (name"),
    "local size differs": (_local_size_changed, "local header disagrees with the central directory (sizes"),
    "encrypted member": (_encrypted, "is encrypted"),
    "Info-ZIP Unicode path": (_unicode_path, "Unicode name field"),
    "too short": (lambda: b"PK\x05\x06", "too short"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ambiguous_layouts_are_refused(case: str) -> None:
    build, message = CASES[case]
    with pytest.raises(ZipLayoutError, match=re.escape(message)):
        _read(build())


def test_data_descriptor_must_agree(tmp_path: Path) -> None:
    with pytest.raises(ZipLayoutError, match="data descriptor disagrees"):
        _read(_descriptor_changed(tmp_path))


def test_compression_methods_are_the_callers_choice() -> None:
    data = _zip(MEMBERS, zipfile.ZIP_DEFLATED)
    _read(data, ANY)
    with pytest.raises(ZipLayoutError, match=r"is compressed \(method 8\); accepted: stored"):
        _read(data, frozenset({STORED}))


def test_member_cap_is_checked_before_the_directory_is_parsed() -> None:
    data = _zip({f"pkg/{i}": b"" for i in range(5)})
    with pytest.raises(ZipLayoutError, match="5 members, over the cap of 4"):
        read_members(io.BytesIO(data), methods=ANY, max_members=4)


def test_a_corrupted_member_fails_its_crc_when_copied() -> None:
    data = bytearray(_zip(MEMBERS))
    member = next(m for m in _read(bytes(data)) if m.name == "pkg/b.bin")
    data[member.data_offset + 7] ^= 0xFF
    with pytest.raises(ModelLoadError, match="fails its CRC check"):
        b"".join(copy_member(io.BytesIO(bytes(data)), member))


def test_core_ml_extraction_checks_the_layout_first(tmp_path: Path) -> None:
    """The Core ML backend extracts with zipfile; an archive behind other bytes (zipfile would read it) is
    refused before anything is written."""
    from agent.runtimes.coreml import extract_package

    plain = _zip({"model.mlpackage/Manifest.json": b"{}", "model.mlpackage/Data/w.bin": b"\0" * 64})
    good = tmp_path / "good.zip"
    good.write_bytes(plain)
    assert (extract_package(good, tmp_path / "out") / "Manifest.json").read_bytes() == b"{}"
    shifted = tmp_path / "shifted.zip"
    shifted.write_bytes(b"\0" * 100 + plain)
    with pytest.raises(ModelLoadError, match="refused before extraction: the central directory is recorded"):
        extract_package(shifted, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
