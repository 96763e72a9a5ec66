"""Hostile answers from a real server on loopback: each ends in a defined outcome, bounded, nothing kept.

The server here speaks raw HTTP/1.1 over sockets (``HostileServer``) so it can send what a polite server
never would: bodies without a length, a chunk that claims 2^48 bytes. It binds 127.0.0.1 only and the
fixture stops it; every stream it sends is bounded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers import read_request_head, run_refwatch

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
        head = read_request_head(sock)
        if head is None:
            return
        path = head.split(b" ", 2)[1].decode()
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.requests[path] = self.server.requests.get(path, 0) + 1  # type: ignore[attr-defined]
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

    @staticmethod
    def _header_lines(sock: socket.socket, line: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n")
        sent = 0
        while sent < STREAM_LIMIT:
            sock.sendall(line * 64)
            sent += len(line) * 64

    def _many_headers(self, sock: socket.socket) -> None:
        self._header_lines(sock, b"X-Filler: 1\r\n")

    def _long_headers(self, sock: socket.socket) -> None:
        self._header_lines(sock, b"X-Filler: " + b"a" * 8000 + b"\r\n")

    def _no_colon_lines(self, sock: socket.socket) -> None:
        self._header_lines(sock, b"X-Filler-Without-A-Colon\r\n")

    def _no_colon_header(self, sock: socket.socket) -> None:
        body = _png()
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nA header line without a colon\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

    def _reset(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST

    def _small_chunked(self, sock: socket.socket) -> None:
        body = _png()
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))


class HostileServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}  # path -> requests (one a connection: the crawl never reuses them)
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


def _crawl(tmp_path: Path, urls: dict[str, str], *extra: str, log: list[str] | None = None) -> dict[str, dict]:
    """Crawl ``urls`` (ref id -> URL); the outcome rows by ref id, and the crawl's stderr appended to ``log``."""
    snapshot = tmp_path / "snap.csv"
    with snapshot.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "url"])
        writer.writerows(urls.items())
    result = run_refwatch("crawl", str(snapshot), "--out", str(tmp_path / "out"), "--run-id", "hostile",
                          "--allow-private-networks", "--json", "--no-progress", "--processes", "1",
                          "--max-bytes", str(MAX_BYTES), "--retries", "0", *extra, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    if log is not None:
        log.append(result.stderr)
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


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_oversized_bodies_are_logged_per_url_only_at_debug(hostile: HostileServer, tmp_path: Path, level: str) -> None:
    """Each too_large reference has its row; Scrapy's WARNING naming its URL is lowered to DEBUG."""
    log: list[str] = []
    rows = _crawl(tmp_path, {"close": hostile.url("/close-big"), "chunked": hostile.url("/chunked-big")},
                  "--log-level", level, log=log)
    assert {row["outcome"] for row in rows.values()} == {"too_large"}
    size_lines = [line for line in log[0].splitlines()
                  if "larger than download max size" in line and "handlers.http11]" in line]
    if level == "INFO":
        assert size_lines == [] and "larger than download max size" not in log[0]
        assert "/close-big" not in log[0] and "/chunked-big" not in log[0]
    else:
        assert len(size_lines) == 2 and all("DEBUG" in line and "WARNING" not in line for line in size_lines)


class _LateFirstAnswer(socketserver.BaseRequestHandler):
    """Keep-alive: the first request the server ever gets is answered late with image A (all of it after
    ``delay``, or with ``server.head_first`` its head at once and its body after ``delay``); every other
    request, on any connection, at once with image B."""

    delay = 2.0

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(15)
        buffered = b""
        while True:
            while b"\r\n\r\n" not in buffered:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                buffered += chunk
            _, buffered = buffered.split(b"\r\n\r\n", 1)
            server = self.server
            with server.lock:  # type: ignore[attr-defined]
                first = server.requests == 0  # type: ignore[attr-defined]
                server.requests += 1  # type: ignore[attr-defined]
            body = server.images["A" if first else "B"]  # type: ignore[attr-defined]
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n"
                    b"Connection: keep-alive\r\n\r\n" % len(body))
            try:
                if first and server.head_first:  # type: ignore[attr-defined]
                    sock.sendall(head + body[:10])
                    threading.Event().wait(self.delay)
                    sock.sendall(body[10:])
                    continue
                if first:
                    threading.Event().wait(self.delay)
                sock.sendall(head + body)
            except OSError:
                return


