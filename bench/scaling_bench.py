"""Every core: ``refwatch crawl --processes 1`` against ``--processes 2``, and ``refwatch worker`` x1 against
x2 (Redis), on one image corpus, side by side.

Not a test: run it by hand from the repository root (as root, or with Debian's ``nginx`` and ``redis-server``
installed) and read the table it prints. This is the benchmark of issue 11 ("scaling efficiency >= 0.9 on this 2-core
machine").

    python bench/scaling_bench.py                          # 3,000 images + 10% dead links, 4 rounds
    python bench/scaling_bench.py --images 600 --rounds 1  # a quick look
    python bench/scaling_bench.py --profile                # also time each shard child's phases
    python bench/scaling_bench.py --json /tmp/scaling.json # the whole result as JSON too
    python bench/scaling_bench.py --variants "crawl x1,crawl x2,worker x1,worker x2"  # some clients only

What it reuses from ``bench/throughput_bench.py``: the corpus (``build_corpus``: the cached web-sized synthetic
images), the URL list (``write_snapshot``: every image once plus ``--dead-share`` dead links, half 404, half a
refused loopback port, as a LAION-style Parquet), the nginx runner (``running_nginx``) and ``measure`` (wall
from start to exit, CPU of the whole process tree from ``os.wait4``, peak RSS of the tree sampled every 0.2 s).

**Clients** (``VARIANTS``), run in every round, the order rotated from round to round:

- ``crawl x1``: ``refwatch crawl SNAPSHOT --processes 1`` (one process, as before ``--processes`` existed;
  ``--shard-size`` is passed too, and ignored by one process);
- ``crawl x2``: the same with ``--processes 2``: a parent that plans the shards, one ``refwatch _shard`` child
  per shard (at most two at a time), forked from a warm zygote (crawler/workers/zygote.py), then the end-of-run
  pass in the parent;
- ``crawl x2 exec``: the same with ``REFWATCH_SHARD_START=exec``: each shard child a new interpreter, paying a
  crawl process's start-up (the only way before the zygote);
- ``crawl x2 unbound``: ``crawl x2`` with ``REFWATCH_PIN_PROCESSES=off``: the children run where the scheduler
  puts them instead of one per CPU (crawler/workers/affinity.py);
- ``crawl x1 on 1 core``: ``crawl x1`` under ``taskset -c 0``. One process already keeps ~1.3 cores busy (its
  hashing threads release the GIL), so issue 11's "x2 / (2 x x1)" cannot reach 1 on 2 cores even without any
  overhead; against one pinned process it can, which separates sharding's cost from that ceiling;
- ``worker x1``: the Redis path. A fresh ``redis-server`` for the run (127.0.0.1, a free port, no persistence,
  stopped whatever happens), ``refwatch seed SNAPSHOT --redis URL --run-id bench-ROUND`` into the run's own
  output folder (timed on its own), then one ``refwatch worker --redis URL --processes 1 --exit-when-idle``
  until it exits (it forks each shard child from its own zygote, and runs the end-of-run pass);
- ``worker x2``: the same with two such workers at once (two machines' worth on one machine: two zygotes,
  two workers polling Redis; whichever takes the run's finalize lock runs the end-of-run pass);
- ``worker x1 -p2``: one worker ``--processes 2`` (one zygote, two shard children at once);
- ``hash loop x1`` and ``hash loop x2``: no crawl, the machine's own ceiling. refwatch's hashing (every hash) over
  the corpus's bytes in memory in a tight loop (throughput_bench's ``_hashloop``), one process on core 0, against
  two such processes at once on cores 0 and 1, their timed loops started at the same instant. Their efficiency
  is how well this machine runs the same work on both cores at once; on a shared virtual machine two busy
  vCPUs may each run slower than one alone (siblings of one physical core, a shared power budget), and no
  crawl can scale better than that.

All with ``--per-host 64 --concurrency 64`` (per process) as throughput_bench runs refwatch. The per-host
limit is 64 in flight to the host from all processes in both paths: ``crawl --processes 2`` splits it (32
each), workers share it through Redis (``REFWATCH_REDIS_URL``, which ``refwatch worker`` always sets: a few
Redis calls per request, so redis-server's CPU is part of the Redis path's cost). The shard size defaults to
an eighth of the URL list (rounded up: 8 shards), printed; the same for both paths. A variant is a name, a
family, a process count and its command (and optionally the cores it may use, the workers it runs);
efficiency compares each variant with its family's one-process variant. ``--variants`` picks the clients.

**How each crawl is timed.** The crawl runs inside a thin wrapper (``scaling_bench.py _timed REPORT -- ARGS``,
``crawler.cli.main.main(ARGS)`` in the same process) that writes, just before the process exits, its own CPU
(``RUSAGE_SELF``) and its reaped children's (``RUSAGE_CHILDREN``) — the parent's overhead is the first — and, for
``--processes 2``, when the first child started, each shard child's end, wall and CPU (``RUSAGE_CHILDREN`` read right
after the child is reaped), when the last child ended and how long the end-of-run pass took (by wrapping
``crawler.workers.local.crawl_shards`` and ``crawler.shards.finish.finish_sharded_run``; refwatch's code is not
changed; a child's CPU is its ``wait4`` figure, which crawl_shards reports for exec'd and forked children alike,
since a forked child is reaped by the zygote). The workers run under another thin launcher (``scaling_bench.py
_workers REPORT N -- worker ARGS``) that starts the N workers at once and reaps each with ``wait4``: wall from the
first one's start to the last one's exit, CPU the workers' (each reaps its zygote, which reaps the shard children;
the launcher's own ~0.1 s is left out); the seed's wall and CPU, and redis-server's CPU during the seed and during
the workers (from /proc), are reported beside. With ``--profile`` each shard child runs in the wrapper too (exec'd:
``_timed``; forked: the zygote's entry is ``bench.scaling_bench:timed_shard``) and records when its engine started
(its start-up), its first and last response, and when its reactor stopped (CPU at each).

Around each run the benchmark also reads nginx's CPU (its master and worker, from /proc), redis-server's and the
machine's (``/proc/stat``), so a run's core-seconds (2 x wall) split into the crawl's CPU, the servers', everything
else on the machine and idle. Before the rounds, one crawl of a one-image snapshot gives a crawl process's start-up
CPU, which every shard child pays again. The machine is shared: before each run the benchmark waits (at most
``--wait-quiet`` s) for a second in which other processes use less than 10% of the cores, prints what the others used
during each run, and gives the efficiency over the rounds where they stayed under 10% in both runs too.

Columns: images/s (live images over wall seconds, start-up included; median over rounds and range), CPU ms per live
image (the whole tree), the parent's own CPU (the tree less its children's; one process has no children, so there it
is the whole crawl; "-" for workers), cores the tree kept busy (CPU / wall), peak RSS of the tree, nginx's CPU ms per
image, the share of the cores other processes used and the share left idle. Scaling efficiency = (images/s with 2) /
(2 x images/s with 1), per round (the runs of a round ran one after the other), median and range, against ``crawl
x1`` (issue 11's figure) and against ``crawl x1 on 1 core``, split into three measured factors (``efficiencies``): 1 /
the cores x1 keeps busy (the ceiling with no overhead), x1's CPU / x2's (what sharding costs), and the share of 2 x
wall x2 keeps busy (serial phases, the tail, other processes); and the images per CPU-second of x2's tree over x1's.
The worker family likewise against ``worker x1``. Then, for x2, where its time went: the core-seconds split, the
parent's phases, the children's walls and CPU, empty process slots and the tail. Correctness, cheaply: every run's
summary must count the expected ok / not_found / connection_error outcomes (a warning otherwise), and all runs the
same. Network: loopback only. Every server and process started is stopped (``measure`` kills each client's process
group); temp dirs are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput_bench import (  # noqa: E402  (the benchmark next door; it puts the repository on sys.path)
    REPO_ROOT, MiB, QUIET_THREADS, RunResult, _kill_group, _tree, build_corpus, describe_corpus, free_port,
    machine_facts, measure, running_nginx, write_snapshot,
)

THIS = Path(__file__).resolve()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DEFAULT_SHARDS = 8  # the default shard size cuts the URL list into this many shards
QUIET = 0.10  # a run is quiet when other processes used less than this share of the cores during it


# ---------------------------------------------------------------------------------------------------------
# Inside the crawl: the wrapper
# ---------------------------------------------------------------------------------------------------------


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _mark(marks: dict[str, Any], name: str) -> None:
    marks[name] = {"t": time.time(), "self_cpu": _cpu(resource.RUSAGE_SELF),
                   "children_cpu": _cpu(resource.RUSAGE_CHILDREN)}


def _time_parent(marks: dict[str, Any], child_reports: str | None) -> None:
    """Wrap the sharded run's two stages (children, end-of-run pass); with ``child_reports``, children too."""
    import crawler.shards.finish as finish
    import crawler.workers.local as local

    crawl_shards, finish_run = local.crawl_shards, finish.finish_sharded_run
    shards: list[dict[str, Any]] = marks.setdefault("shards", [])

    def timed_crawl_shards(*args: Any, **kwargs: Any) -> Any:
        _mark(marks, "children_started")
        last = [_cpu(resource.RUSAGE_CHILDREN)]
        chained = kwargs.pop("on_result", None)

        def on_result(result: Any) -> None:  # called right after the child was reaped
            now = _cpu(resource.RUSAGE_CHILDREN)
            cpu = result.cpu_seconds if result.cpu_seconds is not None else now - last[0]
            shards.append({"shard": result.shard_id, "status": result.status, "end": time.time(),
                           "seconds": result.seconds, "cpu": cpu})
            last[0] = now
            if chained is not None:
                chained(result)

        try:
            return crawl_shards(*args, on_result=on_result, **kwargs)
        finally:
            _mark(marks, "children_ended")

    def timed_finish(*args: Any, **kwargs: Any) -> Any:
        _mark(marks, "finish_started")
        try:
            return finish_run(*args, **kwargs)
        finally:
            _mark(marks, "finish_ended")

    local.crawl_shards, finish.finish_sharded_run = timed_crawl_shards, timed_finish
    if child_reports:
        local.child_command = lambda spec: [sys.executable, str(THIS), "_timed", str(Path(child_reports) /
                                            f"{Path(spec).stem}.json"), "-", "--", "_shard", str(spec)]
        local.CHILD_ENTRY = "bench.scaling_bench:timed_shard"  # the zygote imports it from the repository root
        os.environ[CHILD_REPORTS_ENV] = child_reports


