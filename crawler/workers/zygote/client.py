"""The parent's side of a zygote: start it, ask it for children, and handle each child as ``Popen`` would.

The parent learns a child's pid and gets a pidfd of it (``SCM_RIGHTS``) when it starts, and its exit status and
CPU when the zygote reaps it; signals go through the pidfd, and the pidfd also says when a child ended whose
zygote died (``STATUS_UNKNOWN``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from crawler.workers.zygote.server import MAX_MESSAGE

#: The exit status reported for a child whose zygote died before reaping it: a failed attempt.
STATUS_UNKNOWN = 255
#: How long the parent waits for the zygote's imports (a loaded machine: several times the ~2 s they take).
READY_TIMEOUT = 90.0
#: How long the parent waits for the answer to one fork request.
FORK_TIMEOUT = 15.0
#: A child seen ended through its pidfd whose status the zygote has not sent after this long: status unknown.
STATUS_GRACE = 10.0


class ZygoteError(Exception):
    """The zygote cannot start children (dead, refused, too slow): the caller starts them by exec instead."""


def available() -> bool:
    """Whether this system has what the zygote needs: ``fork``, pidfds (Linux 5.3) and fd passing."""
    return all(hasattr(mod, name) for mod, name in ((os, "fork"), (os, "pidfd_open"), (os, "wait4"),
                                                    (signal, "pidfd_send_signal"), (socket, "send_fds")))


class Zygote:
    """The parent's handle on one zygote process: ``fork`` starts a child, ``close`` ends the zygote."""

    def __init__(self, command: Sequence[str], env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        self.process = subprocess.Popen([*command, "--fd", str(theirs.fileno())], env=env, pass_fds=[theirs.fileno()],
                                        stdin=subprocess.DEVNULL)
        theirs.close()
        self.started = time.monotonic()
        self.ready = False
        self.dead = False
        self.info: dict[str, Any] = {}
        self._started: dict[int, tuple[int, int]] = {}  # request id -> (pid, pidfd)
        self._exited: dict[int, tuple[int, float]] = {}  # pid -> (exit status, CPU seconds)
        self._next_id = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def fork(self, argv: Sequence[str], env: dict[str, str], cwd: str) -> ForkedChild:
        """A child running the zygote's entry with ``argv``, ``env`` and ``cwd``; ``ZygoteError`` if it cannot."""
        if not self.ready:
            self._wait(lambda: self.ready, max(0.0, self.started + READY_TIMEOUT - time.monotonic()), "its imports")
        self._next_id += 1
        request = self._next_id
        try:
            self._sock.send(json.dumps({"fork": request, "argv": list(argv), "env": env, "cwd": cwd}).encode())
        except OSError as exc:
            self.dead = True
            raise ZygoteError(f"zygote {self.pid} is gone ({exc})") from None
        self._wait(lambda: request in self._started, FORK_TIMEOUT, "a fork")
        pid, pidfd = self._started.pop(request)
        return ForkedChild(self, pid, pidfd)

    def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.dead:
                raise ZygoteError(f"zygote {self.pid} is gone (exit {self.process.poll()}): "
                                  f"{self.info.get('error', 'no reason given')}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ZygoteError(f"zygote {self.pid}: no answer to {what} in time")
            self.pump(min(left, 1.0))

    def pump(self, timeout: float = 0.0) -> None:
        """Read what the zygote has sent (waiting up to ``timeout`` s for the first message)."""
        while not self.dead:
            if not select.select([self._sock], [], [], timeout)[0]:
                return
            timeout = 0.0
            try:
                data, fds, _, _ = socket.recv_fds(self._sock, MAX_MESSAGE, 4)
            except OSError:
                data, fds = b"", []
            if not data:  # EOF: the zygote exited or was killed
                self.dead = True
                return
            message = json.loads(data)
            if "started" in message:
                self._started[message["started"]] = (message["pid"], fds[0])
            elif "exited" in message:
                self._exited[message["exited"]] = (message["status"], message["cpu"])
            elif "ready" in message:  # or not: why it cannot fork (its warm-up failed, or a thread runs)
                self.ready, self.dead, self.info = message["ready"], not message["ready"], message
            elif "refused" in message:  # a fork refused: unsafe state or fork() failed; the zygote is not used again
                self.info = message
                self.dead = True
            for fd in fds[1:] if "started" in message else fds:
                os.close(fd)

    @property
    def warming(self) -> bool:
        """Still importing (``fork`` would wait): neither ready, nor dead, nor past ``READY_TIMEOUT``."""
        self.pump()
        return not self.ready and not self.dead and time.monotonic() < self.started + READY_TIMEOUT

    def exit_status(self, pid: int) -> tuple[int, float] | None:
        return self._exited.pop(pid, None)

    def close(self, timeout: float = 10.0) -> None:
        """End the zygote: it exits once its socket closes (after its children, if any still run)."""
        self._sock.close()
        self.dead = True
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for _, pidfd in self._started.values():
            os.close(pidfd)
        self._started.clear()


class ForkedChild:
    """A child forked by a zygote, as the parent sees it: the part of ``subprocess.Popen`` that
    ``crawl_shards`` and the Redis worker use (``poll``, ``wait``, ``send_signal``, ``terminate``, ``kill``)."""

    def __init__(self, zygote: Zygote, pid: int, pidfd: int) -> None:
        self.zygote = zygote
        self.pid = pid
        self.returncode: int | None = None
        self.cpu_seconds: float | None = None
        self._pidfd: int | None = pidfd
        self._ended_at: float | None = None  # when the pidfd first said the process was gone

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        self.zygote.pump()
        reported = self.zygote.exit_status(self.pid)
        if reported is not None:
            self._done(*reported)
        elif self._pidfd is not None and select.select([self._pidfd], [], [], 0)[0]:
            now = time.monotonic()
            self._ended_at = self._ended_at or now
            if self.zygote.dead or now - self._ended_at > STATUS_GRACE:
                self._done(STATUS_UNKNOWN, None)  # ended, but nobody can tell how: a failed attempt
        return self.returncode

    def _done(self, code: int, cpu: float | None) -> None:
        self.returncode, self.cpu_seconds = code, cpu
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
            watch = [self._pidfd] if self._pidfd is not None and self._ended_at is None else []
            select.select(watch, [], [], 0.05)  # woken by the child's end; then the zygote's message follows
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None or self._pidfd is None:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
