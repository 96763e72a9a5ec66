"""The address allow-list (``--allow-network CIDR``) and the check made where the address is chosen.

Real HTTP servers on loopback (127.0.0.1, 127.0.0.2, and ::1 when this machine has it; Linux routes all of
127/8 to ``lo``) count every connection they accept, so "refused before any connection" is observed, not
assumed. Host names are answered by ``ScriptedResolver`` below (refwatch's real resolver with a scripted
system call, named with ``-s TWISTED_DNS_RESOLVER``): no /etc/hosts, no DNS traffic. Images are synthetic.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scrapy.http import Request
from scrapy.resolver import dnscache
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.web.client import URI, BrowserLikePolicyForHTTPS

from crawler.addresses import AddressPolicy, BlockedAddressError, address_policy, parse_network
from crawler.download.handler import CheckedHostnameEndpoint, FastEndpointFactory, RefusedEndpoint
from middlewares.address_guard import AddressGuardMiddleware
from middlewares.resolver import RefwatchResolver, lookup_ipv4
from tests.helpers import run_refwatch


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="this machine has no IPv6 loopback (::1)")


# --- the scripted resolver (imported by the crawl's child process) ----------------------------------------

#: Lookups the child process made, one name a line, appended to this file (so a test can count them).
LOOKUP_LOG_ENV = "REFWATCH_TEST_LOOKUP_LOG"
_answers_given: dict[str, int] = {}


def scripted_gethostbyname(name: str) -> str:
    """``hK.loopback.test``: 127.0.0.K; ``metadata.test``: the cloud metadata address; ``private.test``: 10.0.0.1;
    ``rebind.test``: 127.0.0.1 the first time, 127.0.0.2 after (DNS rebinding). Anything else: no such name."""
    if os.environ.get(LOOKUP_LOG_ENV):
        with open(os.environ[LOOKUP_LOG_ENV], "a", encoding="utf-8") as log:
            log.write(name + "\n")
    label = name.split(".")[0]
    if name.endswith(".loopback.test") and label[1:].isdigit():
        return f"127.0.0.{int(label[1:])}"
    fixed = {"metadata.test": "169.254.169.254", "private.test": "10.0.0.1"}
    if name in fixed:
        return fixed[name]
    if name == "rebind.test":
        _answers_given[name] = _answers_given.get(name, 0) + 1
        return "127.0.0.1" if _answers_given[name] == 1 else "127.0.0.2"
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


class ScriptedResolver(RefwatchResolver):
    def __init__(self, reactor: Any, cache_size: int, timeout: float) -> None:
        super().__init__(reactor, cache_size, timeout,
                         lookup=partial(lookup_ipv4, gethostbyname=scripted_gethostbyname))


# --- servers that count connections ------------------------------------------------------------------------

def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


class _Handler(BaseHTTPRequestHandler):
    """``/img/<seed>.png``: a synthetic PNG; ``/to?url=U``: a 302 redirect to ``U``."""

    server: CountingServer
    protocol_version = "HTTP/1.0"  # one request a connection: connections and requests count alike

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parts = urlsplit(self.path)
        self.server.paths.append(parts.path)
        if parts.path == "/to":
            self.send_response(302)
            self.send_header("Location", parse_qs(parts.query)["url"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if parts.path.startswith("/img/") and parts.path.endswith(".png"):
            body = _png(int(parts.path[5:-4]))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
        else:
            body = b"not here"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), _Handler)
        self.connections = 0
        self.paths: list[str] = []
        self._count = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        accepted = super().get_request()
        with self._count:
            self.connections += 1
        return accepted

    def url(self, path: str) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"

    @property
    def port(self) -> int:
        return self.server_address[1]


@contextmanager
def serving(host: str) -> Iterator[CountingServer]:
    server = CountingServer(host)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def first() -> Iterator[CountingServer]:
    with serving("127.0.0.1") as server:
        yield server


@pytest.fixture
def second() -> Iterator[CountingServer]:
    with serving("127.0.0.2") as server:
        yield server


@pytest.fixture
def six() -> Iterator[CountingServer | None]:
    if not HAS_IPV6:
        yield None
        return
    with serving("::1") as server:
        yield server


def redirect(server: CountingServer, to: str) -> str:
    return server.url(f"/to?url={quote(to, safe='')}")


def crawl(tmp_path: Path, refs: dict[str, str], *options: str) -> tuple[dict[str, dict], list[str]]:
    """The real command line on ``refs`` (id -> URL); the rows by id, and the names the resolver looked up."""
    snapshot = tmp_path / "refs.csv"
    with snapshot.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "URL"])
        writer.writerows(refs.items())
    lookups = tmp_path / "lookups.txt"
    lookups.write_text("")
    done = run_refwatch("crawl", str(snapshot), "--out", str(tmp_path / "out"), "--run-id", "r", "--json",
                        "--no-progress", "--timeout", "5", "--retries", "0",
                        "-s", "TWISTED_DNS_RESOLVER=tests.test_allowlist.ScriptedResolver", *options,
                        env={LOOKUP_LOG_ENV: str(lookups)})
    assert done.returncode == 0, done.stderr[-3000:]
    rows: dict[str, dict] = {}
    for part in sorted((tmp_path / "out" / "runs" / "r" / "outcomes").glob("part-*.parquet")):
        rows.update({row["ref_id"]: row for row in pq.read_table(part).to_pylist()})
    assert set(rows) == set(refs)
    return rows, lookups.read_text().split()


def outcomes(rows: dict[str, dict]) -> dict[str, str]:
    return {ref: row["outcome"] for ref, row in rows.items()}


# --- the policy: pure ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("networks", "address", "permitted"),
    [
        ((), "93.184.216.34", True),
        ((), "127.0.0.1", False),
        ((), "2001:db8::1", False),  # documentation range: not public
        (("127.0.0.0/8",), "127.0.0.2", True),
        (("127.0.0.1/32",), "127.0.0.2", False),
        (("127.0.0.1/32",), "::ffff:127.0.0.1", True),  # IPv4-mapped: the same host
        (("127.0.0.1/32",), "::ffff:127.0.0.2", False),
        (("127.0.0.0/8",), "10.0.0.1", False),
        (("127.0.0.0/8",), "169.254.169.254", False),
        (("10.20.0.0/16",), "10.20.3.4", True),
        (("10.20.0.0/16",), "10.21.0.1", False),
        (("::1/128",), "::1", True),
        (("::1/128",), "127.0.0.1", False),
        (("fd00::/8",), "fd12:3456::1", True),
        (("fd00::/8",), "fe80::1", False),
        (("2001:db8::/32",), "2001:db8::1", True),
        (("10.0.0.0/8",), "not-an-address", False),
    ],
)
def test_policy_allows_public_addresses_and_the_allowed_networks_only(
        networks: tuple[str, ...], address: str, permitted: bool) -> None:
    policy = address_policy(False, networks)
    assert policy.permits(address) is permitted
    assert (policy.refusal("host.example", address) is None) is permitted


def test_refusals_say_what_the_address_is() -> None:
    policy = address_policy(False, ("127.0.0.1/32",))
    assert policy.refusal("127.0.0.2", "127.0.0.2") == (
        "127.0.0.2 is a loopback address, not public nor in an allowed network (see --allow-network)")
    assert policy.refusal("metadata.test", "169.254.169.254") == (
        "metadata.test resolves to 169.254.169.254, a link-local address, not public nor in an allowed network "
        "(see --allow-network)")
    kinds = {address: AddressPolicy().refusal(address, address) for address in
             ("10.0.0.1", "fd00::1", "fe80::1", "2001:db8::1", "100.64.0.1", "224.0.0.1", "0.0.0.0", "240.0.0.1")}
    assert {a: r.split(" is a ")[1].split(" address")[0] for a, r in kinds.items() if r} == {
        "10.0.0.1": "private", "fd00::1": "private", "fe80::1": "link-local", "2001:db8::1": "documentation",
        "100.64.0.1": "shared (carrier-grade NAT)", "224.0.0.1": "multicast", "0.0.0.0": "unspecified",
        "240.0.0.1": "reserved"}
    assert AddressPolicy(allow_all=True).refusal("x", "169.254.169.254") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [("10.0.0.0/33", "'10.0.0.0/33' is not an IP network in CIDR notation"),
     ("10.0.0.1/8", "'10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)"),
     ("fd00::1/8", "'fd00::1/8' has host bits set (did you mean fd00::/8?)"),
     ("intranet", "'intranet' is not an IP network in CIDR notation")],
)
def test_bad_networks_are_named(text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_network(text)
    assert str(raised.value).startswith(message)


def test_a_bare_address_is_one_host() -> None:
    assert str(parse_network("10.1.2.3")) == "10.1.2.3/32" and str(parse_network("::1")) == "::1/128"


# --- the guard and the endpoints: components -----------------------------------------------------------

def test_guard_judges_literals_by_the_allow_list_and_counts_refusals() -> None:
    crawler = get_crawler(settings_dict={"REFWATCH_ALLOW_NETWORKS": ["127.0.0.0/8", "::1/128"]})
    crawler.stats.open_spider()
    guard = build_from_crawler(AddressGuardMiddleware, crawler)
    for url in ("http://127.0.0.9/a.png", "http://[::1]:81/a.png", "http://93.184.216.34/a.png"):
        assert asyncio.run(guard.process_request(Request(url))) is None
    for url, kind in (("http://10.0.0.1/a.png", "private"), ("http://[2001:db8::1]/", "documentation"),
                      ("http://169.254.169.254/latest/meta-data/", "link-local"), ("http://[fe80::1]/", "link-local")):
        with pytest.raises(BlockedAddressError, match=f"a {kind} address"):
            asyncio.run(guard.process_request(Request(url)))
    assert crawler.stats.get_value("refwatch/blocked_address") == 4


def test_guard_with_private_networks_allowed_permits_everything() -> None:
    guard = build_from_crawler(AddressGuardMiddleware,
                               get_crawler(settings_dict={"REFWATCH_ALLOW_PRIVATE_NETWORKS": True}))
    assert asyncio.run(guard.process_request(Request("http://169.254.169.254/latest/"))) is None


class _ResolvingReactor(MemoryReactorClock):
    """A memory reactor (connections recorded, never made) whose resolver answers from a dict."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__()
        self.answers = answers
        self.resolved: list[str] = []

    def resolve(self, name: str, timeout: Any = ()) -> defer.Deferred[str]:
        self.resolved.append(name)
        return defer.succeed(self.answers[name])


