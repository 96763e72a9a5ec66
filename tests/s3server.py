"""A real S3 endpoint for the tests: ``moto_server`` in a child process on a free loopback port.

Tests talk to it over HTTP through boto3 like any S3 (no in-process mock). ``FaultProxy`` sits between a
client and it to play an S3 that is down or answering 5xx for a while. Both bind 127.0.0.1 only, and the
code that starts them stops them.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.helpers import free_port, stop_process

#: Dummy credentials and region for every boto3 client of the tests and their child processes; instance
#: metadata is off so a missing credential never makes boto3 look beyond loopback.
S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
S3_UNSET_ENV = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3")


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1:<free port>; ``start`` waits (bounded) until it answers."""

    def __init__(self, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    def start(self, timeout: float = 30.0) -> MotoServer:
        log = self._log_path.open("wb") if self._log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._proc.returncode}; see {self._log_path}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/")
                conn.getresponse().read()
                conn.close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on port {self.port} within {timeout} s")

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None

    def client(self) -> Any:
        """One boto3 client for the tests' own look-ups (boto3 clients are thread-safe; making one is slow)."""
        if self._client is None:
            import boto3

            self._client = boto3.session.Session().client("s3", endpoint_url=self.endpoint)
        return self._client

    def new_bucket(self) -> str:
        """A fresh bucket, so that no two tests share state."""
        name = f"rw-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def s3_environment(endpoint: str) -> Iterator[None]:
    """Dummy credentials in ``os.environ`` (child processes inherit them), restored afterwards.

    ``AWS_ENDPOINT_URL`` is set too, as a safety net: a client a test forgets to point at moto still only
    talks to loopback.
    """
    saved = {name: os.environ.get(name) for name in (*S3_TEST_ENV, *S3_UNSET_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(S3_TEST_ENV, AWS_ENDPOINT_URL=endpoint)
    for name in S3_UNSET_ENV:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _ProxyHandler(BaseHTTPRequestHandler):
    server: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _handle(self) -> None:
        body = self._body()
        fault = self.server.fault_for(self.command, self.path)
        if fault == "drop":  # an endpoint that is down: the connection closes with no answer
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if isinstance(fault, int):
            payload = (f"<?xml version='1.0'?><Error><Code>{'SlowDown' if fault == 503 else 'InternalError'}"
                       f"</Code><Message>injected</Message></Error>").encode()
            self._answer(fault, [("Content-Type", "application/xml")], payload)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
            headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            kept = [(k, v) for k, v in answer.getheaders()
                    if k.lower() not in ("transfer-encoding", "connection", "content-length")]
            self._answer(answer.status, kept, data, length=answer.getheader("Content-Length"))
        finally:
            upstream.close()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:size]
                if not size:
                    return b"".join(chunks)
                chunks.append(chunk)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes, length: str | None = None) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class FaultProxy(ThreadingHTTPServer):
    """A loopback HTTP proxy in front of moto that answers matching requests with injected faults.

    ``inject(faults, method=, path_contains=)`` queues faults (an HTTP status such as 503, or ``"drop"``
    for a connection closed with no answer), each used by one matching request; ``failing`` makes every
    matching request fail until switched off. Everything else is forwarded unchanged.
    """

    daemon_threads = True

    def __init__(self, upstream_port: int, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _ProxyHandler)
        self.upstream_port = upstream_port
        self._lock = threading.Lock()
        self._faults: deque[int | str] = deque()
        self._match: tuple[str, str] = ("", "")
        self.failing: int | str | None = None
        self.injected = 0
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def inject(self, faults: list[int | str], *, method: str = "", path_contains: str = "") -> None:
        with self._lock:
            self._faults.extend(faults)
            self._match = (method, path_contains)

    def fault_for(self, method: str, path: str) -> int | str | None:
        with self._lock:
            want_method, want_path = self._match
            if (want_method and method != want_method) or want_path not in path:
                return None
            fault = self._faults.popleft() if self._faults else self.failing
            self.injected += fault is not None
            return fault

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
