"""Politeness shared by every worker of a crawl, through a real redis-server (no mocks, no fakeredis).

Unit tests drive ``crawler.coordination.politeness`` directly (threads stand in for workers); the end-to-end
tests run two real ``refwatch crawl`` child processes against loopback HTTP servers that count, per Host, the
requests in flight, and can answer 429 with ``Retry-After``. Every server is stopped by the code that starts it
and every wait has a deadline.
"""

from __future__ import annotations

import re
import select
import signal
import socket
import subprocess
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from scrapy.exceptions import NotConfigured
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler

from crawler.coordination.politeness import SharedPoliteness, poll_delay
from crawler.sample.images import synthetic_jpeg
from middlewares.shared_politeness import SharedPolitenessMiddleware
from tests.test_crawl_e2e import crawl_in_background, read_rows, write_snapshot

HOST = "img.example"


def _politeness(url: str, scope: str = "t") -> SharedPoliteness:
    return SharedPoliteness.from_url(url, scope=scope)


# --- politeness.py against a real Redis -----------------------------------------------------------------

def test_the_limit_holds_for_many_concurrent_acquirers(redis_server) -> None:
    limit, workers, rounds = 3, 12, 20
    lock = threading.Lock()
    inside = 0
    most = 0
    most_in_redis = 0
    errors: list[BaseException] = []

    def worker() -> None:
        nonlocal inside, most, most_in_redis
        politeness = _politeness(redis_server.url)  # one client per thread, as one per worker process
        try:
            for _ in range(rounds):
                token = None
                for _ in range(2000):  # bounded: ~10 s at most
                    token = politeness.acquire(HOST, limit, lease_seconds=30)
                    if token is not None:
                        break
                    time.sleep(0.005)
                assert token is not None, "no slot within the deadline"
                with lock:
                    inside += 1
                    most = max(most, inside)
                held = politeness.holders(HOST)
                with lock:
                    most_in_redis = max(most_in_redis, held)
                time.sleep(0.002)
                with lock:
                    inside -= 1
                assert politeness.release(HOST, token)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            politeness.close()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    assert most == limit  # never more, and the contention was real
    assert most_in_redis <= limit
    assert _politeness(redis_server.url).holders(HOST) == 0


def test_a_holder_that_never_releases_gives_its_slots_back_after_the_lease(redis_server) -> None:
    politeness = _politeness(redis_server.url)
    taken = [politeness.acquire(HOST, 2, lease_seconds=0.5) for _ in range(2)]
    assert all(taken)
    assert politeness.acquire(HOST, 2, lease_seconds=0.5) is None
    assert politeness.holders(HOST) == 2
    time.sleep(0.6)
    assert politeness.holders(HOST) == 0
    assert politeness.acquire(HOST, 2, lease_seconds=0.5) is not None
    # The slot set expires with its last lease: nothing is left behind in Redis.
    time.sleep(0.6)
    assert not politeness.client.exists(politeness.slots_key(HOST))


def test_renewal_keeps_a_slot_past_its_lease_and_reports_the_lost_ones(redis_server) -> None:
    politeness = _politeness(redis_server.url)
    token = politeness.acquire(HOST, 1, lease_seconds=0.6)
    assert token is not None
    time.sleep(0.35)
    assert politeness.renew({HOST: [token]}, lease_seconds=0.6) == {}
    time.sleep(0.4)  # 0.75 s after taking it: past the first lease, within the renewed one
    assert politeness.acquire(HOST, 1, lease_seconds=0.6) is None
    time.sleep(0.7)
    assert politeness.renew({HOST: [token]}, lease_seconds=0.6) == {HOST: [token]}
    assert politeness.renew({}, lease_seconds=0.6) == {}
    assert not politeness.release(HOST, token)  # already back


def test_backoff_only_moves_forward_and_closes_the_host(redis_server) -> None:
    politeness = _politeness(redis_server.url)
    assert politeness.backoff_remaining(HOST) == 0.0
    assert 4.9 <= politeness.push_backoff(HOST, 5) <= 5.0
    assert 4.8 <= politeness.push_backoff(HOST, 1) <= 5.0  # a shorter back-off does not shorten it
    assert 4.8 <= politeness.backoff_remaining(HOST) <= 5.0
    assert 7.9 <= politeness.push_backoff(HOST, 8) <= 8.0  # a longer one extends it
    attempt = politeness.try_acquire(HOST, 5, lease_seconds=30)
    assert attempt.token is None and not attempt.full and 7.8 <= attempt.backoff <= 8.0
    assert politeness.acquire("other.example", 5, lease_seconds=30) is not None  # per host
    politeness.push_backoff("short.example", 0.3)
    time.sleep(0.4)
    assert politeness.backoff_remaining("short.example") == 0.0
    assert not politeness.client.exists(politeness.backoff_key("short.example"))  # it expires by itself
    assert politeness.acquire("short.example", 1, lease_seconds=30) is not None