@pytest.mark.parametrize("head_first", [False, True], ids=["late-head", "late-body"])
def test_a_late_answer_to_a_timed_out_request_is_never_the_retry_s(tmp_path: Path, head_first: bool) -> None:
    """The first attempt times out; its answer (image A) arrives late. The retry must get its own answer
    (image B) or fail — never A's bytes, which a reused keep-alive connection would deliver."""
    from crawler.hashing.digest import hash_bytes

    images = {}
    for name, colour in (("A", (200, 30, 30)), ("B", (30, 30, 200))):
        out = io.BytesIO()
        Image.new("RGB", (40, 40), colour).save(out, "PNG")
        images[name] = out.getvalue()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _LateFirstAnswer)
    server.daemon_threads = True
    server.lock = threading.Lock()  # type: ignore[attr-defined]
    server.requests = 0  # type: ignore[attr-defined]
    server.images = images  # type: ignore[attr-defined]
    server.head_first = head_first  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/img.png"
        rows = _crawl(tmp_path, {"late": url}, "--timeout", "1", "--retries", "2", "--concurrency", "1",
                      "--per-host", "1")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    row = rows["late"]
    assert server.requests >= 2  # type: ignore[attr-defined]  # the first attempt timed out and was retried
    assert row["md5"] != hash_bytes(images["A"]).md5
    assert row["outcome"] != "ok" or row["md5"] == hash_bytes(images["B"]).md5


def test_an_endless_response_head_is_cut_short(hostile: HostileServer, tmp_path: Path) -> None:
    """Header lines streamed without end (many short ones, or fewer long ones): http_error with a clear
    error after the head limit, not a crawl that reads headers until its timeout."""
    rows = _crawl(tmp_path, {"many": hostile.url("/many-headers"), "long": hostile.url("/long-headers"),
                             "small": hostile.url("/small-chunked")}, "--timeout", "20")
    assert {ref: row["outcome"] for ref, row in rows.items()} == {"many": "http_error", "long": "http_error",
                                                                  "small": "ok"}
    assert "response head over" in rows["many"]["error"] and "response head over" in rows["long"]["error"]
    assert rows["many"]["elapsed_ms"] is None or rows["many"]["elapsed_ms"] < 10_000


def test_an_endless_response_head_is_not_retried(hostile: HostileServer, tmp_path: Path) -> None:
    """A head over the limit is a broken answer, not a late one: one attempt at the default two retries (it
    used to fail as Scrapy's DownloadFailedError, which RetryMiddleware retries: three attempts, each holding a
    download slot). A reset connection is still retried, so the retries are on."""
    rows = _crawl(tmp_path, {"many": hostile.url("/many-headers"), "reset": hostile.url("/reset")},
                  "--retries", "2", "--timeout", "20")
    assert rows["many"]["outcome"] == "http_error" and hostile.requests["/many-headers"] == 1
    assert rows["many"]["error"].startswith("ResponseHeadTooLarge: response head over 65536 bytes or 256 header")
    assert rows["reset"]["outcome"] == "connection_error" and hostile.requests["/reset"] == 3


def test_a_header_line_without_a_colon_is_skipped_as_browsers_and_scrapy_do(hostile: HostileServer,
                                                                           tmp_path: Path) -> None:
    """Scrapy's stock client skips such a line (its lenient parser); refwatch's bounded one does too, and still
    cuts an endless run of them at the head limit."""
    rows = _crawl(tmp_path, {"odd": hostile.url("/no-colon-header"), "endless": hostile.url("/no-colon-lines")},
                  "--timeout", "20")
    assert rows["odd"]["outcome"] == "ok"
    assert rows["odd"]["md5"] == hashlib.md5(_png()).hexdigest()
    assert rows["endless"]["outcome"] == "http_error" and "response head over" in rows["endless"]["error"]