CHILD_REPORTS_ENV = "SCALING_BENCH_CHILD_REPORTS"


def timed_shard(argv: list[str]) -> int:
    """A forked shard child's entry (``--profile``): ``refwatch _shard SPEC`` in the wrapper, as ``_timed`` runs
    an exec'd one. Its start-up is counted from the fork."""
    report = Path(os.environ[CHILD_REPORTS_ENV]) / f"{Path(argv[-1]).stem}.json"
    return cmd_timed([str(report), "-", "--", *argv])


def _time_child(marks: dict[str, Any], report: Path) -> None:
    """A shard child: when its engine started, its first and last response, when its reactor stopped. The
    child ends with ``os._exit`` (crawler/cli/crawl.py), so the report is written there."""
    from scrapy import signals

    import crawler.runner as runner

    real_exit = os._exit

    def exit_with_report(code: int) -> None:
        _mark(marks, "ended")
        report.write_text(json.dumps(marks))
        real_exit(code)

    os._exit = exit_with_report  # type: ignore[assignment]

    class TimedProcess(runner.CrawlerProcess):  # type: ignore[misc,name-defined]
        def create_crawler(self, crawler_or_spidercls: Any) -> Any:
            crawler = super().create_crawler(crawler_or_spidercls)
            crawler.signals.connect(on_engine, signal=signals.engine_started, weak=False)
            crawler.signals.connect(on_response, signal=signals.response_received, weak=False)
            crawler.signals.connect(on_closed, signal=signals.spider_closed, weak=False)
            return crawler

        def start(self, *args: Any, **kwargs: Any) -> Any:
            _mark(marks, "reactor_starting")
            try:
                return super().start(*args, **kwargs)
            finally:
                _mark(marks, "reactor_stopped")

    def on_engine() -> None:
        _mark(marks, "engine_started")

    def on_response(**_: Any) -> None:
        if "first_response" not in marks:
            _mark(marks, "first_response")
        marks["last_response_t"] = time.time()

    def on_closed(**_: Any) -> None:
        _mark(marks, "spider_closed")

    runner.CrawlerProcess = TimedProcess  # run_shard looks the name up when it runs


def cmd_timed(argv: Sequence[str]) -> int:
    """``_timed REPORT CHILD_REPORTS -- ARGS``: run ``refwatch ARGS`` here, then write REPORT (JSON)."""
    report, child_reports, args = Path(argv[0]), (None if argv[1] == "-" else argv[1]), list(argv[3:])
    marks: dict[str, Any] = {}
    _mark(marks, "started")
    code: int | None = 1
    try:
        if args[:1] == ["_shard"]:
            _time_child(marks, report)
        elif "--processes" in args and int(args[args.index("--processes") + 1]) > 1:
            _time_parent(marks, child_reports)
        from crawler.cli.main import main

        code = main(args)
    finally:
        _mark(marks, "ended")
        report.write_text(json.dumps(marks))
    return code or 0