def test_moments_are_redis_time_not_the_workers_clock(redis_server, monkeypatch) -> None:
    politeness = _politeness(redis_server.url)
    monkeypatch.setattr(time, "time", lambda: 4_000_000_000.0)  # a worker whose clock is decades off
    token = politeness.acquire(HOST, 1, lease_seconds=10)
    seconds, micros = politeness.client.time()
    redis_ms = seconds * 1000 + micros // 1000
    score = politeness.client.zscore(politeness.slots_key(HOST), token)
    assert score is not None and abs(score - (redis_ms + 10_000)) < 1000
    assert 9.0 <= politeness.push_backoff(HOST, 10) <= 10.0
    until = int(politeness.client.get(politeness.backoff_key(HOST)))
    assert abs(until - (redis_ms + 10_000)) < 1000


def test_keys_are_namespaced_by_scope(redis_server) -> None:
    run_a, run_b = _politeness(redis_server.url, "run-a"), _politeness(redis_server.url, "run-b")
    assert run_a.slots_key(HOST) == f"refwatch:polite:run-a:host:{{{HOST}}}"  # a Redis Cluster hash tag
    assert run_a.backoff_key(HOST) == f"refwatch:polite:run-a:backoff:{{{HOST}}}"
    assert run_a.acquire(HOST, 1, lease_seconds=30) is not None
    assert run_a.acquire(HOST, 1, lease_seconds=30) is None
    assert run_b.acquire(HOST, 1, lease_seconds=30) is not None  # another scope, other slots
    assert sorted(k.decode() for k in run_a.client.keys("refwatch:polite:*")) == [
        f"refwatch:polite:run-a:host:{{{HOST}}}", f"refwatch:polite:run-a:waiting:{{{HOST}}}",  # the refused one
        f"refwatch:polite:run-b:host:{{{HOST}}}"]


def test_workers_learn_whether_others_wait_for_a_host(redis_server) -> None:
    first, second = _politeness(redis_server.url), _politeness(redis_server.url)
    taken = first.try_acquire(HOST, 2, lease_seconds=30)
    assert taken.token is not None and taken.free == 1 and taken.others_waiting == 0
    assert first.try_acquire(HOST, 2, lease_seconds=30).free == 0
    refused = second.try_acquire(HOST, 2, lease_seconds=30, waiting_ttl=0.5)
    assert refused.full and refused.others_waiting == 0
    assert first.try_acquire(HOST, 2, lease_seconds=30).others_waiting == 1  # the second worker waits
    # A worker that got its slot and has nothing more waiting is no longer listed...
    first.release(HOST, taken.token)
    assert second.try_acquire(HOST, 2, lease_seconds=30).token is not None
    assert first.try_acquire(HOST, 2, lease_seconds=30).others_waiting == 0
    # ... and a listing runs out by itself when its worker stops asking.
    assert second.try_acquire(HOST, 2, lease_seconds=30, waiting_ttl=0.3).full
    assert first.try_acquire(HOST, 2, lease_seconds=30).others_waiting == 1
    time.sleep(0.4)
    assert first.try_acquire(HOST, 2, lease_seconds=30).others_waiting == 0


def test_poll_delay_doubles_up_to_its_bound_with_jitter() -> None:
    import random

    rng = random.Random(7)
    for tries in range(40):
        base = min(0.5, 0.05 * 2 ** tries)
        delays = [poll_delay(tries, 0.05, 0.5, rng) for _ in range(50)]
        assert all(base / 2 <= d <= base for d in delays)
        assert len(set(delays)) > 1


