"""Benchmark ``refwatch report`` on a synthetic history: wall time and peak memory of the report process.

Not a test: run it by hand from the repository root and read what it prints.

    python bench/report_bench.py                       # 10 runs x 1,000,000 references (the README's figures)
    python bench/report_bench.py --references 100000   # a quicker look
    python bench/report_bench.py --keep /tmp/history   # keep the history (and the outputs) afterwards
    python bench/report_bench.py --history /tmp/history  # reuse a kept history instead of making one

The history (``crawler.sample.history.synthesize_history``) is made in this process first and is
not timed: ~3% of alive references die per run with a mix of dead outcomes (placeholders among them), a
tenth of a percent of domains go away whole each run, transient failures often come back, drift is mostly
``same`` with some ``near``/``changed``/``new``, ~50k domains with a Zipf-like skew, a few matches, and parts of
1,000 rows as the crawl writes them (10,000 files for the default history).

The report then runs as the real command line in a child process, writing the terminal tables (to a file:
not a terminal, so plain text), ``--json`` and ``--html``. Its wall time is measured around the child, its
CPU time and peak RSS (``ru_maxrss``) come from ``os.wait4`` on it. The child is killed if it outlasts
``--timeout``; the history goes to a temporary folder removed at the end unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from crawler.sample.history import HistoryShape, synthesize_history

TARGET_SECONDS, TARGET_RSS_MIB = 60.0, 2048.0


def make_history(out: Path, args: argparse.Namespace) -> None:
    shape = HistoryShape(runs=args.runs, references=args.references, domains=args.domains,
                         rows_per_part=args.rows_per_part)
    started = time.perf_counter()
    synthesize_history(out, shape, seed=args.seed)
    parts = sum(1 for _ in out.glob("runs/*/outcomes/part-*.parquet"))
    size = sum(p.stat().st_size for p in out.glob("runs/*/outcomes/part-*.parquet"))
    print(f"history: {args.runs} runs x {args.references:,} references, {parts:,} parts, {size / 2**20:,.0f} MiB "
          f"(made in {time.perf_counter() - started:.1f} s)")


def run_report(history: Path, outputs: Path, timeout: float) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS MiB, exit status) of ``refwatch report`` over ``history``."""
    command = [sys.executable, "-m", "crawler.cli.report", "--out", str(history),
               "--json", str(outputs / "report.json"), "--html", str(outputs / "report.html")]
    with open(outputs / "report.txt", "w", encoding="utf-8") as tables, \
            open(outputs / "report.stderr", "w", encoding="utf-8") as errors:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=tables, stderr=errors, cwd=REPO_ROOT, start_new_session=True)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(process.pid, 0)
                print(f"report killed after {timeout:.0f} s")
                break
            time.sleep(0.05)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, process.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--references", type=int, default=1_000_000)
    parser.add_argument("--domains", type=int, default=50_000)
    parser.add_argument("--rows-per-part", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="kill the report after this many seconds")
    parser.add_argument("--keep", type=Path, default=None, help="make the history here and keep it")
    parser.add_argument("--history", type=Path, default=None, help="report on this existing history instead")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="refwatch-report-bench-"))
    try:
        history = args.history or args.keep or scratch / "history"
        if args.history is None:
            make_history(history, args)
        outputs = (args.keep or scratch) / "outputs"
        outputs.mkdir(parents=True, exist_ok=True)
        wall, cpu, rss, status = run_report(history, outputs, args.timeout)
        print(f"report: exit {status}, wall {wall:.1f} s, CPU {cpu:.1f} s, peak RSS {rss:,.0f} MiB "
              f"(targets: < {TARGET_SECONDS:.0f} s, < {TARGET_RSS_MIB:,.0f} MiB)")
        for name in ("report.txt", "report.json", "report.html"):
            path = outputs / name
            print(f"  {name}: {path.stat().st_size / 1024:,.0f} KiB" if path.exists() else f"  {name}: missing")
        if status != 0:
            print((outputs / "report.stderr").read_text(encoding="utf-8")[-2000:])
        ok = status == 0 and wall < TARGET_SECONDS and rss < TARGET_RSS_MIB
        print("within targets" if ok else "OUTSIDE TARGETS")
        return 0 if ok else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
