"""Tests of tests/browser.py: a real headless chromium loads local pages and reports errors, plots and requests."""

from __future__ import annotations

import base64
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import browser_available, open_in_browser

_reason = browser_available()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def one_pixel_png() -> bytes:
    """A valid 1x1 opaque red RGB PNG, built by hand."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # width, height, bit depth 8, colour type RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte 0, then one RGB pixel
    return PNG_MAGIC + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels) + _png_chunk(b"IEND", b"")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC, "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def write_page(path: Path, body: str, title: str = "test page") -> Path:
    path.write_text(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f"<body>\n{body}\n</body></html>\n",
        encoding="utf-8",
    )
    return path


def test_self_contained_page_renders_cleanly(tmp_path: Path) -> None:
    png = base64.b64encode(one_pixel_png()).decode("ascii")
    page_file = write_page(
        tmp_path / "clean.html",
        "<h1>Latency report</h1>\n"
        '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="100" viewBox="0 0 200 100">'
        '<rect x="10" y="10" width="180" height="80" fill="steelblue"/>'
        '<text x="20" y="55" fill="white">plot</text></svg>\n'
        f'<p><img alt="pixel" width="40" height="40" src="data:image/png;base64,{png}"></p>\n'
        "<p>Median latency 1.23 ms</p>",
        title="Clean report",
    )
    shot = tmp_path / "shots" / "clean.png"
    page = open_in_browser(page_file, screenshot=shot)
    assert page.console_errors == ()
    assert page.title == "Clean report"
    assert page.svg_count == 1
    assert page.images_total == 1
    assert page.images_loaded == 1
    assert "Median latency 1.23 ms" in page.text
    assert page.network_requests == ()
    assert not page.used_network
    assert not page.load_timed_out
    assert page.screenshot == shot
    width, height = png_size(shot.read_bytes())
    assert width == 1400
    assert 100 <= height <= 2000  # the whole (short) page, not the 2000-pixel viewport


def test_console_error_is_reported(tmp_path: Path) -> None:
    page_file = write_page(tmp_path / "boom.html", '<p>hello</p><script>console.error("boom")</script>')
    page = open_in_browser(page_file)
    assert len(page.console_errors) == 1, page.console_errors
    assert '"boom"' in page.console_errors[0]
    assert page.screenshot is None


def test_uncaught_exception_is_reported(tmp_path: Path) -> None:
    page_file = write_page(tmp_path / "throw.html", '<script>throw new Error("kaput")</script>')
    page = open_in_browser(page_file)
    assert any("kaput" in message for message in page.console_errors), page.console_errors


def test_network_request_is_detected(tmp_path: Path) -> None:
    page_file = write_page(tmp_path / "net.html", '<img alt="remote" src="http://example.invalid/x.png">')
    page = open_in_browser(page_file)
    assert page.used_network
    assert "http://example.invalid/x.png" in page.network_requests
    assert page.images_total == 1
    assert page.images_loaded == 0


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A local HTTP address that accepts connections and never answers."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


def test_hanging_request_times_out_and_is_still_detected(tmp_path: Path, silent_server: str) -> None:
    url = f"{silent_server}/never.png"
    page_file = write_page(tmp_path / "hang.html", f'<p>waiting</p><img alt="never" src="{url}">')
    page = open_in_browser(page_file, screenshot=tmp_path / "hang.png", load_timeout_s=2.0)
    assert page.load_timed_out
    assert "waiting" in page.text
    assert url in page.network_requests
    assert png_size((tmp_path / "hang.png").read_bytes())[0] == 1400