def test_middleware_is_off_without_redis_and_reads_its_settings() -> None:
    with pytest.raises(NotConfigured):
        build_from_crawler(SharedPolitenessMiddleware, get_crawler(settings_dict={}))
    with pytest.raises(NotConfigured):  # a run seeded with -s REFWATCH_SHARED_POLITENESS=false
        build_from_crawler(SharedPolitenessMiddleware, get_crawler(settings_dict={
            "REFWATCH_REDIS_URL": "redis://127.0.0.1:1/0", "REFWATCH_SHARED_POLITENESS": "false"}))
    settings = {"REFWATCH_REDIS_URL": "redis://127.0.0.1:1/0", "REFWATCH_RUN_ID": "r1",
                "CONCURRENT_REQUESTS_PER_DOMAIN": 5, "DOWNLOAD_TIMEOUT": 20,
                "REFWATCH_POLITENESS_POLL_MAX": 0.5, "REFWATCH_POLITENESS_RETRY_REDIS": 10.0,
                "REFWATCH_BACKOFF_MAX_SECONDS": 120.0, "REFWATCH_BACKOFF_DEFAULT_SECONDS": 5.0}
    middleware = build_from_crawler(SharedPolitenessMiddleware, get_crawler(settings_dict=settings))
    try:
        assert middleware.per_host == 5 and middleware.lease == 30.0
        assert middleware.politeness.namespace == "refwatch:polite:r1"
    finally:
        middleware.spider_closed(None)  # type: ignore[arg-type]
    settings |= {"REFWATCH_SHARED_PER_HOST": "2", "REFWATCH_POLITENESS_LEASE": "4",
                 "REFWATCH_POLITENESS_SCOPE": "fleet"}
    middleware = build_from_crawler(SharedPolitenessMiddleware, get_crawler(settings_dict=settings))
    try:
        assert middleware.per_host == 2 and middleware.lease == 4.0
        assert middleware.politeness.namespace == "refwatch:polite:fleet"
    finally:
        middleware.spider_closed(None)  # type: ignore[arg-type]


# --- end to end: two real crawls sharing one host --------------------------------------------------------

@dataclass
class Hit:
    host: str
    name: str
    arrived: float  # time.monotonic() in the server (the test's process)
    left: float | None = None
    status: int | None = None


class CountingWeb:
    """A loopback HTTP server on one address that records every request and counts, per Host, the requests
    in flight. ``/img/NAME?hold=S`` answers a small synthetic JPEG after S seconds (or stops early when the
    client goes away); with ``rate_limit(N)`` the first request gets 429 ``Retry-After: N`` and so does every
    request arriving in the N seconds after it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.lock = threading.Lock()
        self.hits: list[Hit] = []
        self.in_flight: dict[str, int] = defaultdict(int)
        self.most: dict[str, int] = defaultdict(int)
        self.retry_after: int | None = None
        self.gate: threading.Event | None = None  # when set up: requests wait until it opens (at most 30 s)
        self.first_429: float | None = None
        self._bodies: dict[str, bytes] = {}
        self._server = ThreadingHTTPServer((address, 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1})

    def url(self, path: str) -> str:
        return f"http://{self.address}:{self._server.server_address[1]}{path}"

    def body(self, name: str) -> bytes:
        """A distinct small image per name (one picture behind many URLs would be a placeholder)."""
        with self.lock:
            if name not in self._bodies:
                self._bodies[name] = synthetic_jpeg(zlib.crc32(name.encode()) % 2048, size=(64, 64))
            return self._bodies[name]

    def rate_limit(self, seconds: int) -> None:
        self.retry_after = seconds

    def __enter__(self) -> CountingWeb:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        web = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
                parts = urlsplit(self.path)
                hold = float(parse_qs(parts.query).get("hold", ["0"])[0])
                hit = Hit(host, parts.path.rsplit("/", 1)[-1], time.monotonic())
                with web.lock:
                    web.hits.append(hit)
                    web.in_flight[host] += 1
                    web.most[host] = max(web.most[host], web.in_flight[host])
                    limited = web.retry_after is not None and (
                        web.first_429 is None or hit.arrived < web.first_429 + web.retry_after)
                    if limited and web.first_429 is None:
                        web.first_429 = hit.arrived
                try:
                    if limited:
                        self._answer(429, b"slow down", {"Retry-After": str(web.retry_after)})
                    elif self._hold(hold):
                        self._answer(200, web.body(hit.name), {"Content-Type": "image/jpeg"})
                    hit.status = 429 if limited else 200
                finally:
                    with web.lock:
                        web.in_flight[host] -= 1
                        hit.left = time.monotonic()

            def _hold(self, seconds: float) -> bool:
                """Wait for the gate, then ``seconds``, but notice a client that goes away (a killed worker):
                False then."""
                if web.gate is not None:
                    deadline = time.monotonic() + 30
                    while not web.gate.is_set() and time.monotonic() < deadline:
                        if self._client_gone(0.05):
                            return False
                deadline = time.monotonic() + seconds
                while (left := deadline - time.monotonic()) > 0:
                    if self._client_gone(min(left, 0.05)):
                        return False
                return True

            def _client_gone(self, wait: float) -> bool:
                readable, _, _ = select.select([self.connection], [], [], wait)
                return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture()
def webs() -> Iterator[dict[str, CountingWeb]]:
    """One counting server per loopback address (the crawl's hosts are 127.0.0.2, 127.0.0.3, ...)."""
    servers: dict[str, CountingWeb] = {}
    try:
        for n in range(2, 7):
            address = f"127.0.0.{n}"
            servers[address] = CountingWeb(address).__enter__()
        yield servers
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)