def _connect(endpoint: Any) -> list[Any]:
    results: list[Any] = []
    endpoint.connect(Factory.forProtocol(Protocol)).addBoth(results.append)
    return results


def test_endpoints_dial_only_the_address_they_checked() -> None:
    policy = address_policy(False, ("127.0.0.1/32", "::1/128"))
    reactor = _ResolvingReactor({"rebind.test": "127.0.0.2", "six.test": "::1"})
    factory = FastEndpointFactory(reactor, BrowserLikePolicyForHTTPS(), 7.0, None, policy)
    allowed = factory.endpointForURI(URI.fromBytes(b"http://127.0.0.1:81/a.png"))
    assert isinstance(allowed, TCP4ClientEndpoint)
    assert isinstance(factory.endpointForURI(URI.fromBytes(b"http://[::1]:81/a.png")), TCP6ClientEndpoint)
    for url in (b"http://127.0.0.2:81/a.png", b"https://[2001:db8::1]/a.png", b"http://169.254.169.254/"):
        refused = factory.endpointForURI(URI.fromBytes(url))
        assert isinstance(refused, RefusedEndpoint)
        [failure] = _connect(refused)
        assert failure.check(BlockedAddressError)
    dnscache["poisoned.test"] = "10.0.0.1"  # a refused answer in the cache is refused too
    try:
        [failure] = _connect(factory.endpointForURI(URI.fromBytes(b"http://poisoned.test/a.png")))
        assert "poisoned.test resolves to 10.0.0.1, a private address" in str(failure.value)
    finally:
        del dnscache["poisoned.test"]
    # Not cached: resolved at connection time, and the address dialled is that answer, checked.
    rebound = factory.endpointForURI(URI.fromBytes(b"http://rebind.test:81/a.png"))
    assert isinstance(rebound, CheckedHostnameEndpoint)
    [failure] = _connect(rebound)
    assert failure.check(BlockedAddressError) and "rebind.test resolves to 127.0.0.2" in str(failure.value)
    assert reactor.tcpClients == []  # nothing was dialled
    _connect(factory.endpointForURI(URI.fromBytes(b"http://six.test:82/a.png")))
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("::1", 82)]
    assert reactor.resolved == ["rebind.test", "six.test"]  # one look-up each


