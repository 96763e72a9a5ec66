"""Dead links at full speed: a burst of fast failures does not wait for the engine's heartbeat nor for
Twisted's connection attempt delay (crawler/download), a name that does not exist is one attempt, and
transient failures keep their bounded retries. Loopback only: refused
connections go to a loopback port nothing listens on, DNS answers come from ``tests.deadlink_probe``'s
scripted resolver (real resolver, scripted system call)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scrapy.resolver import dnscache
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from twisted.web.error import SchemeNotSupported

from crawler.download.handler import ATTEMPT_DELAY, REDIALS_STAT, FastEndpointFactory
from crawler.download.redial import RedialRefusedEndpoint, redials_left
from crawler.sample.web import SampleWeb
from middlewares.resolver import NoSuchHostError, lookup_ipv4
from spiders.replay import KNOWN_MISSING_STAT
from tests.helpers import REPO_ROOT
from tests.test_crawl_e2e import read_rows, write_snapshot


STOCK_HANDLERS = json.dumps({scheme: "scrapy.core.downloader.handlers.http11.HTTP11DownloadHandler"
                             for scheme in ("http", "https")})


def closed_port() -> int:
    """A loopback port with nothing listening: bind port 0, read it, close it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def probe_crawl(tmp_path: Path, snapshot: Path, **settings: Any) -> tuple[dict[str, Any], dict[str, dict]]:
    stats_path = tmp_path / "probe.json"
    args = [f"{k}={v}" for k, v in {
        "REFWATCH_SNAPSHOTS": json.dumps([str(snapshot)]), "REFWATCH_OUT": str(tmp_path / "out"),
        "REFWATCH_RUN_ID": "r", "REFWATCH_ALLOW_PRIVATE_NETWORKS": "1", "DOWNLOAD_TIMEOUT": "10",
        "TWISTED_DNS_RESOLVER": "tests.deadlink_probe.ScriptedResolver", **settings}.items()]
    done = subprocess.run([sys.executable, "-m", "tests.deadlink_probe", str(stats_path), *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["ref_id"]: row for row in read_rows(tmp_path / "out" / "runs" / "r")}
    return json.loads(stats_path.read_text()), rows


def test_lookup_tells_no_such_name_from_no_answer() -> None:
    def nxdomain(name: str) -> str:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def servfail(name: str) -> str:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    from twisted.internet.error import DNSLookupError

    with pytest.raises(NoSuchHostError):
        lookup_ipv4("gone.example", gethostbyname=nxdomain)
    with pytest.raises(DNSLookupError) as raised:
        lookup_ipv4("flaky.example", gethostbyname=servfail)
    assert not isinstance(raised.value, NoSuchHostError)
    with pytest.raises(NoSuchHostError):
        lookup_ipv4("a..b")  # IDNA rejects an empty label: no resolver is asked


def test_refused_burst_is_not_paced_by_heartbeats_nor_the_attempt_delay(tmp_path: Path) -> None:
    port = closed_port()
    refs = 130  # two windows of 64 and a bit: with one window a heartbeat, the last one waits for the 3rd
    # Half to an IP literal, half to names the scripted resolver answers (127.0.0.K): both connection paths.
    urls = [f"http://127.0.0.1:{port}/{i}.jpg" if i % 2 else f"http://h{1 + i % 4}.loopback.test:{port}/{i}.jpg"
            for i in range(refs)]
    snapshot = write_snapshot(tmp_path / "s.csv", [(f"r{i}", url) for i, url in enumerate(urls)])
    probe, rows = probe_crawl(tmp_path, snapshot, CONCURRENT_REQUESTS="64", CONCURRENT_REQUESTS_PER_DOMAIN="64")
    assert len(rows) == refs
    assert {row["outcome"] for row in rows.values()} == {"connection_error"}
    stats = probe["stats"]
    assert stats["retry/count"] == 2 * refs  # refused connections are transient: RETRY_TIMES (2) retries each
    # ...dialled again inside the download: one trip through Scrapy's scheduler per reference, not three
    assert stats[REDIALS_STAT] == 2 * refs
    assert stats["scheduler/enqueued"] == refs
    assert stats["retry/max_reached"] == refs  # RetryMiddleware saw the retries spent and gave up
    # The engine's heartbeat ticks once when it starts: every reference was requested before the next tick
    # (5 s later), so none waited for the heartbeat to be fed.
    assert probe["heartbeats_at_last_request"] <= 1, probe
    # No attempt went through HostnameEndpoint's attempt loop, so no failure waited for its attempt delay
    # (with Scrapy's handler: 2 ticks an attempt, the second 0.3 s after the first; see the next test).
    assert probe["attempt_ticks"] == 0, probe


def test_stock_handler_is_paced_by_the_attempt_delay(tmp_path: Path) -> None:
    """The control for the test above: the probe does see the attempt loop of Scrapy's own handler."""
    port = closed_port()
    refs = 4
    snapshot = write_snapshot(tmp_path / "s.csv", [(f"r{i}", f"http://127.0.0.{1 + i}:{port}/{i}.jpg")
                                                   for i in range(refs)])
    probe, rows = probe_crawl(tmp_path, snapshot, DOWNLOAD_HANDLERS=STOCK_HANDLERS)
    assert {row["outcome"] for row in rows.values()} == {"connection_error"}
    assert probe["stats"]["retry/count"] == 2 * refs
    assert probe["attempt_ticks"] >= 2 * 3 * refs, probe  # each of the 3 attempts: a tick, then one more


def test_uncached_names_still_race_their_addresses(tmp_path: Path) -> None:
    """Without Scrapy's DNS cache, a name goes through HostnameEndpoint (with refwatch's short attempt delay):
    the same outcome and retries."""
    port = closed_port()
    refs = 3
    snapshot = write_snapshot(tmp_path / "s.csv", [(f"r{i}", f"http://h{1 + i}.loopback.test:{port}/{i}.jpg")
                                                   for i in range(refs)])
    probe, rows = probe_crawl(tmp_path, snapshot, DNSCACHE_ENABLED="False")
    assert {row["outcome"] for row in rows.values()} == {"connection_error"}
    assert probe["stats"]["retry/count"] == 2 * refs
    assert probe["attempt_ticks"] >= 2 * 3 * refs, probe


def test_endpoints_connect_at_once_where_there_is_one_address() -> None:
    factory = FastEndpointFactory(MemoryReactorClock(), BrowserLikePolicyForHTTPS(), 7.0, None)
    literal = factory.endpointForURI(URI.fromBytes(b"http://127.0.0.1:81/a.jpg"))
    assert isinstance(literal, TCP4ClientEndpoint) and literal._timeout == 7.0
    assert isinstance(factory.endpointForURI(URI.fromBytes(b"http://[::1]:81/a.jpg")), TCP6ClientEndpoint)
    dnscache["cached.loopback.test"] = "127.0.0.7"  # what refwatch's resolver leaves for a resolved name
    try:
        cached = factory.endpointForURI(URI.fromBytes(b"http://cached.loopback.test:81/a.jpg"))
        assert isinstance(cached, TCP4ClientEndpoint) and cached._host == "127.0.0.7"
        tls = factory.endpointForURI(URI.fromBytes(b"https://cached.loopback.test/a.jpg"))
        assert isinstance(tls._wrappedEndpoint, TCP4ClientEndpoint)  # TLS over the same direct connection
    finally:
        del dnscache["cached.loopback.test"]
    named = factory.endpointForURI(URI.fromBytes(b"http://uncached.loopback.test/a.jpg"))
    assert isinstance(named, HostnameEndpoint) and named._attemptDelay == ATTEMPT_DELAY  # resolve and race
    with pytest.raises(SchemeNotSupported):
        factory.endpointForURI(URI.fromBytes(b"ftp://127.0.0.1/a.jpg"))


def test_nxdomain_is_one_attempt_refused_and_servfail_are_retried(tmp_path: Path, web: SampleWeb) -> None:
    port = closed_port()
    snapshot = write_snapshot(tmp_path / "s.csv", [
        ("nx1", "http://gone.nxdomain.test/a.jpg"),
        ("nx2", "http://gone.nxdomain.test/b.jpg"),  # the same dead name: answered from the negative cache
        ("nx3", "http://other.nxdomain.test/c.jpg"),
        ("servfail", "http://flaky.servfail.test/d.jpg"),
        ("refused", f"http://127.0.0.1:{port}/e.jpg"),
        ("found", web.url("/status/404")),
    ])
    probe, rows = probe_crawl(tmp_path, snapshot, RETRY_TIMES="2")
    outcomes = {ref: row["outcome"] for ref, row in rows.items()}
    assert outcomes == {"nx1": "dns_error", "nx2": "dns_error", "nx3": "dns_error", "servfail": "dns_error",
                        "refused": "connection_error", "found": "not_found"}
    assert "NoSuchHostError" in rows["nx1"]["error"]
    stats = probe["stats"]
    assert stats["refwatch/dns_no_such_host"] == 3
    assert stats["retry/count"] == 2 + 2  # servfail and refused: RETRY_TIMES each; the NXDOMAIN names: none
    assert stats["retry/max_reached"] == 2


def test_references_to_a_name_known_not_to_exist_end_without_a_request(tmp_path: Path, web: SampleWeb) -> None:
    """After the first NXDOMAIN answer for a name, its other references are ended by the spider from the
    resolver's negative cache: same outcome and error text as the first, no scheduler or downloader."""
    refs = [(f"nx{i}", f"http://gone.nxdomain.test/{i}.jpg") for i in range(40)]
    refs.append(("alive", web.url("/status/404")))
    snapshot = write_snapshot(tmp_path / "s.csv", refs)
    probe, rows = probe_crawl(tmp_path, snapshot, CONCURRENT_REQUESTS="2")
    assert {rows[ref]["outcome"] for ref, _ in refs[:-1]} == {"dns_error"}
    assert rows["alive"]["outcome"] == "not_found"
    errors = {rows[ref]["error"] for ref, _ in refs[:-1]}  # the cache's error reads as the look-up's
    assert errors == {"NoSuchHostError: DNS lookup failed: address 'gone.nxdomain.test' not found: "
                      "Name or service not known."}
    stats = probe["stats"]
    assert stats["refwatch/dns_no_such_host"] == 40
    skipped = stats[KNOWN_MISSING_STAT]
    assert 30 <= skipped <= 39  # all but the few requested before the first answer came back
    assert stats["scheduler/enqueued"] == 41 - skipped


class _ScriptedEndpoint:
    """An endpoint whose dials fail with the scripted errors, then succeed; counts its dials."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.dials = 0

    def connect(self, protocolFactory: object) -> Deferred[str]:
        self.dials += 1
        return fail(self.errors.pop(0)) if self.errors else succeed("connected")


def _outcome(d: Deferred[str]) -> object:
    results: list[object] = []
    d.addBoth(results.append)
    assert results, "the dial should have finished"
    return results[0]


def test_refused_dials_are_redialled_within_the_download_up_to_the_retries_left() -> None:
    inner = _ScriptedEndpoint(ConnectionRefusedError(), ConnectionRefusedError())
    redials: list[int] = []
    assert _outcome(RedialRefusedEndpoint(inner, 2, lambda: redials.append(1)).connect(None)) == "connected"
    assert (inner.dials, len(redials)) == (3, 2)

    inner = _ScriptedEndpoint(*[ConnectionRefusedError()] * 3)
    result = _outcome(RedialRefusedEndpoint(inner, 2).connect(None))
    assert isinstance(result, Failure) and result.check(ConnectionRefusedError)
    assert inner.dials == 3  # the first dial and two more, then the refusal goes to RetryMiddleware

    inner = _ScriptedEndpoint(TimeoutError(), ConnectionRefusedError())  # only refusals are redialled
    result = _outcome(RedialRefusedEndpoint(inner, 2).connect(None))
    assert isinstance(result, Failure) and result.check(TimeoutError) and inner.dials == 1
    result.trap(TimeoutError)


def test_redials_spend_the_retries_retry_middleware_would_give() -> None:
    assert redials_left({}, True, 2) == 2
    assert redials_left({"retry_times": 1}, True, 2) == 1  # a retry (e.g. of a 503) already spent one
    assert redials_left({"retry_times": 2}, True, 2) == 0
    assert redials_left({"max_retry_times": 5}, True, 2) == 5
    assert redials_left({"dont_retry": True}, True, 2) == 0
    assert redials_left({}, False, 2) == 0  # RETRY_ENABLED off
