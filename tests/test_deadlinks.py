"""Dead links at full speed: a burst of fast failures does not wait for the engine's heartbeat, a name that
does not exist is one attempt, and transient failures keep their bounded retries. Loopback only: refused
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

from crawler.sample.web import SampleWeb
from middlewares.resolver import NoSuchHostError, lookup_ipv4
from tests.helpers import REPO_ROOT
from tests.test_crawl_e2e import read_rows, write_snapshot


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


def test_refused_burst_is_fed_without_waiting_for_heartbeats(tmp_path: Path) -> None:
    port = closed_port()
    refs = 130  # two windows of 64 and a bit: with one window a heartbeat, the last one waits for the 3rd
    snapshot = write_snapshot(tmp_path / "s.csv", [(f"r{i}", f"http://127.0.0.1:{port}/{i}.jpg") for i in range(refs)])
    probe, rows = probe_crawl(tmp_path, snapshot, CONCURRENT_REQUESTS="64", CONCURRENT_REQUESTS_PER_DOMAIN="64")
    assert len(rows) == refs
    assert {row["outcome"] for row in rows.values()} == {"connection_error"}
    stats = probe["stats"]
    assert stats["retry/count"] == 2 * refs  # refused connections are transient: RETRY_TIMES (2) retries each
    # The engine's heartbeat ticks once when it starts: every reference was requested before the next tick
    # (5 s later), so none waited for the heartbeat to be fed.
    assert probe["heartbeats_at_last_request"] <= 1, probe


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