# --- end to end: the real command line against servers that count connections ------------------------------

def test_without_an_allow_list_loopback_is_never_contacted(first: CountingServer, six: CountingServer | None,
                                                           tmp_path: Path) -> None:
    refs = {"literal": first.url("/img/1.png"), "name": f"http://h1.loopback.test:{first.port}/img/2.png"}
    if six is not None:
        refs["ipv6"] = six.url("/img/3.png")
    rows, _ = crawl(tmp_path, refs)
    assert outcomes(rows) == dict.fromkeys(refs, "blocked_address")
    assert "h1.loopback.test resolves to 127.0.0.1, a loopback address" in rows["name"]["error"]
    assert first.connections == 0 and (six is None or six.connections == 0)


def test_allowed_networks_are_fetched_and_everything_else_refused(first: CountingServer, second: CountingServer,
                                                                  six: CountingServer | None, tmp_path: Path) -> None:
    refs = {
        "literal": first.url("/img/1.png"),
        "other-loopback": second.url("/img/2.png"),
        "name": f"http://h2.loopback.test:{second.port}/img/3.png",
        "to-private": redirect(first, "http://10.0.0.1/x.png"),
        "to-metadata": redirect(first, "http://169.254.169.254/latest/meta-data/"),
    }
    options = ["--allow-network", "127.0.0.0/8"]
    if six is not None:
        refs["ipv6"] = six.url("/img/4.png")
        options += ["--allow-network", "::1/128"]
    rows, _ = crawl(tmp_path, refs, *options)
    expected = dict.fromkeys(refs, "ok") | {"to-private": "blocked_address", "to-metadata": "blocked_address"}
    assert outcomes(rows) == expected
    assert rows["literal"]["md5"] and rows["literal"]["md5"] != rows["name"]["md5"]
    assert rows["to-metadata"]["error"].startswith("BlockedAddressError: 169.254.169.254 is a link-local address")
    assert sorted(first.paths) == ["/img/1.png", "/to", "/to"]
    assert sorted(second.paths) == ["/img/2.png", "/img/3.png"]
    if six is not None:
        assert six.paths == ["/img/4.png"]


