"""Helpers the tests share: free loopback ports and the real command line in a child process."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free TCP port on loopback (bind port 0, read it, close)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_refwatch(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
                 cwd: Path | None = None):
    """Run the real ``refwatch`` command line in a child process; returns the CompletedProcess."""
    import subprocess
    import sys

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "crawler.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or REPO_ROOT)


def stop_process(process, timeout: float = 10.0) -> None:
    """SIGTERM a child server, then SIGKILL it if it has not exited within ``timeout`` seconds."""
    import subprocess

    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def read_request_head(sock) -> bytes | None:
    """Read from a test server's socket up to the end of the request head (bounded at 64 KiB); ``None`` when
    the client closed first."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        head += chunk
    return head