def cmd_workers(argv: Sequence[str]) -> int:
    """``_workers REPORT N -- ARGS``: start N ``refwatch ARGS`` at once, reap each with ``wait4`` (its CPU
    includes its zygote's and the shard children's: each reaps its own), then write REPORT (JSON): when the first
    started and the last exited, each one's exit code, end and CPU. This launcher's own CPU is left out."""
    report, count, args = Path(argv[0]), int(argv[1]), list(argv[3:])
    started = time.perf_counter()
    pending: dict[int, int] = {}
    for index in range(count):
        with (report.parent / f"worker{index}.stderr").open("wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "crawler.cli.main", *args], stdout=subprocess.DEVNULL,
                                    stderr=err, stdin=subprocess.DEVNULL, cwd=REPO_ROOT)
        pending[proc.pid] = index
    workers: list[dict[str, Any]] = []
    while pending:  # the launcher's only children are the workers
        pid, status, usage = os.wait4(-1, 0)
        if pid in pending:
            workers.append({"worker": pending.pop(pid), "exit": os.waitstatus_to_exitcode(status),
                            "end": time.perf_counter() - started, "cpu": usage.ru_utime + usage.ru_stime})
    report.write_text(json.dumps({"wall": time.perf_counter() - started, "workers": workers}))
    return max(abs(w["exit"]) for w in workers)


# ---------------------------------------------------------------------------------------------------------
# Around the crawl: nginx's, redis-server's and the machine's CPU
# ---------------------------------------------------------------------------------------------------------