def test_redirects_from_an_allowed_host_to_refused_ones_make_no_connection(
        first: CountingServer, second: CountingServer, six: CountingServer | None, tmp_path: Path) -> None:
    refs = {
        "allowed": first.url("/img/1.png"),
        "allowed-name": f"http://h1.loopback.test:{first.port}/img/2.png",
        "allowed-name-again": f"http://h1.loopback.test:{first.port}/img/3.png",
        "to-loopback": redirect(first, second.url("/img/4.png")),
        "to-loopback-name": redirect(first, f"http://h2.loopback.test:{second.port}/img/5.png"),
        "to-mapped": redirect(first, f"http://[::ffff:127.0.0.2]:{second.port}/img/6.png"),
        "to-private": redirect(first, "http://10.0.0.1/x.png"),
        "to-private-name": redirect(first, "http://private.test/x.png"),
        "to-metadata": redirect(first, "http://169.254.169.254/latest/meta-data/"),
        "to-metadata-name": redirect(first, "http://metadata.test/latest/meta-data/"),
        "to-documentation-v6": redirect(first, "http://[2001:db8::1]/x.png"),
        "to-link-local-v6": redirect(first, "http://[fe80::1]/x.png"),
        "refused-literal": second.url("/img/7.png"),
        "refused-name": f"http://h2.loopback.test:{second.port}/img/8.png",
    }
    if six is not None:
        refs["to-ipv6-loopback"] = redirect(first, six.url("/img/9.png"))
    rows, lookups = crawl(tmp_path, refs, "--allow-network", "127.0.0.1/32")
    allowed = {"allowed", "allowed-name", "allowed-name-again"}
    assert outcomes(rows) == {ref: "ok" if ref in allowed else "blocked_address" for ref in refs}
    assert second.connections == 0 and (six is None or six.connections == 0)
    assert sorted(first.paths) == sorted(["/img/1.png", "/img/2.png", "/img/3.png"] + ["/to"] * (len(refs) - 5))
    errors = {ref: rows[ref]["error"] for ref in refs if ref not in allowed}
    assert "h2.loopback.test resolves to 127.0.0.2, a loopback address" in errors["to-loopback-name"]
    assert "metadata.test resolves to 169.254.169.254, a link-local address" in errors["to-metadata-name"]
    assert "private.test resolves to 10.0.0.1, a private address" in errors["to-private-name"]
    assert "2001:db8::1 is a documentation address" in errors["to-documentation-v6"]
    assert all(error.startswith("BlockedAddressError: ") for error in errors.values())
    # At most one look-up a request that names a host (two requests at once may both miss the cache); none for
    # literals, none for a refused name's second request when the first one's answer is cached.
    assert set(lookups) == {"h1.loopback.test", "h2.loopback.test", "metadata.test", "private.test"}
    assert len(lookups) <= 6


