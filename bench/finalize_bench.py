"""Benchmark the end-of-run pass (``crawler/runs/finalize.py``): placeholders, drift and final parts for one run.

Not a test: run it by hand from the repository root and read what it prints.

    python bench/finalize_bench.py                    # a run of 1,000,000 references after an earlier one
    python bench/finalize_bench.py --refs 200000 --parts-rows 1000

Synthesizes two runs of one series as a crawl writes them (parts of ``--parts-rows`` rows; ~88% alive, 50k
domains with a skewed distribution, one placeholder picture served for 5,000 URLs of one domain, 30% of the
references' images changed or re-encoded since the earlier run) and times ``finalize_run`` on the later one
in a child process, printing wall time, CPU time and the child's own peak RSS (VmHWM).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def hexes(values: np.ndarray, digits: int) -> list[str]:
    return [f"{v:0{digits}x}" for v in values.tolist()]


def synthesize(folder: Path, refs: int, parts_rows: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    ids = [f"r{i}" for i in range(refs)]
    domains = np.minimum(rng.zipf(1.3, refs), 50_000)
    domain = [f"site{d}.example" for d in domains.tolist()]
    url = [f"http://img.site{d}.example/{i}.jpg" for i, d in enumerate(domains.tolist())]
    phash0 = rng.integers(0, 2**63, refs, dtype=np.int64).astype(np.uint64)
    md5_0 = hexes(rng.integers(0, 2**63, refs, dtype=np.int64), 32)
    for number, run_id in enumerate(("earlier", "later")):
        alive = rng.random(refs) < 0.88
        phash, md5 = phash0.copy(), list(md5_0)
        if number:
            changed = rng.random(refs) < 0.3
            flips = rng.integers(0, 12, refs).astype(np.uint64)  # 0..11 low bits: near or changed
            phash[changed] ^= (np.uint64(1) << flips[changed]) - np.uint64(1)
            for i in np.flatnonzero(changed).tolist():
                md5[i] = f"{i:032x}"
        final = list(url)
        if number:  # one domain answers 5,000 removed images with the same picture
            for i in np.flatnonzero(domains == 7)[:5000].tolist():
                final[i], md5[i], alive[i] = "http://img.site7.example/removed.png", "f" * 32, True
        table = pa.table({
            "run_id": [run_id] * refs, "ref_id": ids, "url": url, "final_url": final, "domain": domain,
            "outcome": np.where(alive, "ok", "not_found").tolist(),
            "md5": pa.array([m if a else None for m, a in zip(md5, alive.tolist())], pa.string()),
            "phash": pa.array([h if a else None for h, a in zip(hexes(phash, 16), alive.tolist())], pa.string()),
            "matched": np.zeros(refs, bool), "recorded_md5": pa.nulls(refs, pa.string()),
            "recorded_phash": pa.nulls(refs, pa.string()), "drift": pa.nulls(refs, pa.string()),
            "carried_from": pa.nulls(refs, pa.string()),
        })
        outcomes = folder / "runs" / run_id / "outcomes"
        outcomes.mkdir(parents=True)
        for k, offset in enumerate(range(0, refs, parts_rows)):
            pq.write_table(table.slice(offset, parts_rows), outcomes / f"part-{k:05d}.parquet", compression="zstd")


CHILD = """
import json, resource, sys, time
from pathlib import Path
import pyarrow as pa
pa.set_memory_pool(pa.system_memory_pool())  # as in a crawl (crawler/pipelines/outcomes.py)
from crawler.runs.finalize import finalize_run
from crawler.runs.placeholders import PlaceholderRules, read_known
folder = Path(sys.argv[1])
started, cpu = time.perf_counter(), time.process_time()
result = finalize_run(folder / "runs" / "later", [folder / "runs" / "earlier"], PlaceholderRules(read_known()), 8)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu,
                  "peak_mib": int(status["VmHWM"].split()[0]) / 1024, "placeholders": result.placeholders,
                  "drift": result.drift,
                  "parts": len(list((folder / "runs" / "later" / "outcomes").glob("part-*.parquet")))}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--refs", type=int, default=1_000_000)
    parser.add_argument("--parts-rows", type=int, default=1000, help="rows per part, as the crawl writes them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        synthesize(Path(tmp), args.refs, args.parts_rows)
        print(f"synthesized 2 runs of {args.refs:,} references in {time.perf_counter() - started:.1f} s "
              f"(parts of {args.parts_rows:,} rows); load {os.getloadavg()[0]:.1f}")
        out = subprocess.run([sys.executable, "-c", CHILD, tmp], capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            return 1
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"finalize: {figures['wall']:.1f} s wall, {figures['cpu']:.1f} s CPU, peak RSS "
              f"{figures['peak_mib']:,.0f} MiB; {figures['parts']} final parts; placeholders "
              f"{figures['placeholders']}; drift {figures['drift']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