class Workers:
    """``refwatch crawl`` child processes, each a worker of run "shared" with its own output folder; any
    still running when the test ends is killed."""

    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.tmp_path = tmp_path
        self.redis_url = redis_url
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, name: str, urls: list[str], *extra: str) -> subprocess.Popen[str]:
        folder = self.tmp_path / name
        folder.mkdir()
        snapshot = write_snapshot(folder / "snapshot.csv", [(f"{name}-{i}", url) for i, url in enumerate(urls)])
        args = ["crawl", str(snapshot), "--out", str(folder / "out"), "--run-id", "shared",
                "--allow-private-networks", "--json", "--no-progress", "--hashes", "md5", "--log-level", "INFO",
                "-s", f"REFWATCH_REDIS_URL={self.redis_url}", *extra]
        proc = crawl_in_background(args, folder, folder / "crawl.log")
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[str], name: str, timeout: float = 90) -> tuple[list, str]:
        """Wait for a worker to end; its outcome rows and log."""
        proc.wait(timeout=timeout)
        log = (self.tmp_path / name / "crawl.log").read_text()
        assert proc.returncode == 0, log[-3000:]
        return read_rows(self.tmp_path / name / "out" / "runs" / "shared"), log

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture()
def workers(tmp_path: Path, redis_server) -> Iterator[Workers]:
    crawls = Workers(tmp_path, redis_server.url)
    try:
        yield crawls
    finally:
        crawls.stop_all()


def _stat(log: str, key: str) -> float:
    """A value from Scrapy's end-of-crawl stats dump (0 when the key is absent)."""
    found = re.search(rf"'{re.escape(key)}': ([0-9.]+)", log)
    return float(found.group(1)) if found else 0.0


def _wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_workers_share_the_per_host_cap_and_a_429_backs_off_both(workers, webs) -> None:
    capped, limited, probe = webs["127.0.0.2"], webs["127.0.0.3"], webs["127.0.0.4"]
    capped.gate = threading.Event()  # the capped host answers once both workers are up: they want it at once
    limited.rate_limit(3)
    shared = ["--per-host", "6", "--retries", "3", "-s", "REFWATCH_SHARED_PER_HOST=2"]

    def urls(worker: str) -> list[str]:
        return ([probe.url(f"/img/{worker}.jpg")]
                + [capped.url(f"/img/{worker}{i}.jpg?hold=0.3") for i in range(10)]
                + [limited.url(f"/img/{worker}{i}.jpg?hold=0.1") for i in range(5)])

    procs = {name: workers.start(name, urls(name), *shared) for name in ("a", "b")}
    _wait_for(lambda: {h.name for h in probe.hits} == {"a.jpg", "b.jpg"}, 25, "both workers to start")
    capped.gate.set()
    results = {name: workers.finish(proc, name) for name, proc in procs.items()}

    # Both workers wanted the capped host at once, yet never more than 2 requests were in flight; and with
    # both waiting, the slots went round rather than staying with the worker that had them first.
    spans = {w: [h.arrived for h in capped.hits if h.name.startswith(w)] for w in ("a", "b")}
    assert len(spans["a"]) == len(spans["b"]) == 10
    assert min(spans["a"]) < max(spans["b"]) and min(spans["b"]) < max(spans["a"])
    assert capped.most["127.0.0.2"] == 2  # the shared cap, reached and never passed (the local one is 6)

    # After the first 429 (Retry-After: 3), no worker touched the host for 3 s, but a request that already held
    # its slot when the 429 came back (at most cap - 1 of them, within moments).
    assert limited.first_429 is not None
    window = [h for h in limited.hits if limited.first_429 < h.arrived < limited.first_429 + 3]
    assert len(window) <= 1 and all(h.arrived < limited.first_429 + 1.0 for h in window), window
    assert any(h.status == 200 and h.arrived >= limited.first_429 + 3 for h in limited.hits)

    for name, (rows, log) in results.items():
        assert len(rows) == 16 and {r["outcome"] for r in rows} == {"ok"}, (name, rows)
    logs = [log for _, log in results.values()]
    assert sum(_stat(log, "refwatch/politeness/waits") for log in logs) > 0
    assert sum(_stat(log, "refwatch/politeness/wait_seconds") for log in logs) >= 2.5  # the back-off, at least
    assert sum(_stat(log, "refwatch/politeness/backoffs") for log in logs) >= 1
    assert not any(_stat(log, "refwatch/politeness/unguarded") for log in logs)