def test_an_answer_that_changes_before_the_connection_is_checked_again(first: CountingServer,
                                                                       second: CountingServer,
                                                                       tmp_path: Path) -> None:
    """DNS rebinding: ``rebind.test`` answers 127.0.0.1 (allowed) to the guard, then 127.0.0.2 (refused) to
    the download's own look-up. With the DNS cache off every resolution is a new look-up, as after an
    eviction between the check and the connection."""
    refs = {"rebind": f"http://rebind.test:{second.port}/img/1.png"}
    rows, lookups = crawl(tmp_path, refs, "--allow-network", "127.0.0.1/32", "-s", "DNSCACHE_ENABLED=False")
    assert outcomes(rows) == {"rebind": "blocked_address"}
    assert "refused at connection: rebind.test resolves to 127.0.0.2, a loopback address" in rows["rebind"]["error"]
    assert lookups == ["rebind.test", "rebind.test"]  # the guard's, the connection's: no third
    assert second.connections == 0 and first.connections == 0


def test_scrapy_s_own_handler_connects_to_the_rebound_address(first: CountingServer, second: CountingServer,
                                                             tmp_path: Path) -> None:
    """The control for the test above: the same crawl with Scrapy's download handler, which resolves again
    and connects without a check, reaches 127.0.0.2 — so the test above can see a connection."""
    stock = json.dumps({scheme: "scrapy.core.downloader.handlers.http11.HTTP11DownloadHandler"
                        for scheme in ("http", "https")})
    refs = {"rebind": f"http://rebind.test:{second.port}/img/1.png"}
    rows, _ = crawl(tmp_path, refs, "--allow-network", "127.0.0.1/32", "-s", "DNSCACHE_ENABLED=False",
                    "-s", f"DOWNLOAD_HANDLERS={stock}")
    assert outcomes(rows) == {"rebind": "ok"}
    assert second.connections == 1 and first.connections == 0


@pytest.mark.parametrize("network", ["10.0.0.0/33", "10.0.0.1/8", "intranet"])
def test_a_bad_network_is_one_line_and_exit_2(network: str, tmp_path: Path) -> None:
    snapshot = tmp_path / "refs.csv"
    snapshot.write_text("id,URL\na,http://127.0.0.1:9/a.png\n")
    done = run_refwatch("crawl", str(snapshot), "--out", str(tmp_path / "out"), "--allow-network", "127.0.0.0/8",
                        "--allow-network", network)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"refwatch: error: --allow-network '{network}' ")
    assert not (tmp_path / "out").exists()
