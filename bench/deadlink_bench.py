"""Benchmark the dead-link path of a whole ``refwatch crawl``: dead references per second and CPU per reference.

Not a test: run it by hand from the repository root (about a minute with the defaults).

    python bench/deadlink_bench.py                      # 3,000 refs per scenario, CLI defaults (64 / 8 per host)
    python bench/deadlink_bench.py --refs 10000 --concurrency 256 --per-host 64 --retries 0
    python bench/deadlink_bench.py --stock-resolver     # Scrapy's resolver: NXDOMAIN retried RETRY_TIMES times
    python bench/deadlink_bench.py --handlers both      # refwatch's download handler and Scrapy's, interleaved
    python bench/deadlink_bench.py --handlers refwatch,noredial --rounds 3   # refused retries redialled or not

Scenarios, each one crawl in a child process (``python -m crawler.cli.main crawl ... --allow-private-networks``):

* ``refused``: every reference points at a loopback port nothing listens on (bound to port 0, then closed),
  spread over ``--hosts`` loopback addresses 127.0.0.1..K (Scrapy limits requests per host);
* ``named``: the same, to host names ``hK.loopback.test`` that the scripted resolver answers 127.0.0.K
  (connections through ``HostnameEndpoint``, as for real snapshots);
* ``mixed``: half of them, half ``/status/404`` from ``crawler.sample.web`` on 127.0.0.1 (a thread server);
* ``nxdomain``: names under ``.nxdomain.test``, answered NXDOMAIN at once by ``tests.deadlink_probe``'s scripted
  resolver (refwatch's resolver with a scripted system call), ``--names`` distinct names.
* ``floor``: not refwatch: ``bench/scrapy_floor.py``, Scrapy's engine, scheduler, downloader and scraper alone
  over the same number of references, each request failing in a handler that does nothing: what one Scrapy
  request costs before any middleware, socket or DNS, the limit of any crawl that makes a request a reference.

Wall time and CPU come from ``os.wait4`` on the crawl (start-up included; ``refs/s*`` is the summary's rate,
from the engine's start). What bounds each scenario, measured on the 2-core machine: with Scrapy's stock
handler (``--handlers stock``), a refused connection reaches Scrapy only when Twisted's ``HostnameEndpoint``
next iterates its endpoint list, 0.3 s (``attemptDelay``) after the attempt, so refused references are
bounded by concurrency / (0.3 s x attempts) rather than by CPU; refwatch's handler (crawler/download)
removes that wait, and every scenario is bounded by CPU.
Every server started here is stopped; every crawl has a deadline (``--timeout``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_snapshot(path: Path, urls: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "URL"])
        writer.writerows((f"r{i}", url) for i, url in enumerate(urls))
    return path


STOCK_HANDLERS = json.dumps({s: "scrapy.core.downloader.handlers.http11.HTTP11DownloadHandler"
                             for s in ("http", "https")})


#: What each ``--handlers`` name adds to the crawl command.
HANDLER_SETTINGS = {"refwatch": [], "noredial": ["-s", "REFWATCH_REDIAL_REFUSED=False"],
                    "stock": ["-s", f"DOWNLOAD_HANDLERS={STOCK_HANDLERS}"]}


def crawl(snapshot: Path, out: Path, args: argparse.Namespace, extra: list[str]) -> dict[str, float]:
    cmd = [sys.executable, "-m", "crawler.cli.main", "crawl", str(snapshot), "--out", str(out), "--run-id", "b",
           "--allow-private-networks", "--json", "--no-progress", "--timeout", "10",
           "--concurrency", str(args.concurrency), "--per-host", str(args.per_host), *extra]
    if args.retries is not None:
        cmd += ["--retries", str(args.retries)]
    if args.stock_resolver:
        cmd += ["-s", "TWISTED_DNS_RESOLVER=scrapy.resolver.CachingThreadedResolver"]
    wall, cpu = run_child(cmd, out.parent / f"{out.name}.log", args.timeout)
    summary = json.loads((out / "runs" / "b" / "summary.json").read_text())
    refs = summary["references"]
    return {"refs": refs, "wall": wall, "rate": refs / wall, "engine_rate": summary["refs_per_second"],
            "cpu_ms": 1000 * cpu / refs, "outcomes": summary["outcomes"]}


def scrapy_floor(snapshot: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """bench/scrapy_floor.py over the same references: Scrapy's own cost of a request that fails at once."""
    cmd = [sys.executable, str(REPO / "bench" / "scrapy_floor.py"), str(snapshot), str(args.concurrency),
           str(args.per_host)]
    wall, cpu = run_child(cmd, out.parent / f"{out.name}.log", args.timeout, stdout=out.parent / f"{out.name}.json")
    result = json.loads((out.parent / f"{out.name}.json").read_text().strip().splitlines()[-1])
    refs = result["references"]
    return {"refs": refs, "wall": wall, "rate": refs / wall, "engine_rate": refs / result["seconds"],
            "cpu_ms": 1000 * cpu / refs, "outcomes": {"errback": refs}}


