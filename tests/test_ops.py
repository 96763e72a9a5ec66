"""The operator's view: two ``refwatch worker`` processes crawl a seeded run while a real Prometheus
(Debian's ``prometheus``) scrapes both on loopback; Prometheus's HTTP API then answers the dashboard's
questions — fetch rate, outcome mix, shard progress — and every worker metric that deploy/'s rules and
dashboard use is one a running worker exports."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, free_port
from tests.test_deploy import WORKER_ONLY_METRICS
from tests.test_distributed import _seed, _snapshot

pytestmark = pytest.mark.timeout(300)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _query(base: str, expr: str) -> list[dict]:
    data = json.loads(_get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert data["status"] == "success", data
    return data["data"]["result"]


def _start_prometheus(tmp_path: Path, targets: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    assert Path(binary).exists(), "prometheus is missing: ./setup.sh installs Debian's prometheus package"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: refwatch-worker\n"
        f"    static_configs: [{{targets: [{', '.join(repr(t) for t in targets)}]}}]\n", encoding="utf-8")
    port = free_port()
    process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                               stderr=(tmp_path / "prometheus.log").open("wb"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if "Ready" in _get(f"{base}/-/ready"):
                return process, base
        except OSError:
            time.sleep(0.2)
    process.kill()
    pytest.fail("prometheus did not become ready in 30 s: " + (tmp_path / "prometheus.log").read_text()[-2000:])


def test_prometheus_scrapes_two_workers_through_a_run(redis_server, web, tmp_path: Path) -> None:
    snapshot = _snapshot(web, tmp_path / "snap.parquet", 48, slow_every=6)
    out = tmp_path / "out"
    ports = [free_port(), free_port()]
    prometheus, base = _start_prometheus(tmp_path, [f"127.0.0.1:{p}" for p in ports])
    workers = [subprocess.Popen([sys.executable, "-m", "crawler.cli.main", "worker", "--redis", redis_server.url,
                                 "--processes", "1", "--lease", "5", "--metrics-port", str(port),
                                 "--metrics-address", "127.0.0.1"], cwd=REPO_ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for port in ports]
    try:
        # Seed once Prometheus holds both idle workers' counters at 0: a rate needs a sample from before the
        # fetches, and a run of 48 references can end before Prometheus's first scrape of a new worker.
        deadline = time.monotonic() + 60
        while len(_query(base, "refwatch_fetches_total{outcome='ok'} == 0")) < 2:
            if time.monotonic() > deadline:
                pytest.fail("Prometheus did not scrape both idle workers in 60 s")
            time.sleep(0.5)
        _seed(redis_server.url, snapshot, out, "ops")
        names_seen: set[str] = set()
        manifest = out / "runs" / "ops" / "manifest.json"
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            for port in ports:  # what a running worker exports, while it crawls
                try:
                    names_seen |= {line.split("{")[0].split(" ")[0] for line in
                                   _get(f"http://127.0.0.1:{port}/metrics").splitlines()
                                   if line.startswith("refwatch_")}
                except OSError:
                    pass
            if manifest.exists() and json.loads(manifest.read_text())["status"] == "finished":
                break
            time.sleep(0.5)
        else:
            pytest.fail("the run did not finish in 200 s")
        time.sleep(3)  # two more scrapes of the final counters
        missing = {n for n in WORKER_ONLY_METRICS if n not in names_seen}
        assert not missing, f"deploy/ uses worker metrics no running worker exported: {sorted(missing)}"
        up = _query(base, 'up{job="refwatch-worker"}')
        assert sorted(r["value"][1] for r in up) == ["1", "1"]
        mix = {r["metric"]["outcome"]: float(r["value"][1]) for r in
               _query(base, "sum by (outcome) (refwatch_fetches_total)")}
        not_found = sum(1 for i in range(48) if i % 6 and i % 5 == 3)  # _snapshot's 404s
        assert mix["not_found"] == not_found == 8 and mix["ok"] == 40 and sum(mix.values()) == 48
        per_worker = _query(base, "sum by (instance) (refwatch_fetches_total)")
        assert len(per_worker) == 2 and all(float(r["value"][1]) > 0 for r in per_worker)  # both crawled
        # windows of many scrapes: under load, scrapes come late and a worker's counters move every 2 s
        rate = _query(base, "max_over_time(sum(rate(refwatch_fetches_total[30s]))[5m:1s])")
        assert float(rate[0]["value"][1]) > 0
        planned = _query(base, 'max(max_over_time(refwatch_shards{run_id="ops",state="planned"}[2m]))')
        assert float(planned[0]["value"][1]) == 6  # exported while the run was active
        attempts = _query(base, 'sum(refwatch_shard_attempts_total{result="committed"})')
        assert float(attempts[0]["value"][1]) == 6
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.communicate()
        prometheus.terminate()
        try:
            prometheus.wait(timeout=30)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait()