def tree_cpu(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants now (seconds; 0 for any that is gone)."""
    total = 0
    for member in _tree(pid):
        try:
            with open(f"/proc/{member}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
        except (OSError, ValueError, IndexError):
            continue
    return total / CLOCK_TICKS


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, from /proc/stat (steal counts as busy)."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:9]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values) - idle) / CLOCK_TICKS, idle / CLOCK_TICKS


@contextlib.contextmanager
def running_redis(folder: Path, timeout: float = 15.0) -> Iterator[tuple[str, int]]:
    """A fresh ``redis-server`` on 127.0.0.1 (a free port), no persistence (a benchmark's run is thrown away);
    yields (URL, pid) and stops it whatever happens. (tests/redisserver.py runs it with AOF, as deployed.)"""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    with (folder / "redis.log").open("wb") as log:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                                 "--appendonly", "no", "--save", "", "--daemonize", "no", "--protected-mode", "yes",
                                 "--maxmemory-policy", "noeviction"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}: "
                                   f"{(folder / 'redis.log').read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {port} within {timeout:.0f} s")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        _kill_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            _kill_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)


def wait_quiet(limit: float, cores: int) -> float:
    """Wait (at most ``limit`` s) for a second in which other processes use less than ``QUIET`` of the cores;
    returns the seconds waited. The machine is shared: a run that starts under load measures the neighbours."""
    started = time.monotonic()
    while True:
        before = machine_cpu()[0]
        time.sleep(1.0)
        if machine_cpu()[0] - before < QUIET * cores or time.monotonic() - started >= limit:
            return time.monotonic() - started


# ---------------------------------------------------------------------------------------------------------
# The clients
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    family: str  # efficiency compares a variant with its family's one-process variants
    processes: int  # shard crawls at once, all told
    command: Callable[[Path, Path, int], list[str]]  # (snapshot, output folder, shard size) -> refwatch ARGS
    cpus: str | None = None  # taskset's list: the crawl (and its threads) on these cores only
    env: tuple[str, ...] = ()  # NAME=VALUE for the crawl's environment
    # The Redis path: ``command`` is the seed's (less --redis and --run-id), then this many
    # ``refwatch worker --processes processes/workers --exit-when-idle`` run at once. 0: a crawl.
    workers: int = 0
    hash_loop: bool = False  # no crawl: ``processes`` hashing loops at once, one per core (``command`` unused)


def crawl_args(processes: int) -> Callable[[Path, Path, int], list[str]]:
    def build(snapshot: Path, out: Path, shard_size: int) -> list[str]:
        return ["crawl", str(snapshot), "--out", str(out), "--allow-private-networks", "--json", "--per-host", "64",
                "--concurrency", "64", "--no-progress", "--processes", str(processes),
                "--shard-size", str(shard_size)]
    return build


def seed_args(snapshot: Path, out: Path, shard_size: int) -> list[str]:
    return ["seed", str(snapshot), "--out", str(out), "--allow-private-networks", "--json", "--per-host", "64",
            "--concurrency", "64", "--no-progress", "--shard-size", str(shard_size)]


# "crawl x1 on 1 core" is the per-core baseline: one process already keeps more than one core busy (its hashing
# threads release the GIL), so "x2 / (2 x x1)" mixes sharding's cost with that; against one core it does not.
VARIANTS = (Variant("crawl x1", "crawl", 1, crawl_args(1)), Variant("crawl x2", "crawl", 2, crawl_args(2)),
            Variant("crawl x1 on 1 core", "crawl", 1, crawl_args(1), cpus="0"),
            Variant("crawl x2 exec", "crawl", 2, crawl_args(2), env=("REFWATCH_SHARD_START=exec",)),
            # children left where the scheduler puts them, as before crawler/workers/affinity.py
            Variant("crawl x2 unbound", "crawl", 2, crawl_args(2), env=("REFWATCH_PIN_PROCESSES=off",)),
            # Two machines' worth on one: two workers of one process each; and one worker of two processes.
            Variant("worker x1", "worker", 1, seed_args, workers=1),
            Variant("worker x2", "worker", 2, seed_args, workers=2),
            Variant("worker x1 -p2", "worker", 2, seed_args, workers=1),
            Variant("hash loop x1", "hash loop", 1, lambda *_: [], hash_loop=True),
            Variant("hash loop x2", "hash loop", 2, lambda *_: [], hash_loop=True))


@dataclass
class Context:
    snapshot: Path
    expected: dict[str, int]
    shard_size: int
    nginx_pid: int
    timeout: float
    profile: bool
    wait_quiet: float = 0.0
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    corpus: Path | None = None  # the image files and their names (one per line), for the hash loops
    names: Path | None = None


def run_variant(variant: Variant, ctx: Context, round_: int, scratch: Path) -> RunResult:
    if variant.workers:
        return run_workers_variant(variant, ctx, round_, scratch)
    if variant.hash_loop:
        return run_hash_loops(variant, ctx, round_)
    out, report, child_reports = scratch / "out", scratch / "timed.json", scratch / "children"
    child_reports.mkdir()
    cmd = ((["env", *variant.env] if variant.env else []) + (["taskset", "-c", variant.cpus] if variant.cpus else [])
           + [sys.executable, str(THIS), "_timed", str(report), str(child_reports) if ctx.profile else "-", "--",
              *variant.command(ctx.snapshot, out, ctx.shard_size)])
    waited = wait_quiet(ctx.wait_quiet, ctx.cores) if ctx.wait_quiet > 0 else 0.0
    nginx_before, (busy_before, idle_before) = tree_cpu(ctx.nginx_pid), machine_cpu()
    m = measure(cmd, timeout=ctx.timeout, scratch=scratch)
    nginx_cpu, (busy_after, idle_after) = tree_cpu(ctx.nginx_pid) - nginx_before, machine_cpu()
    try:
        summary = json.loads(m.stdout) if m.stdout.strip() else {}
    except json.JSONDecodeError:
        summary = {}
    outcomes = summary.get("outcomes", {})
    good = m.returncode == 0 and not m.timed_out and bool(summary)
    problems = _check(variant.name, summary, ctx.expected, None if good else
                      f"exit {m.returncode}{' (timed out)' if m.timed_out else ''}: {m.stderr_tail[-800:]}")
    marks = json.loads(report.read_text()) if report.exists() else {}
    children = [json.loads(p.read_text()) for p in sorted(child_reports.glob("*.json"))]
    busy = busy_after - busy_before
    details = {
        "outcomes": {k: v for k, v in outcomes.items() if v}, "shards": summary.get("shards"), "problems": problems,
        "nginx_cpu_seconds": nginx_cpu, "machine_busy_seconds": busy, "machine_idle_seconds": idle_after - idle_before,
        "others_cpu_seconds": busy - m.cpu_seconds - nginx_cpu, "waited_for_quiet_seconds": waited,
        **timeline(marks, m.wall_seconds, m.cpu_seconds, variant.processes), "children": children_phases(children),
    }
    shutil.rmtree(out, ignore_errors=True)
    return RunResult(variant.name, round_, m.wall_seconds, m.cpu_seconds, m.peak_rss, ctx.expected["ok"], good,
                     details)


def run_hash_loops(variant: Variant, ctx: Context, round_: int) -> RunResult:
    """``variant.processes`` hashing loops over the whole corpus at once, loop i on core i (mod the cores), each
    timed loop starting at the same instant (after each process has read the corpus and hashed one image).
    Wall is the longest loop's, CPU the loops' sum, images the corpus times the loops."""
    assert ctx.corpus is not None and ctx.names is not None
    cores = ctx.cores
    waited = wait_quiet(ctx.wait_quiet, cores) if ctx.wait_quiet > 0 else 0.0
    start_at = time.time() + 4.0 + 0.002 * ctx.expected["ok"]  # reading and one warm-up hash come first
    procs = [subprocess.Popen(["taskset", "-c", str(i % cores), sys.executable, str(REPO_ROOT / "bench" /
                                                                                   "throughput_bench.py"),
                               "_hashloop", str(ctx.corpus), str(ctx.names), "md5,sha1,sha256,phash,dhash,pdq",
                               str(start_at)], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(variant.processes)]
    loops: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=ctx.timeout)
            try:
                loops.append(json.loads(out.strip().splitlines()[-1]))
            except (json.JSONDecodeError, IndexError):
                problems.append(f"hash loop: exit {proc.returncode}: {err[-800:]}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    good = not problems and len(loops) == variant.processes and not any(loop["errors"] for loop in loops)
    late = max((loop.get("late_seconds", 0.0) for loop in loops), default=0.0)
    if late > 0:
        problems.append(f"a loop started {late:.1f} s late: the loops did not run side by side all along")
    wall = max((loop["loop_wall_seconds"] for loop in loops), default=math.nan)
    cpu = sum(loop["loop_cpu_seconds"] for loop in loops)
    # The crawl variants' machine columns; other processes' use is not told apart from the loops' here.
    details = {"problems": problems, "nginx_cpu_seconds": 0.0, "machine_idle_seconds": 0.0,
               "others_cpu_seconds": 0.0, "waited_for_quiet_seconds": waited,
               "loop_walls": [loop["loop_wall_seconds"] for loop in loops]}
    for problem in problems:
        print(f"  WARNING {variant.name}: {problem}", flush=True)
    return RunResult(variant.name, round_, wall, cpu, 0, ctx.expected["ok"] * variant.processes, good, details)


def _check(name: str, summary: dict[str, Any], expected: dict[str, int], failure: str | None) -> list[str]:
    outcomes = summary.get("outcomes", {})
    problems = [f"{k} {outcomes.get(k, 0)} (expected {expected[k]})"
                for k in ("ok", "not_found", "connection_error") if outcomes.get(k, 0) != expected[k]]
    if failure:
        problems.append(failure)
    if problems:
        print(f"  WARNING {name}: " + "; ".join(problems), flush=True)
    return problems


def run_workers_variant(variant: Variant, ctx: Context, round_: int, scratch: Path) -> RunResult:
    """The Redis path: a fresh redis-server, ``refwatch seed`` (timed on its own), then ``variant.workers``
    workers at once until the last exits (``--exit-when-idle``): wall from the first's start to the last's exit,
    CPU = the workers' ``wait4`` (their zygotes and shard children included). Outcomes from the run's summary."""
    out, report, run_id = scratch / "out", scratch / "workers.json", f"bench-{round_}"
    (scratch / "redis").mkdir()
    with running_redis(scratch / "redis") as (url, redis_pid):
        redis_before = tree_cpu(redis_pid)
        seeded = measure([sys.executable, "-m", "crawler.cli.main", *variant.command(ctx.snapshot, out, ctx.shard_size),
                          "--redis", url, "--run-id", run_id], timeout=ctx.timeout, scratch=scratch)
        redis_seed = tree_cpu(redis_pid) - redis_before
        failure = None if seeded.returncode == 0 else f"seed exit {seeded.returncode}: {seeded.stderr_tail[-800:]}"
        waited = wait_quiet(ctx.wait_quiet, ctx.cores) if ctx.wait_quiet > 0 else 0.0
        nginx_before, redis_before, (busy_before, idle_before) = (tree_cpu(ctx.nginx_pid), tree_cpu(redis_pid),
                                                                  machine_cpu())
        per_worker = variant.processes // variant.workers
        m = measure([sys.executable, str(THIS), "_workers", str(report), str(variant.workers), "--", "worker",
                     "--redis", url, "--processes", str(per_worker), "--exit-when-idle", "--log-level", "WARNING"],
                    timeout=ctx.timeout, scratch=scratch)
        nginx_cpu, redis_cpu, (busy_after, idle_after) = (tree_cpu(ctx.nginx_pid) - nginx_before,
                                                          tree_cpu(redis_pid) - redis_before, machine_cpu())
    marks = json.loads(report.read_text()) if report.exists() else {}
    workers = sorted(marks.get("workers", []), key=lambda w: w["end"])
    summary_file = out / "runs" / run_id / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    good = (failure is None and m.returncode == 0 and not m.timed_out and bool(summary) and len(workers) ==
            variant.workers and summary.get("finish_reason") == "finished")
    if failure is None and not good:
        logs = "".join(p.read_text(errors="replace")[-600:] for p in sorted(scratch.glob("worker*.stderr")))
        failure = (f"workers exit {m.returncode}{' (timed out)' if m.timed_out else ''}, finish_reason "
                   f"{summary.get('finish_reason')}: {m.stderr_tail[-400:]}{logs}")
    problems = _check(variant.name, summary, ctx.expected, failure)
    wall = marks.get("wall", m.wall_seconds)
    cpu = sum(w["cpu"] for w in workers) if workers else m.cpu_seconds
    busy = busy_after - busy_before
    details = {
        "outcomes": {k: v for k, v in summary.get("outcomes", {}).items() if v}, "shards": summary.get("shards"),
        "problems": problems, "nginx_cpu_seconds": nginx_cpu, "redis_cpu_seconds": redis_cpu,
        "machine_busy_seconds": busy, "machine_idle_seconds": idle_after - idle_before,
        "others_cpu_seconds": busy - m.cpu_seconds - nginx_cpu - redis_cpu, "waited_for_quiet_seconds": waited,
        "seed_seconds": seeded.wall_seconds, "seed_cpu_seconds": seeded.cpu_seconds,
        "redis_seed_cpu_seconds": redis_seed, "launcher_cpu_seconds": m.cpu_seconds - cpu,
        "worker_cpu": [w["cpu"] for w in workers], "worker_end": [w["end"] for w in workers],
        # between the first worker's exit and the last's (two workers): one of them alone
        "tail_seconds": workers[-1]["end"] - workers[0]["end"] if len(workers) > 1 else math.nan,
    }
    shutil.rmtree(out, ignore_errors=True)
    return RunResult(variant.name, round_, wall, cpu, m.peak_rss, ctx.expected["ok"], good, details)


def timeline(marks: dict[str, Any], wall: float, tree_cpu_s: float, processes: int) -> dict[str, Any]:
    """Where the parent's time went, from the wrapper's marks (seconds)."""
    if not marks.get("ended"):
        return {}
    t0, end = marks["started"]["t"], marks["ended"]
    # The parent's own CPU is the tree's less its children's: the wrapper's last mark misses the interpreter's exit.
    out: dict[str, Any] = {"parent_cpu_seconds": tree_cpu_s - end["children_cpu"],
                           "parent_exit_cpu_seconds": tree_cpu_s - end["children_cpu"] - end["self_cpu"],
                           "children_cpu_seconds": end["children_cpu"], "wrapper_wall_seconds": end["t"] - t0}
    if "children_started" not in marks:
        return out
    first, last = marks["children_started"], marks["children_ended"]
    shards = marks.get("shards", [])
    ends = sorted(s["end"] for s in shards)
    out |= {
        "parent_startup_seconds": first["t"] - t0, "parent_startup_cpu": first["self_cpu"],
        "children_phase_seconds": last["t"] - first["t"],
        "children_phase_parent_cpu": last["self_cpu"] - first["self_cpu"],
        "child_seconds": [s["seconds"] for s in shards], "child_cpu": [s["cpu"] for s in shards],
        # the last child alone (for 2 processes: from the second-to-last end to the last)
        "tail_seconds": ends[-1] - ends[-processes] if len(ends) >= processes else 0.0,
        # slots with no child: processes x phase - the children's walls (gaps between a child and the next, tail)
        "idle_slot_seconds": processes * (last["t"] - first["t"]) - sum(s["seconds"] for s in shards),
    }
    if "finish_started" in marks:
        out |= {"finish_seconds": marks["finish_ended"]["t"] - marks["finish_started"]["t"],
                "finish_cpu": marks["finish_ended"]["self_cpu"] - marks["finish_started"]["self_cpu"],
                "after_children_seconds": end["t"] - last["t"]}
    return out


def children_phases(children: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over a run's shard children (``--profile``): start-up, crawling, closing."""
    rows = [c for c in children if "engine_started" in c and "reactor_stopped" in c and "ended" in c]
    if not rows:
        return {}

    def med(values: list[float]) -> float:
        return statistics.median(values)

    return {
        "count": len(rows),
        "startup_seconds": med([c["engine_started"]["t"] - c["started"]["t"] for c in rows]),
        "startup_cpu": med([c["engine_started"]["self_cpu"] for c in rows]),
        "to_first_response_seconds": med([c.get("first_response", c["engine_started"])["t"] - c["started"]["t"]
                                          for c in rows]),
        "crawl_seconds": med([c.get("last_response_t", c["engine_started"]["t"]) - c["engine_started"]["t"]
                              for c in rows]),
        "close_seconds": med([c["reactor_stopped"]["t"] - c.get("last_response_t", c["engine_started"]["t"])
                              for c in rows]),
        "close_cpu": med([c["reactor_stopped"]["self_cpu"] - c.get("spider_closed", c["reactor_stopped"])["self_cpu"]
                          for c in rows]),
        "exit_seconds": med([c["ended"]["t"] - c["reactor_stopped"]["t"] for c in rows]),
        "total_cpu": med([c["ended"]["self_cpu"] for c in rows]),
    }


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> tuple[float, float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return (statistics.median(values), min(values), max(values)) if values else (math.nan,) * 3


def summarise(results: list[RunResult], cores: int) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        runs = [r for r in results if r.client == variant.name and r.ok]
        if not runs:
            continue
        d = [r.details for r in runs]
        table[variant.name] = {
            "runs_ok": len(runs), "runs": sum(r.client == variant.name for r in results),
            "images_per_second": _stats([r.images_per_second for r in runs]),
            "cpu_ms_per_image": _stats([r.cpu_ms_per_image for r in runs]),
            "wall_seconds": _stats([r.wall_seconds for r in runs]),
            "tree_cpu_seconds": _stats([r.cpu_seconds for r in runs]),
            "parent_cpu_seconds": _stats([x.get("parent_cpu_seconds", math.nan) for x in d]),
            "peak_rss_mib": max(r.peak_rss for r in runs) / MiB,
            "nginx_cpu_ms_per_image": _stats([1000 * x["nginx_cpu_seconds"] / r.live_images for x, r in zip(d, runs)]),
            "nginx_cpu_seconds": _stats([x["nginx_cpu_seconds"] for x in d]),
            "redis_cpu_ms_per_image": _stats([1000 * x.get("redis_cpu_seconds", math.nan) / r.live_images
                                              for x, r in zip(d, runs)]),
            "others_cpu_seconds": _stats([x["others_cpu_seconds"] for x in d]),
            "others_share": _stats([x["others_cpu_seconds"] / (cores * r.wall_seconds) for x, r in zip(d, runs)]),
            "cores_used": _stats([r.cpu_seconds / r.wall_seconds for r in runs]),
            "idle_share": _stats([x["machine_idle_seconds"] / (cores * r.wall_seconds) for x, r in zip(d, runs)]),
            **{key: _stats([x.get(key, math.nan) for x in d]) for key in (
                "parent_startup_seconds", "parent_startup_cpu", "children_phase_seconds", "tail_seconds",
                "idle_slot_seconds", "finish_seconds", "finish_cpu", "after_children_seconds",
                "children_phase_parent_cpu", "parent_exit_cpu_seconds", "seed_seconds", "seed_cpu_seconds",
                "redis_seed_cpu_seconds", "redis_cpu_seconds", "launcher_cpu_seconds")},
            "worker_cpu": _stats([c for x in d for c in x.get("worker_cpu", [])]),
            "child_seconds": _stats([s for x in d for s in x.get("child_seconds", [])]),
            "child_cpu": _stats([s for x in d for s in x.get("child_cpu", [])]),
            "shards": d[0].get("shards"),
            "children": {k: _stats([x["children"][k] for x in d if x.get("children")])[0]
                         for k in (d[0].get("children") or {})},
        }
    return table


def efficiencies(results: list[RunResult], cores: int) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per round, each multi-process variant against each one-process variant of its family in the same round.

    ``efficiency`` = images/s / (processes x images/s of x1), issue 11's figure, is the product of three factors
    (C CPU of the tree, N nginx's CPU, W wall; n processes):

        W1 / (n Wn)  =  W1 / (C1 + N1)  x  (C1 + N1) / (Cn + Nn)  x  (Cn + Nn) / (n Wn)
                        ``x1_factor``      ``cpu_ratio``             ``xn_busy``

    (for equal image counts; the hash loops' x2 hashes the corpus n times, so the CPU terms are taken per image).
    N includes redis-server's CPU on the Redis path. ``per_cpu_second`` is C1 / Cn: images per CPU-second of the
    client's tree, n processes against one. ``x1_factor`` is 1 / the cores x1 and nginx keep busy: with n = cores it
    is the ceiling with no overhead at all (one process that already keeps 1.3 cores busy cannot be doubled on 2
    cores); ``cpu_ratio`` is what sharding costs in CPU (start-ups, the parent); ``xn_busy`` is how much of n cores x
    wall the run kept busy (the rest: serial phases, the tail, other processes). ``efficiency_quiet`` is
    ``efficiency`` over the rounds where other processes used less than ``QUIET`` of the cores in both runs.
    """
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for variant in VARIANTS:
        if variant.processes == 1:
            continue
        for base in (v for v in VARIANTS if v.family == variant.family and v.processes == 1):
            rows: dict[str, list[float]] = {"efficiency": [], "x1_factor": [], "cpu_ratio": [], "xn_busy": [],
                                            "per_cpu_second": [], "efficiency_quiet": []}
            for round_ in sorted({r.round for r in results}):
                one = [r for r in results if r.round == round_ and r.client == base.name and r.ok]
                many = [r for r in results if r.round == round_ and r.client == variant.name and r.ok]
                if not (one and many):
                    continue
                x1, xn, n = one[0], many[0], variant.processes
                # the servers' CPU counts as the client's: nginx's, and redis-server's on the Redis path
                busy1 = x1.cpu_seconds + x1.details["nginx_cpu_seconds"] + x1.details.get("redis_cpu_seconds", 0.0)
                busyn = xn.cpu_seconds + xn.details["nginx_cpu_seconds"] + xn.details.get("redis_cpu_seconds", 0.0)
                rows["efficiency"].append(xn.images_per_second / (n * x1.images_per_second))
                rows["x1_factor"].append(x1.wall_seconds / busy1)
                # per image: the hash loops' x2 hashes the corpus twice (a crawl's x2 crawls the same images)
                per1, pern = x1.live_images, xn.live_images
                rows["cpu_ratio"].append((busy1 / per1) / (busyn / pern))
                rows["xn_busy"].append(busyn / (n * xn.wall_seconds))
                rows["per_cpu_second"].append((x1.cpu_seconds / per1) / (xn.cpu_seconds / pern))  # images per CPU-s
                if all(r.details["others_cpu_seconds"] < QUIET * cores * r.wall_seconds for r in (x1, xn)):
                    rows["efficiency_quiet"].append(rows["efficiency"][-1])
            if not rows["efficiency"]:
                continue
            name = f"{variant.name} vs {base.name}"
            out[name] = {key: _stats(values) for key, values in rows.items()}
            out[name]["quiet_rounds"] = (len(rows["efficiency_quiet"]), len(rows["efficiency"]), 0)
    return out


def _range(s: tuple[float, float, float], fmt: str = ".0f") -> str:
    return "-" if math.isnan(s[0]) else f"{s[0]:{fmt}} ({s[1]:{fmt}}-{s[2]:{fmt}})"


def print_report(facts: dict[str, Any], options: dict[str, Any], corpus: dict[str, Any], expected: dict[str, int],
                 startup: dict[str, float], table: dict[str, dict[str, Any]],
                 eff: dict[str, dict[str, tuple[float, float, float]]]) -> None:
    print()
    print(f"scaling_bench  {facts['date']}  nproc {facts['nproc']}  {facts['cpu_model']}  Python {facts['python']}  "
          f"load {facts['load_average'][0]:.2f} at the end")
    print("options: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items()))
    print(f"corpus: {corpus['images']} images, mean {corpus['mean_kb']:.1f} KB, {corpus['formats']}; URL list "
          f"{expected['references']} = {expected['ok']} live + {expected['not_found']} 404 + "
          f"{expected['connection_error']} refused")
    print(f"start-up of one crawl process (one-image crawl): {startup.get('cpu', math.nan):.2f} CPU s, "
          f"{startup.get('wall', math.nan):.2f} s wall")
    print()
    head = (f"{'client':<16} {'runs':>5} {'images/s (wall)':>16} {'CPU ms/image':>19} {'parent CPU s':>17} "
            f"{'cores':>5} {'peak RSS MiB':>12} {'nginx ms/img':>17} {'others':>6} {'idle':>5}")
    print(head)
    print("-" * len(head))
    for name, row in table.items():
        print(f"{name:<16} {row['runs_ok']:>2}/{row['runs']:<2} {_range(row['images_per_second']):>16} "
              f"{_range(row['cpu_ms_per_image'], '.2f'):>19} {_range(row['parent_cpu_seconds'], '.2f'):>17} "
              f"{row['cores_used'][0]:>5.2f} "
              f"{row['peak_rss_mib']:>12.0f} {_range(row['nginx_cpu_ms_per_image'], '.2f'):>17} "
              f"{row['others_share'][0]:>6.0%} {row['idle_share'][0]:>5.0%}")
    print()
    for name, e in eff.items():
        quiet, rounds, _ = e["quiet_rounds"]
        print(f"scaling efficiency {name}: {_range(e['efficiency'], '.2f')}   (images/s / (processes x images/s), "
              f"per round; issue 11's target >= 0.9)")
        print(f"  in the {quiet} of {rounds} rounds where others used < {QUIET:.0%} of the cores in both runs: "
              f"{_range(e['efficiency_quiet'], '.2f') if quiet else 'n/a'}")
        print(f"  images per CPU-second of the tree, x2 / x1: {_range(e['per_cpu_second'], '.2f')}")
        print(f"  = 1 / cores x1 and the servers kept busy {_range(e['x1_factor'], '.2f')} (the ceiling with no "
              f"overhead)\n  x CPU x1 / CPU x2 (nginx's and redis-server's included) {_range(e['cpu_ratio'], '.2f')} "
              f"(sharding's CPU)\n  x share of processes x wall that x2 and the servers kept busy "
              f"{_range(e['xn_busy'], '.2f')} (serial phases, the tail, others)")
    ceiling = eff.get("hash loop x2 vs hash loop x1")
    if ceiling:
        for name, e in eff.items():
            if not name.startswith("hash loop"):
                print(f"{name}: {e['efficiency'][0] / ceiling['efficiency'][0]:.2f} of this machine's own scaling "
                      f"(the hash loops' {ceiling['efficiency'][0]:.2f}), medians")
    for name, row in table.items():
        if math.isnan(row["seed_seconds"][0]):
            continue
        print(f"\nthe Redis path, {name} (medians over rounds): seed {row['seed_seconds'][0]:.2f} s wall, "
              f"{row['seed_cpu_seconds'][0]:.2f} CPU s (+ redis-server {row['redis_seed_cpu_seconds'][0]:.3f}); "
              f"workers: redis-server {_range(row['redis_cpu_ms_per_image'], '.3f')} CPU ms/image "
              f"({row['redis_cpu_seconds'][0]:.2f} CPU s); per worker {_range(row['worker_cpu'], '.1f')} CPU s; "
              f"first to last worker's exit {_range(row['tail_seconds'], '.2f')} s; the launcher "
              f"{row['launcher_cpu_seconds'][0]:.2f} CPU s (not counted)")
    for name, row in table.items():
        if math.isnan(row["children_phase_seconds"][0]):
            continue  # one process: no shards
        base = next((v.name for v in VARIANTS if v.processes == 1 and v.cpus is None and v.name in table
                     and v.family == next(x.family for x in VARIANTS if x.name == name)), None)
        if base is None:
            continue
        one = table[base]
        wall, cpu = row["wall_seconds"][0], row["tree_cpu_seconds"][0]
        cores = facts["nproc"]
        print(f"\nwhere {name}'s time goes (medians over rounds, seconds; {row['shards']} shards):")
        print(f"  wall {wall:.1f} (x1: {one['wall_seconds'][0]:.1f}); {cores} cores x wall = {cores * wall:.1f} "
              f"core-s = crawl tree {cpu:.1f} + nginx {row['nginx_cpu_seconds'][0]:.1f} + others "
              f"{row['others_cpu_seconds'][0]:.1f} + idle {row['idle_share'][0] * cores * wall:.1f}")
        print(f"  crawl CPU {cpu:.1f} vs x1 {one['tree_cpu_seconds'][0]:.1f}: parent {row['parent_cpu_seconds'][0]:.2f}"
              f", {row['shards']} shard children (forked warm from a zygote, or exec'd: each pays up to a "
              f"start-up, {startup.get('cpu', math.nan):.1f} CPU s, which x1 pays once)")
        print(f"  parent: start-up to the first child {row['parent_startup_seconds'][0]:.2f} "
              f"({row['parent_startup_cpu'][0]:.2f} CPU); children {row['children_phase_seconds'][0]:.1f} "
              f"({row['children_phase_parent_cpu'][0]:.2f} CPU in the parent); "
              f"end-of-run pass {row['finish_seconds'][0]:.2f} ({row['finish_cpu'][0]:.2f} CPU); after the last "
              f"child to exit {row['after_children_seconds'][0]:.2f}")
        print(f"  children: per shard {_range(row['child_seconds'], '.1f')} s wall, "
              f"{_range(row['child_cpu'], '.1f')} CPU s; empty process slots {row['idle_slot_seconds'][0]:.1f} "
              f"slot-s, of which the last child alone {row['tail_seconds'][0]:.1f} s")
        if row["children"]:
            c = row["children"]
            print(f"  a child (--profile, medians): engine started after {c['startup_seconds']:.2f} s "
                  f"({c['startup_cpu']:.2f} CPU), first response at {c['to_first_response_seconds']:.2f} s, "
                  f"responses for {c['crawl_seconds']:.1f} s, last response to reactor stop {c['close_seconds']:.2f} s"
                  f" ({c['close_cpu']:.2f} CPU after spider_closed), exit {c['exit_seconds']:.2f} s; "
                  f"{c['total_cpu']:.2f} CPU s until its last line, ~{row['child_cpu'][0] - c['total_cpu']:.2f} more "
                  f"in the interpreter's exit")


# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_timed"]:
        return cmd_timed(argv[1:])
    if argv[:1] == ["_workers"]:
        return cmd_workers(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=3000, help="live images in the corpus (default 3000)")
    parser.add_argument("--dead-share", type=float, default=0.10,
                        help="share of dead links in the URL list, half 404 half refused (default 0.10)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    parser.add_argument("--shard-size", type=int, default=None, metavar="ROWS",
                        help=f"rows per shard (default: the URL list / {DEFAULT_SHARDS}, rounded up)")
    parser.add_argument("--variants", default=None, metavar="NAME[,NAME]",
                        help="the clients to run, comma-separated (default: all): "
                             + ", ".join(v.name for v in VARIANTS))
    parser.add_argument("--profile", action="store_true", help="time each shard child's phases too")
    parser.add_argument("--wait-quiet", type=float, default=15.0, metavar="S",
                        help=f"before each run, wait up to S seconds for a second in which other processes use "
                             f"< {QUIET:.0%}% of the cores (default 15; 0: do not wait)")  # %% for argparse
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a client is killed")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the result as JSON")
    args = parser.parse_args(argv)
    if not 0 <= args.dead_share < 1 or args.images < 1 or args.rounds < 1 or (args.shard_size or 1) < 1:
        parser.error("need --images >= 1, --rounds >= 1, --shard-size >= 1 and 0 <= --dead-share < 1")
    names = [n.strip() for n in args.variants.split(",")] if args.variants else [v.name for v in VARIANTS]
    unknown = sorted(set(names) - {v.name for v in VARIANTS})
    if unknown or not names:
        parser.error(f"unknown --variants {unknown}; known: {', '.join(v.name for v in VARIANTS)}")
    chosen = tuple(v for v in VARIANTS if v.name in names)
    if any(v.workers for v in chosen) and not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        parser.error("the worker variants need redis-server (Debian's redis-server package)")
    os.environ.update(QUIET_THREADS)
    # SIGTERM (a ``timeout``, a CI runner) unwinds like Ctrl-C: nginx and the running client are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    facts = machine_facts()
    print(f"machine: nproc {facts['nproc']}, {facts['cpu_model']}, {facts['date']}", flush=True)
    corpus, files = build_corpus(args.images)
    corpus_facts = describe_corpus(files)

    tmp = Path(tempfile.mkdtemp(prefix="refwatch-scaling-"))
    results: list[RunResult] = []
    startup: dict[str, float] = {}
    try:
        (tmp / "nginx").mkdir()
        with running_nginx(corpus, tmp / "nginx") as port:
            nginx_pid = int((tmp / "nginx" / "nginx.pid").read_text().split()[0])
            dead_port = free_port()
            snapshot = tmp / "snapshot.parquet"
            expected = write_snapshot(snapshot, files, port, dead_port, args.dead_share)
            shard_size = args.shard_size or math.ceil(expected["references"] / DEFAULT_SHARDS)
            from crawler.shards.plan import plan_shards

            shards = len(plan_shards("bench", [str(snapshot)], shard_size, 2).shards)
            print(f"URL list: {expected}; shard size {shard_size} rows -> {shards} shards with --processes 2 "
                  f"(the last ones smaller)", flush=True)
            names = tmp / "names.txt"
            names.write_text("\n".join(name for name, _ in files))
            ctx = Context(snapshot, expected, shard_size, nginx_pid, args.timeout, args.profile, args.wait_quiet,
                          corpus=corpus, names=names)

            one = tmp / "one-image.parquet"
            one_ctx = Context(one, write_snapshot(one, files[:1], port, dead_port, 0.0), shard_size, nginx_pid,
                              args.timeout, False)
            scratch = Path(tempfile.mkdtemp(prefix="startup-", dir=tmp))
            result = run_variant(VARIANTS[0], one_ctx, 0, scratch)
            startup = {"cpu": result.cpu_seconds, "wall": result.wall_seconds}
            print(f"start-up  one-image crawl: {result.cpu_seconds:.2f} CPU s, wall {result.wall_seconds:.2f} s"
                  f"{'' if result.ok else '  FAILED'}", flush=True)

            for round_ in range(args.rounds):
                shift = round_ % len(chosen)
                for variant in chosen[shift:] + chosen[:shift]:
                    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=tmp))
                    try:
                        result = run_variant(variant, ctx, round_ + 1, scratch)
                    finally:
                        shutil.rmtree(scratch, ignore_errors=True)
                    results.append(result)
                    d = result.details
                    own = (f"seed {d['seed_seconds']:4.1f} s {d['seed_cpu_seconds']:4.2f} CPU s  redis "
                           f"{d['redis_cpu_seconds']:4.1f} CPU s" if variant.workers else
                           f"parent {d.get('parent_cpu_seconds', math.nan):5.2f} CPU s")
                    print(f"round {round_ + 1}/{args.rounds}  {variant.name:<16} {result.images_per_second:6.0f} "
                          f"images/s  {result.cpu_ms_per_image:6.2f} CPU ms/image  {own}  "
                          f"{result.peak_rss / MiB:5.0f} MiB  "
                          f"wall {result.wall_seconds:5.1f} s  nginx {d['nginx_cpu_seconds']:4.1f} CPU s  others "
                          f"{d['others_cpu_seconds']:4.1f}  idle {d['machine_idle_seconds']:4.1f} core-s  (waited "
                          f"{d['waited_for_quiet_seconds']:.0f} s)"
                          f"{'' if result.ok else '  FAILED'}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    facts["load_average"] = os.getloadavg()
    table = summarise(results, facts["nproc"] or 1)
    eff = efficiencies(results, facts["nproc"] or 1)
    options = {"images": args.images, "dead_share": args.dead_share, "rounds": args.rounds, "shard_size": shard_size,
               "profile": args.profile, "wait_quiet": args.wait_quiet,
               "variants": repr(",".join(v.name for v in chosen))}
    print_report(facts, options, corpus_facts, expected, startup, table, eff)
    counts = {json.dumps(r.details["outcomes"], sort_keys=True) for r in results if r.ok and "outcomes" in r.details}
    same = len(counts) == 1
    print(f"\noutcome counts {'identical in every run' if same else 'DIFFER between runs'}: {', '.join(counts)}")
    print(f"(benchmark took {time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": facts, "options": options, "corpus": {**corpus_facts, "path": str(corpus)},
            "expected": expected, "startup": startup, "clients": table, "efficiency": eff,
            "runs": [{**asdict(r), "images_per_second": r.images_per_second, "cpu_ms_per_image": r.cpu_ms_per_image}
                     for r in results],
        }, indent=2, default=str))
        print(f"JSON written to {args.json}")
    return 0 if results and all(r.ok for r in results) and same else 1


if __name__ == "__main__":
    sys.exit(main())