def run_child(cmd: list[str], log_path: Path, timeout: float, stdout: Path | None = None) -> tuple[float, float]:
    """Run ``cmd`` to its end (killed past ``timeout``): its wall seconds and CPU seconds (``os.wait4``)."""
    start = time.monotonic()
    with open(log_path, "w") as log, open(stdout or os.devnull, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=log)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise SystemExit(f"{cmd[1]} exceeded {timeout} s; log in {log_path}")
            time.sleep(0.05)
    if status != 0:
        raise SystemExit(f"{cmd[1]} failed ({status}); log in {log_path}")
    return time.monotonic() - start, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--refs", type=int, default=3000)
    parser.add_argument("--hosts", type=int, default=16, help="loopback hosts for refused references")
    parser.add_argument("--names", type=int, default=1000, help="distinct NXDOMAIN names")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--per-host", type=int, default=8)
    parser.add_argument("--retries", type=int, default=None, help="crawl --retries (default: the CLI's, 2)")
    parser.add_argument("--stock-resolver", action="store_true", help="Scrapy's CachingThreadedResolver")
    parser.add_argument("--scenarios", default="refused,named,mixed,nxdomain,floor")
    parser.add_argument("--handlers", default="refwatch",
                        help="comma-separated, run in turn: refwatch (crawler/download), noredial (the same without "
                             "redialling refused connections: Scrapy retries them), stock (Scrapy's handler); "
                             "both = refwatch,stock")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the scenarios, interleaved (default 1)")
    parser.add_argument("--timeout", type=float, default=170.0, help="kill a crawl after this many seconds")
    args = parser.parse_args()

    from crawler.sample.web import SampleWeb

    port = closed_port()
    refused = [f"http://127.0.0.{1 + i % args.hosts}:{port}/{i}.jpg" for i in range(args.refs)]
    handlers = ["refwatch", "stock"] if args.handlers == "both" else args.handlers.split(",")
    unknown = set(handlers) - set(HANDLER_SETTINGS)
    if unknown:
        parser.error(f"--handlers: unknown {', '.join(sorted(unknown))}")
    print(f"{'scenario':10} {'handler':8} {'refs':>6} {'wall s':>7} {'refs/s':>7} {'refs/s*':>8} "
          f"{'CPU ms/ref':>10}  outcomes")
    with tempfile.TemporaryDirectory(prefix="deadlink-bench-") as tmp, SampleWeb() as web:
        for scenario in [name for _ in range(args.rounds) for name in args.scenarios.split(",")]:
            extra: list[str] = []
            if scenario == "refused":
                urls = refused
            elif scenario == "named":
                urls = [f"http://h{1 + i % args.hosts}.loopback.test:{port}/{i}.jpg" for i in range(args.refs)]
                extra = ["-s", "TWISTED_DNS_RESOLVER=tests.deadlink_probe.ScriptedResolver"]
                if args.stock_resolver:
                    print("named: skipped with --stock-resolver (it would ask the system resolver)")
                    continue
            elif scenario == "mixed":
                urls = [u if i % 2 else web.url(f"/status/404?{i}") for i, u in enumerate(refused)]
            elif scenario == "floor":
                snapshot = write_snapshot(Path(tmp) / "floor.csv", refused)
                r = scrapy_floor(snapshot, Path(tmp) / "floor", args)
                print(f"{scenario:10} {'scrapy':8} {r['refs']:>6} {r['wall']:>7.1f} {r['rate']:>7.0f} "
                      f"{r['engine_rate']:>8.0f} {r['cpu_ms']:>10.2f}  {r['outcomes']}")
                continue
            elif scenario == "nxdomain":
                urls = [f"http://h{i % args.names}.nxdomain.test/{i}.jpg" for i in range(args.refs)]
                extra = ["-s", "TWISTED_DNS_RESOLVER=tests.deadlink_probe.ScriptedResolver"]
                if args.stock_resolver:
                    print("nxdomain: skipped with --stock-resolver (it would ask the system resolver)")
                    continue
            else:
                raise SystemExit(f"unknown scenario {scenario!r}")
            snapshot = write_snapshot(Path(tmp) / f"{scenario}.csv", urls)
            for handler in handlers:
                more = HANDLER_SETTINGS[handler]
                r = crawl(snapshot, Path(tmp) / f"{scenario}-{handler}", args, extra + more)
                seen = {k: v for k, v in r["outcomes"].items() if v}
                print(f"{scenario:10} {handler:8} {r['refs']:>6} {r['wall']:>7.1f} {r['rate']:>7.0f} "
                      f"{r['engine_rate']:>8.0f} {r['cpu_ms']:>10.2f}  {seen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
