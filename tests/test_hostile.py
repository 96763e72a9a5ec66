"""Hostile answers from a real server on loopback: each ends in a defined outcome, bounded, nothing kept.

The server here speaks raw HTTP/1.1 over sockets (``HostileServer``) so it can send what a polite server
never would: bodies without a length, a chunk that claims 2^48 bytes. It binds 127.0.0.1 only and the
fixture stops it; every stream it sends is bounded.
"""

from __future__ import annotations

import csv
import io
import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers import run_refwatch

MAX_BYTES = 100_000
STREAM_LIMIT = 2_000_000  # the most any answer here sends before it gives up (bounded loops)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 140, 90)).save(out, "PNG")
    return out.getvalue()


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                return
            head += chunk
        path = head.split(b" ", 2)[1].decode()
        try:
            getattr(self, "_" + path.strip("/").replace("-", "_"))(sock)
        except OSError:
            pass  # the client hung up: what a crawl does when a body is too large

    @staticmethod
    def _stream(sock: socket.socket, chunked: bool) -> None:
        block = b"\x00" * 8192
        sent = 0
        while sent < STREAM_LIMIT:
            sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            sent += len(block)

    def _chunked_big(self, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n")
        self._stream(sock, chunked=True)

    def _close_big(self, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n")
        self._stream(sock, chunked=False)

    def _huge_chunk(self, sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"%x\r\n" % (1 << 48))
        self._stream(sock, chunked=False)

    def _small_chunked(self, sock: socket.socket) -> None:
        body = _png()
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))


class HostileServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture()
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        server.thread.join(timeout=10)


def _crawl(tmp_path: Path, urls: dict[str, str], *extra: str) -> dict[str, dict]:
    snapshot = tmp_path / "snap.csv"
    with snapshot.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "url"])
        writer.writerows(urls.items())
    result = run_refwatch("crawl", str(snapshot), "--out", str(tmp_path / "out"), "--run-id", "hostile",
                          "--allow-private-networks", "--json", "--no-progress", "--processes", "1",
                          "--max-bytes", str(MAX_BYTES), "--retries", "0", *extra, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = pq.read_table(tmp_path / "out" / "runs" / "hostile" / "outcomes").to_pylist()
    return {row["ref_id"]: row for row in rows}


def test_oversized_bodies_of_unknown_length_are_too_large(hostile: HostileServer, tmp_path: Path) -> None:
    rows = _crawl(tmp_path, {"chunked": hostile.url("/chunked-big"), "close": hostile.url("/close-big"),
                             "huge-chunk": hostile.url("/huge-chunk"), "small": hostile.url("/small-chunked")})
    assert {ref: row["outcome"] for ref, row in rows.items()} == {
        "chunked": "too_large", "close": "too_large", "huge-chunk": "too_large", "small": "ok"}
    assert "max size" in rows["chunked"]["error"] and rows["chunked"]["md5"] is None
    summary = json.loads((tmp_path / "out" / "runs" / "hostile" / "summary.json").read_text())
    assert summary["outcomes"]["too_large"] == 3
