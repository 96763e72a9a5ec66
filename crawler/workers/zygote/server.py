"""The zygote's side: warm up once, then fork a child per request and report how each ended.

Run as ``python -m crawler.workers.zygote --warm MODULE:FUNCTION --entry MODULE:FUNCTION --fd N`` by
``client.Zygote``; it imports nothing of refwatch but what those two name.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

#: The largest message either side sends (a fork request carries the child's environment).
MAX_MESSAGE = 1 << 20
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _load(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


def fork_hazards() -> list[str]:
    """What would make a fork of this process unsafe now (empty: safe)."""
    hazards = []
    if threading.active_count() != 1:
        hazards.append(f"{threading.active_count()} Python threads: {[t.name for t in threading.enumerate()]}")
    if "twisted.internet.reactor" in sys.modules:
        hazards.append("a Twisted reactor is installed (its epoll and wakers would be shared)")
    return hazards


def native_threads() -> list[str]:
    """This process's threads by name (``/proc/self/task``): the main one and those libraries started."""
    names = []
    for task in sorted(os.listdir("/proc/self/task")):
        try:
            with open(f"/proc/self/task/{task}/comm", encoding="utf-8") as fh:
                names.append(fh.read().strip())
        except OSError:
            continue
    return names


def set_process_name(name: str) -> None:
    """The process's name in ``ps -o comm`` and ``top`` (Linux ``PR_SET_NAME``, 15 bytes); a forked child's
    command line is its zygote's, so this is what tells them apart."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> bool:
    try:
        socket.send_fds(sock, [json.dumps(message).encode()], list(fds))
        return True
    except OSError:
        return False


def _child(sock: socket.socket, children: dict[int, int], request: dict[str, Any],
           entry: Callable[[list[str]], Any]) -> None:
    """In the forked child: become what an exec'd ``python -m crawler.cli.main ARGV`` would be, run, exit."""
    code: Any = 1
    try:
        sock.close()
        for pidfd in children:
            os.close(pidfd)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a new interpreter starts
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # a SIGTERM already sent is delivered now
        os.environ.clear()
        os.environ.update(request["env"])  # before anything reads it: the entry, the crawl, boto, Scrapy
        os.chdir(request["cwd"])
        sys.argv = [sys.argv[0], *request["argv"]]
        if "numpy" in sys.modules:  # a child's generator must not be its siblings' (CPython reseeds random)
            sys.modules["numpy"].random.seed()
        code = entry(list(request["argv"]))
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # noqa: BLE001 - as an uncaught exception in a script: traceback, exit 1
        traceback.print_exc()
        code = 1
    finally:
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code or 0)


def serve(sock: socket.socket, warm: str, entry: str) -> int:
    """The zygote's life: warm up, say ready (or why not), fork on request, report each child's end; exit once
    the parent closes the socket and every child has ended."""
    # Ctrl-C, or a SIGTERM to the whole group: the parent stops the children (whose statuses the zygote still
    # reports), then closes the socket, which ends the zygote. SIGKILL still kills it (the parent falls back).
    # Blocked, not ignored: a child inherits the mask, and a SIGTERM sent to it before it has set its own
    # handlers stays pending until it unblocks them (an ignored one would be lost).
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    set_process_name("refwatch-zygote")
    started = time.process_time()
    try:
        _load(warm)()
        run = _load(entry)  # imported here too: once, not in every child
    except Exception as exc:  # noqa: BLE001 - any failure means: start children by exec
        _send(sock, {"ready": False, "error": f"warm-up failed: {exc!r}"})
        return 1
    hazards = fork_hazards()
    if hazards:
        _send(sock, {"ready": False, "error": "; ".join(hazards)})
        return 1
    # What the warm-up built lives as long as every child: freeze it (CPython's advice before fork), so a
    # child's collections neither walk it nor write to its pages, which would copy them (copy-on-write).
    gc.collect()
    gc.freeze()
    _send(sock, {"ready": True, "pid": os.getpid(), "warm_cpu": time.process_time() - started,
                 "threads": native_threads()})
    children: dict[int, int] = {}  # pidfd -> pid
    listening = True
    while listening or children:
        readable = select.select([sock, *children] if listening else list(children), [], [])[0]
        for pidfd in [fd for fd in readable if fd in children]:
            pid = children.pop(pidfd)
            os.close(pidfd)
            _, status, usage = os.wait4(pid, 0)
            _send(sock, {"exited": pid, "status": _exit_code(status), "cpu": usage.ru_utime + usage.ru_stime})
        if listening and sock in readable:
            try:
                data = sock.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                listening = False  # the parent is done (or gone): wait for the children, then exit
                continue
            request = json.loads(data)
            hazards = fork_hazards()
            if hazards:
                _send(sock, {"refused": request["fork"], "error": "; ".join(hazards)})
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as exc:
                _send(sock, {"refused": request["fork"], "error": f"fork: {exc}"})
                continue
            if pid == 0:
                _child(sock, children, request, run)  # never returns
            pidfd = os.pidfd_open(pid)
            children[pidfd] = pid
            _send(sock, {"started": request["fork"], "pid": pid}, [pidfd])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crawler.workers.zygote")
    parser.add_argument("--warm", required=True, help="MODULE:FUNCTION run once before the first fork")
    parser.add_argument("--entry", required=True, help="MODULE:FUNCTION each child calls with its argv")
    parser.add_argument("--fd", type=int, required=True, help="the parent's SOCK_SEQPACKET socket")
    args = parser.parse_args(argv)
    with socket.socket(fileno=args.fd) as sock:
        return serve(sock, args.warm, args.entry)