def test_a_killed_workers_slots_come_back_within_one_lease(workers, webs) -> None:
    host, probe = webs["127.0.0.4"], webs["127.0.0.5"]
    lease = 4.0
    shared = ["--per-host", "6", "--timeout", "60", "-s", "REFWATCH_SHARED_PER_HOST=2",
              "-s", f"REFWATCH_POLITENESS_LEASE={lease}"]
    holder = workers.start("a", [host.url(f"/img/a{i}.jpg?hold=50") for i in range(2)], *shared)
    _wait_for(lambda: host.in_flight["127.0.0.4"] == 2, 60, "the holder's two slow downloads")
    waiter = workers.start("b", [probe.url("/img/probe.jpg")] + [host.url(f"/img/b{i}.jpg") for i in range(3)],
                           *shared)
    _wait_for(lambda: probe.hits, 60, "the second worker to start")
    # The holder's downloads outlast its lease: its renewals keep the slots, so the other worker waits.
    time.sleep(lease * 1.5)
    assert not [h for h in host.hits if h.name.startswith("b")]
    killed_at = time.monotonic()
    holder.send_signal(signal.SIGKILL)  # no release, no goodbye: only the lease gives the slots back
    holder.wait(timeout=10)
    rows, log = workers.finish(waiter, "b")
    first = min(h.arrived for h in host.hits if h.name.startswith("b"))
    assert killed_at + 0.5 < first <= killed_at + lease + 2.0  # not freed by the kill itself; within a lease
    assert len(rows) == 4 and {r["outcome"] for r in rows} == {"ok"}
    assert _stat(log, "refwatch/politeness/waits") >= 3


def test_redis_lost_mid_crawl_falls_back_to_local_limits_then_recovers(workers, redis_server, webs) -> None:
    host = webs["127.0.0.6"]
    # Three requests at a time in all, so that some reach the middleware after Redis is back.
    proc = workers.start("a", [host.url(f"/img/a{i}.jpg?hold=0.4") for i in range(24)], "--per-host", "3",
                         "--concurrency", "3", "-s", "REFWATCH_SHARED_PER_HOST=1",
                         "-s", "REFWATCH_POLITENESS_RETRY_REDIS=1")
    _wait_for(lambda: host.hits, 60, "the first request")
    redis_server.kill()  # the first request's slot is in its append-only file: a restart brings it back...
    log_path = workers.tmp_path / "a" / "crawl.log"
    _wait_for(lambda: "shared politeness: Redis failed" in log_path.read_text(), 30, "the fallback")
    _wait_for(lambda: host.in_flight["127.0.0.6"] >= 2, 30, "requests under the local limit")
    _wait_for(lambda: host.hits[0].left is not None, 30, "the first request's answer")
    time.sleep(0.5)  # ...and its release failed: Redis was down
    redis_server.start()
    restarted = time.monotonic()
    rows, log = workers.finish(proc, "a")
    assert len(rows) == 24 and {r["outcome"] for r in rows} == {"ok"}  # no reference lost to the outage
    assert _stat(log, "refwatch/politeness/redis_errors") >= 1
    assert _stat(log, "refwatch/politeness/unguarded") >= 1
    assert 2 <= host.most["127.0.0.6"] <= 3  # past the shared cap of 1 while Redis was gone; the local fence held
    assert "shared politeness: Redis answers again" in log
    # The slot whose release failed during the outage went back once Redis answered: the host was not held
    # for that slot's lease (DOWNLOAD_TIMEOUT + 10 = 40 s), and nothing is left held.
    assert max(h.arrived for h in host.hits) < restarted + 15
    assert _politeness(redis_server.url, scope="shared").holders("127.0.0.6") == 0
