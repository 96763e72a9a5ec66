"""What a shard costs S3: every request a sharded run makes to its ``s3://`` output, counted by kind.

Not a test: run it by hand from the repository root.

    python bench/s3_requests_bench.py                          # 2,000 references, shards of 500, 2 processes
    python bench/s3_requests_bench.py --refs 8000 --shard-size 2000

It starts moto_server (a real S3 endpoint, from the test extra) behind a counting proxy on loopback and the
sample web, writes a Parquet snapshot of ``--refs`` image references (5% 404s), runs ``refwatch crawl
--processes N --shard-size S --out s3://bench/out`` through the proxy, and prints the requests by method and
by what they touched (crawl-time parts and commit markers under ``runs/<id>/shards/``, final parts, the
manifest/plan/summary, the event queue), in total and per shard. Everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from crawler.sample.web import SampleWeb  # noqa: E402
from tests.s3server import S3_TEST_ENV, FaultProxy, MotoServer, s3_environment  # noqa: E402


class CountingProxy(FaultProxy):
    """Forwards everything to moto; counts each request as (method, what it touched)."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._count_lock = threading.Lock()

    def fault_for(self, method: str, path: str) -> int | str | None:
        with self._count_lock:
            self.counts[(method, _kind(method, path))] += 1
        return super().fault_for(method, path)


def _kind(method: str, path: str) -> str:
    if "list-type" in path or (method == "GET" and path.rstrip("/").count("/") <= 1):
        return "list"
    if "/shards/" in path:
        return "commit marker" if path.split("?")[0].endswith("/commit.json") else "shard part"
    if "/outcomes/" in path:
        return "final part"
    if "/queue/" in path:
        return "event queue"
    return "manifest, plan, summary"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="refwatch-s3-bench-") as tmp, SampleWeb() as web:
        tmp_path = Path(tmp)
        moto = MotoServer(tmp_path / "moto.log").start()
        proxy = CountingProxy(moto.port).start()
        try:
            with s3_environment(moto.endpoint):
                moto.client().create_bucket(Bucket="bench")
            urls = [web.url("/status/404") if i % 20 == 7 else web.url(f"/img/{i % 500}.jpg")
                    for i in range(args.refs)]
            snapshot = tmp_path / "snap.parquet"
            pq.write_table(pa.table({"SAMPLE_ID": pa.array(range(args.refs), pa.int64()), "URL": urls}), snapshot,
                           row_group_size=1000)
            env = {**os.environ, **S3_TEST_ENV, "REFWATCH_STAGING_DIR": str(tmp_path / "staging")}
            proxy.counts.clear()
            done = subprocess.run(
                [sys.executable, "-m", "crawler.cli.main", "crawl", str(snapshot), "--out", "s3://bench/out",
                 "--s3-endpoint-url", proxy.endpoint, "--processes", str(args.processes), "--shard-size",
                 str(args.shard_size), "--allow-private-networks", "--json", "--no-progress", "--run-id", "s3bench"],
                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                print(done.stderr[-3000:])
                return 1
        finally:
            proxy.shutdown()
            proxy.server_close()
            moto.stop()
    shards = -(-args.refs // args.shard_size)
    total = sum(proxy.counts.values())
    print(f"{args.refs:,} references, {shards} shards of {args.shard_size}, {args.processes} processes: "
          f"{total:,} S3 requests, {total / shards:.1f} per shard")
    for (method, kind), count in sorted(proxy.counts.items(), key=lambda item: -item[1]):
        print(f"  {method:6s} {kind:26s} {count:6,d}  {count / shards:6.1f} per shard")
    return 0


if __name__ == "__main__":
    sys.exit(main())
