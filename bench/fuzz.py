"""Fuzz refwatch's parsers of untrusted input for minutes: snapshot readers and hash-list parsers.

Not a test: run it by hand from the repository root (one core per job)::

    python bench/fuzz.py --minutes 20                       # every target, the 20 minutes shared out
    python bench/fuzz.py --minutes 5 --target wat --target parquet --seed 7

The targets and their property are those of ``tests/fuzz/targets.py`` (the normal suite runs each for a
hundred derandomised examples): a damaged, valid-looking file either fails to open with a one-line
``SnapshotError`` / ``HashListError`` naming it, or reads to the end with bad records counted; any other
exception, an example running past ``--timeout`` seconds, a native crash or memory past ``--memory-mb`` is a
crasher. Each target runs in a child process (so a crash or a hang in native code ends only that target)
that feeds hypothesis fresh seeds in chunks until its share of the time is spent. A crasher is shrunk by
hypothesis, saved to ``--crashers`` (the file, and a ``.txt`` with the exception and a line to rebuild it
in a test) and printed; the target then goes on looking for others.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

CHUNK = 200  # examples per hypothesis run; each run has its own seed


class ExampleTimeout(Exception):
    """An example ran past ``--timeout`` (a hang, as far as the fuzzer is concerned)."""


def _on_alarm(signum: int, frame: object) -> None:
    raise ExampleTimeout("example ran past the time limit")


def _crash_key(exc: BaseException) -> str:
    """Where a crasher comes from: its type and the innermost frame in refwatch's code (to tell bugs apart)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/crawler/" in f.filename] or frames[-1:]
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{type(exc).__name__} at {where}"


def run_child(target_name: str, seconds: float, seed: int, timeout: int, out: Path, crashers: Path) -> None:
    """Fuzz one target until ``seconds`` have passed; write statistics and crashers as JSON to ``out``."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    from tests.fuzz.targets import TARGETS, PropertyViolation

    logging.disable(logging.WARNING)  # the readers warn about what they skip; the fuzzer counts it instead
    target = TARGETS[target_name]
    current = crashers / f"current-{target_name}.bin"  # what a native crash was reading
    stats: Counter[str] = Counter()
    found: dict[str, dict[str, object]] = {}
    examples = 0
    last: list[object] = [None]
    signal.signal(signal.SIGALRM, _on_alarm)
    started = time.monotonic()
    chunk = 0
    while time.monotonic() - started < seconds:
        @hypothesis_seed(seed * 1_000_003 + chunk)
        @settings(max_examples=CHUNK, deadline=None, database=None, report_multiple_bugs=False,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink],
                  print_blob=False)
        @given(target.strategy)
        def one(case: object) -> None:
            nonlocal examples
            last[0] = case
            current.write_bytes(case.data)  # type: ignore[attr-defined]
            examples += 1
            signal.alarm(timeout)
            try:
                stats[target.check(case).label] += 1  # type: ignore[arg-type]
            finally:
                signal.alarm(0)

        chunk += 1
        try:
            one()
        except Exception as exc:  # noqa: BLE001 - every failure is what we are looking for
            key = _crash_key(exc) if not isinstance(exc, PropertyViolation) else \
                f"PropertyViolation: {str(exc).split(':')[0]}"
            case = last[0]  # hypothesis replays the shrunk example last
            if key not in found:
                saved = crashers / f"{target_name}-{len(found) + 1}-{case.name}"  # type: ignore[attr-defined]
                saved.write_bytes(case.data)  # type: ignore[attr-defined]
                detail = "".join(traceback.format_exception(exc)[-12:])
                rebuild = (f"Case({case.name!r}, bytes.fromhex({case.data.hex()!r}), "  # type: ignore[attr-defined]
                           f"{case.options!r})")  # type: ignore[attr-defined]
                saved.with_name(saved.name + ".txt").write_text(f"{key}\n\n{detail}\n{rebuild}\n")
                found[key] = {"key": key, "file": str(saved), "size": len(case.data),  # type: ignore[attr-defined]
                              "message": f"{type(exc).__name__}: {exc}"[:300], "chunk": chunk}
            stats["CRASH"] += 1
    current.unlink(missing_ok=True)
    out.write_text(json.dumps({
        "target": target_name, "seconds": time.monotonic() - started, "examples": examples, "chunks": chunk,
        "stats": dict(stats.most_common()), "crashers": list(found.values()),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def _limit_memory(megabytes: int) -> None:
    limit = megabytes << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(argv: list[str] | None = None) -> int:
    from tests.fuzz.targets import TARGETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="total time, shared out among the targets")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="a target (repeatable; "
                        "default: all)")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000, help="seeds of the runs")
    parser.add_argument("--timeout", type=int, default=20, help="seconds one example may take")
    parser.add_argument("--memory-mb", type=int, default=4096, help="address-space limit of a target's process")
    parser.add_argument("--crashers", type=Path, default=None, help="folder for crashers (default: a temp folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    crashers = args.crashers or Path(tempfile.mkdtemp(prefix="refwatch-fuzz-crashers-"))
    crashers.mkdir(parents=True, exist_ok=True)
    if args.child:
        _limit_memory(args.memory_mb)
        run_child(args.child, args.seconds, args.seed, args.timeout, args.out, crashers)
        return 0

    names = args.target or sorted(TARGETS)
    share = args.minutes * 60 / len(names)
    print(f"fuzzing {', '.join(names)} for {args.minutes:g} min ({share:.0f} s each), seed {args.seed}, "
          f"crashers in {crashers}", flush=True)
    total_crashers = 0
    for name in names:
        out = crashers / f"result-{name}.json"
        out.unlink(missing_ok=True)
        command = [sys.executable, __file__, "--child", name, "--seconds", str(share), "--seed", str(args.seed),
                   "--timeout", str(args.timeout), "--memory-mb", str(args.memory_mb), "--crashers", str(crashers),
                   "--out", str(out)]
        with open(crashers / f"stderr-{name}.log", "wb") as stderr:  # warcio writes warnings to stderr
            child = subprocess.Popen(command, cwd=REPO_ROOT, stderr=stderr)
        try:
            # Beyond its share, a child may still be shrinking a crasher; past that it hangs in native code.
            code = child.wait(timeout=share + 900)
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait()
        if not out.exists():
            current = crashers / f"current-{name}.bin"
            total_crashers += 1
            print(f"\n== {name}: the process ended with status {code} (native crash, hang or memory); "
                  f"the input it was reading: {current}", flush=True)
            continue
        result = json.loads(out.read_text())
        total_crashers += len(result["crashers"])
        print(f"\n== {name}: {result['examples']} examples in {result['seconds'] / 60:.1f} min "
              f"({result['examples'] / max(result['seconds'], 1e-9):.0f}/s, {result['chunks']} seeds), "
              f"peak RSS {result['max_rss_mb']:.0f} MiB")
        for label, count in result["stats"].items():
            print(f"   {count:7d}  {label}")
        for crasher in result["crashers"]:
            print(f"   CRASHER {crasher['key']}\n      {crasher['message']}\n      input ({crasher['size']} bytes): "
                  f"{crasher['file']} (details beside it, .txt)")
        sys.stdout.flush()
    print(f"\n{total_crashers} crasher(s)")
    return 1 if total_crashers else 0


if __name__ == "__main__":
    sys.exit(main())
