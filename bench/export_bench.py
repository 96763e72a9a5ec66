"""Benchmark ``refwatch export-clean`` on a synthetic LAION-shaped snapshot: wall time, CPU and peak memory.

Not a test: run it by hand from the repository root (one core, as the README's figures were measured):

    taskset -c 1 python bench/export_bench.py                       # 5,000,000 rows, Parquet
    taskset -c 1 python bench/export_bench.py --rows 1000000 --format jsonl

It writes, in a temporary folder, a snapshot (``SAMPLE_ID``, ``URL``, ``TEXT``, ``similarity``; row groups of
``--row-group`` rows; hosts are ``*.example``) and a finished run of it whose outcome parts mark
``--dead-share`` of the references dead and 0.02% matched, then runs the real command line
(``crawler.cli.export.main(["export-clean", SNAPSHOT, "--run", ID, "--drop", "matched,dead", "--out", FILE])``)
in a child process and reports its wall time, CPU time (user+sys, from ``os.wait4``) and peak RSS. The peak is
the child's own ``VmHWM`` (read from ``/proc/self/status`` as it ends), not ``ru_maxrss``: Linux carries the
parent's high-water mark into a forked child across ``exec``, so ``ru_maxrss`` would count this harness's
memory (it holds the generated data) as the export's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from crawler.runs.history import Manifest, describe_snapshots, series_id, write_manifest


def snapshot_table(start: int, n: int) -> pa.Table:
    ids = np.arange(start, start + n, dtype=np.int64)
    text = pa.array([f"a synthetic caption number {i}" for i in ids])
    urls = pa.array([f"https://img{i % 5000}.example/photos/{i}.jpg" for i in ids])
    return pa.table({"SAMPLE_ID": ids, "URL": urls, "TEXT": text, "similarity": np.full(n, 0.31)})


def write_snapshot(path: Path, rows: int, row_group: int, fmt: str) -> None:
    chunk = 500_000
    if fmt == "parquet":
        schema = snapshot_table(0, 1).schema.with_metadata({b"source": b"export_bench"})
        with pq.ParquetWriter(path, schema, compression="snappy") as writer:
            for start in range(0, rows, chunk):
                table = snapshot_table(start, min(chunk, rows - start)).cast(schema)
                writer.write_table(table, row_group_size=row_group)
        return
    with open(path, "w", encoding="utf-8") as fh:
        for start in range(0, rows, chunk):
            records = snapshot_table(start, min(chunk, rows - start)).to_pylist()
            fh.writelines(json.dumps(record) + "\n" for record in records)


def write_run(out: Path, run_id: str, snapshot: Path, rows: int, dead_share: float) -> None:
    run_dir = out / "runs" / run_id
    described = describe_snapshots([snapshot])
    write_manifest(run_dir, Manifest(run_id=run_id, series=series_id(described), snapshots=described,
                                     started_at="2026-01-01T00:00:00Z", finished_at="2026-01-01T01:00:00Z",
                                     status="finished"))
    (run_dir / "outcomes").mkdir()
    rng = np.random.default_rng(0)
    chunk = 1_000_000
    for number, start in enumerate(range(0, rows, chunk)):
        n = min(chunk, rows - start)
        ids = np.arange(start, start + n)
        rng.shuffle(ids)  # a crawl writes rows in completion order, not snapshot order
        dead = rng.random(n) < dead_share
        table = pa.table({"run_id": pa.array([run_id] * n), "ref_id": pa.array(ids.astype(str)),
                          "outcome": pa.array(np.where(dead, "not_found", "ok")),
                          "matched": pa.array(rng.random(n) < 0.0002), "recorded_matched": pa.nulls(n, pa.bool_())})
        pq.write_table(table, run_dir / "outcomes" / f"part-{number:05d}.parquet", compression="zstd")


_CHILD = """
import json, sys
from crawler.cli.export import main
status = main(json.loads(sys.argv[1]))
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
open(sys.argv[2], "w").write(peak.split()[1])  # kB
sys.exit(status)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--row-group", type=int, default=100_000)
    parser.add_argument("--dead-share", type=float, default=0.4)
    parser.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        out = Path(tmp)
        snapshot = out / f"snapshot.{args.format}"
        started = time.perf_counter()
        write_snapshot(snapshot, args.rows, args.row_group, args.format)
        write_run(out, "bench", snapshot, args.rows, args.dead_share)
        print(f"made {args.rows:,}-row {args.format} snapshot ({snapshot.stat().st_size / 2**20:.0f} MiB) and its run "
              f"in {time.perf_counter() - started:.1f} s")
        argv = ["export-clean", str(snapshot), "--run", "bench", "--runs-dir", str(out), "--drop", "matched,dead",
                "--out", str(out / f"clean.{args.format}")]
        peak_file = out / "peak"
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(argv), str(peak_file)], cwd=REPO_ROOT)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            print("export-clean failed", file=sys.stderr)
            return 1
        print(f"export-clean: {wall:.1f} s wall, {usage.ru_utime + usage.ru_stime:.1f} s CPU, "
              f"peak RSS {int(peak_file.read_text()) / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
