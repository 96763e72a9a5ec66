"""Benchmark a whole ``refwatch crawl`` against a fast image server on loopback: rate, memory, CPU per reference.

Not a test: run it by hand from the repository root and read the table it prints.

    python bench/crawl_bench.py                              # 5,000 refs, CLI default concurrency (64)
    python bench/crawl_bench.py --concurrency 16,64,128      # one crawl per value, same server and snapshot
    python bench/crawl_bench.py --server sampleweb           # the same crawl against crawler.sample.web
    python bench/crawl_bench.py --flat-memory                # 100,000 refs, mostly 404s; RSS sampled each second
    python bench/crawl_bench.py --flat-memory --refs 200000
    python bench/crawl_bench.py --profile /tmp/crawl.pstats  # one crawl under cProfile (every thread, CPU time)

What runs where (the machine has 2 cores, so each process is counted on its own):

* the image server is a child process (``_serve``), so it shares no GIL with this harness or the crawl. The
  default ``fast`` server is an asyncio HTTP/1.1 keep-alive server answering from pre-built responses in
  memory: ``/img/<seed>.jpg`` is image ``seed % --distinct`` (256x256 ``crawler.sample.images.synthetic_jpeg``),
  ``/status/<code>`` is that status, anything else 404. ``--server sampleweb`` runs ``crawler.sample.web``
  (a ``ThreadingHTTPServer``) instead, its image cache pre-filled with the same bytes, to see whether it keeps
  up. The server's own CPU is measured too: near 1,000 ms per wall second it is the bottleneck.
* the server listens on ``--hosts`` loopback addresses (127.0.0.1 ... 127.0.0.K, one port each) so the
  crawl sees K hosts, as a broad crawl does: Scrapy limits requests per host (``--per-host``, default 8), so
  with one host ``--concurrency`` above 8 would change nothing.
* the crawl is ``python -m crawler.cli.main crawl SNAPSHOT --out DIR --run-id ID --allow-private-networks --json
  --no-progress [--concurrency N] [--per-host N]``, a child process. Its wall time (including start-up) and
  CPU come from ``os.wait4`` on it; its peak RSS is the last VmHWM read from ``/proc/<pid>/status`` while it
  runs (not ``ru_maxrss``: Linux carries the forking harness's own high-water mark over the exec into it); progress is the number of outcome rows in the Parquet parts it has
  written so far (footers only; the crawl is not slowed by being watched).
* the snapshot is a LAION-like Parquet file (``SAMPLE_ID``, ``URL``, ``TEXT``): ``--not-found-share`` of the
  references are ``/status/404`` (default 5%; 95% with ``--flat-memory``), the rest images.

Columns of the table: refs (rows in the summary), wall s (process start to exit), refs/s wall and refs/s as
the summary reports it (from the engine's start, so without Python and Scrapy start-up), peak RSS MiB,
crawl CPU ms/ref (user+sys of the crawl process over refs, start-up and hashing threads included), CPU % (of
one core), hash ms (mean ``hash_ms`` of ok rows: wall time inside a hashing thread, GIL waits included), server
CPU ms/ref, and other % (CPU that other processes on the machine used meanwhile, from /proc/stat: on a shared
2-core machine anything above ~10% makes the rates untrustworthy; CPU ms/ref suffers less).

With ``--flat-memory`` it also prints the crawl's RSS at 0/10/25/50/75/90/100% of the rows written and a
straight-line fit of RSS against rows from 25% on (MiB per 100k refs, and what that would add over 5M).
``--env NAME=VALUE`` sets environment variables of the crawl process only, for diagnosis (for example
``ARROW_DEFAULT_MEMORY_POOL=system``); settings stay the CLI's.

``--profile FILE`` runs the crawl under cProfile with a profiler in every thread (the hashing and Parquet
threads included), saves the merged stats to FILE (``python -m pstats FILE``) and prints the costs per
reference grouped by library (builtins charged to their caller's library), then the top functions. The clock
is per-thread CPU time (``--profile-timer cpu``, the default: a system call per event, so call-heavy code is
overstated) or cProfile's own (``--profile-timer wall``: idle waits are left out of the report, but a hashing
thread's wait for the GIL counts against the C call it waited in, so hashing is overstated). Either way profiling
slows the crawl 2-4x: read the shares, and scale them to the unprofiled CPU ms/ref.
``--profile-report FILE --refs N`` prints the report of a saved profile again.

Everything runs on 127.0.0.1-127.0.0.K; every server started here is stopped (also on Ctrl-C), every loop
has a deadline (``--timeout``, ``--wait-quiet``), and outputs go to a temporary folder unless ``--keep DIR`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MiB = 1024 * 1024
SERVER_START_TIMEOUT = 300.0  # generating 1,000 images takes ~7 s on 2 cores (one BLAS thread each)
STATUS_CODES = (404, 410, 403, 500)

# ---------------------------------------------------------------------------------------------------------
# The image servers (child process: ``crawl_bench.py _serve``)
# ---------------------------------------------------------------------------------------------------------


def _make_images(distinct: int) -> list[bytes]:
    """``distinct`` synthetic 256x256 JPEGs, made with every core (deterministic: a pure function of seed)."""
    from concurrent.futures import ProcessPoolExecutor

    from crawler.sample.images import synthetic_jpeg

    workers = max(1, min(os.cpu_count() or 1, 4))
    if distinct < 50 or workers == 1:
        return [synthetic_jpeg(seed) for seed in range(distinct)]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(synthetic_jpeg, range(distinct), chunksize=25))


def _response(status: int, body: bytes, content_type: str) -> bytes:
    reason = {200: "OK", 403: "Forbidden", 404: "Not Found", 410: "Gone", 500: "Internal Server Error"}
    head = (f"HTTP/1.1 {status} {reason.get(status, 'Status')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode("latin-1") + body


_IMG_PATH = re.compile(rb"/img/(\d+)\.jpg")
_STATUS_PATH = re.compile(rb"/status/(\d{3})")
_MAX_HEAD = 64 * 1024


class _FastHTTP(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and pipelining, GET/HEAD only, every answer pre-built: nothing per request
    but a find, a regex match and one write."""

    def __init__(self, images: list[bytes], statuses: dict[int, bytes], not_found: bytes, counts: dict[str, int]):
        self.images = images
        self.statuses = statuses
        self.not_found = not_found
        self.counts = counts
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.counts["connections"] += 1

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    self.transport.close()
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            line_end = head.find(b"\r\n")
            request_line = head if line_end < 0 else head[:line_end]
            parts = request_line.split(b" ")
            if len(parts) != 3:
                self.transport.write(_response(400, b"bad request\n", "text/plain"))
                self.transport.close()
                return
            method, target, _ = parts
            path = target.split(b"?", 1)[0]
            answer = self._answer(path)
            if method == b"HEAD":
                answer = answer[: answer.index(b"\r\n\r\n") + 4]
            self.transport.write(answer)
            if b"connection: close" in head.lower():
                self.transport.close()
                return

    def _answer(self, path: bytes) -> bytes:
        match = _IMG_PATH.fullmatch(path)
        if match:
            self.counts["images"] += 1
            return self.images[int(match[1]) % len(self.images)]
        match = _STATUS_PATH.fullmatch(path)
        if match:
            self.counts["statuses"] += 1
            code = int(match[1])
            answer = self.statuses.get(code)
            if answer is None:
                answer = self.statuses[code] = _response(code, f"status {code}\n".encode(), "text/plain")
            return answer
        self.counts["other"] += 1
        return self.not_found


def _wait_for_stdin_eof(on_eof: Any) -> threading.Thread:
    """The harness closes our stdin to stop us (and so does its death): call ``on_eof`` then."""

    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(4096):
                pass
        on_eof()

    thread = threading.Thread(target=watch, name="stdin-eof", daemon=True)
    thread.start()
    return thread


def serve_fast(hosts: list[str], images: list[bytes]) -> None:
    counts = {"connections": 0, "images": 0, "statuses": 0, "other": 0}
    image_answers = [_response(200, body, "image/jpeg") for body in images]
    statuses = {code: _response(code, f"status {code}\n".encode(), "text/plain") for code in STATUS_CODES}
    not_found = _response(404, b"not found\n", "text/plain")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        servers = []
        for host in hosts:
            servers.append(await loop.create_server(
                lambda: _FastHTTP(image_answers, statuses, not_found, counts), host, 0, backlog=1024))
        bases = [f"http://{host}:{s.sockets[0].getsockname()[1]}" for host, s in zip(hosts, servers)]
        print("READY " + json.dumps(bases), flush=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        _wait_for_stdin_eof(lambda: loop.call_soon_threadsafe(stop.set))
        await stop.wait()
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()

    asyncio.run(main())
    print("STATS " + json.dumps(counts), flush=True)


def serve_sampleweb(hosts: list[str], images: list[bytes]) -> None:
    from crawler.sample.web import SampleWeb

    webs = [SampleWeb(host=host) for host in hosts]
    # Bench-only peek at a private cache: fill it with the bytes the fast server sends, so both serve the
    # same bodies and neither pays for drawing images during the crawl.
    shared: dict[tuple[int, str, tuple[int, int]], bytes] = {
        (seed, "JPEG", (256, 256)): body for seed, body in enumerate(images)}
    for web in webs:
        web._server._images = shared  # noqa: SLF001
    stopped = threading.Event()
    for web in webs:
        web.start()
    try:
        print("READY " + json.dumps([web.base_url for web in webs]), flush=True)
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        _wait_for_stdin_eof(stopped.set)
        while not stopped.wait(1.0):
            pass
    finally:
        for web in webs:
            web.stop()
    hits = sum(sum(web.hits.values()) for web in webs)
    print("STATS " + json.dumps({"requests": hits}), flush=True)


def cmd_serve(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="crawl_bench.py _serve")
    parser.add_argument("--kind", choices=["fast", "sampleweb"], default="fast")
    parser.add_argument("--hosts", type=int, default=1)
    parser.add_argument("--distinct", type=int, default=1000)
    args = parser.parse_args(argv)
    hosts = [f"127.0.0.{i}" for i in range(1, args.hosts + 1)]
    images = _make_images(args.distinct)
    (serve_fast if args.kind == "fast" else serve_sampleweb)(hosts, images)
    return 0


@dataclass
class Server:
    """The image server child process; ``bases`` are its base URLs, one per loopback host."""

    proc: subprocess.Popen[bytes]
    bases: list[str]
    kind: str

    def cpu_seconds(self) -> float:
        return _proc_cpu_seconds(self.proc.pid)

    def stop(self) -> str:
        """Close its stdin (it stops on EOF); terminate, then kill, if it does not. Returns its STATS line."""
        try:
            out, _ = self.proc.communicate(timeout=15)  # closes stdin first
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                out, _ = self.proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate(timeout=5)
        stats = [line for line in out.decode(errors="replace").splitlines() if line.startswith("STATS ")]
        return stats[-1][len("STATS "):] if stats else "{}"


@contextlib.contextmanager
def running_server(kind: str, hosts: int, distinct: int) -> Iterator[Server]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_serve", "--kind", kind, "--hosts", str(hosts),
           "--distinct", str(distinct)]
    # One BLAS thread: crawler.sample.images's small matrix products run 2-3x slower with OpenBLAS's default
    # thread per core on this 2-core machine (measured: 34 ms vs 14 ms an image).
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT, env=env)
    server: Server | None = None
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        line = b""
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()
                break
        if not line.startswith(b"READY "):
            raise RuntimeError(f"the {kind} server did not start (exit {proc.poll()}, said {line!r})")
        server = Server(proc, json.loads(line[len(b"READY "):]), kind)
        yield server
    finally:
        if server is not None:
            stats = server.stop()
            print(f"[server {kind} stopped: {stats}]", file=sys.stderr)
        elif proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------------------
# Snapshot, crawl, measurement
# ---------------------------------------------------------------------------------------------------------


def write_snapshot(path: Path, bases: list[str], refs: int, not_found_share: float, distinct: int,
                   seed: int = 20240601) -> dict[str, int]:
    """A LAION-like Parquet snapshot; hosts take turns, 404s are scattered at random. Returns expected counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    urls: list[str] = []
    not_found = 0
    for i in range(refs):
        base = bases[i % len(bases)]
        if rng.random() < not_found_share:
            urls.append(f"{base}/status/404")
            not_found += 1
        else:
            urls.append(f"{base}/img/{i % distinct}.jpg")
    table = pa.table({
        "SAMPLE_ID": pa.array(range(refs), pa.int64()),
        "URL": pa.array(urls, pa.string()),
        "TEXT": pa.array([f"a synthetic picture, number {i}" for i in range(refs)], pa.string()),
    })
    pq.write_table(table, path, row_group_size=100_000, compression="zstd")
    return {"ok": refs - not_found, "not_found": not_found}


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM in bytes from /proc/<pid>/status ({} once the process is gone or a zombie)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith((b"VmRSS:", b"VmHWM:")):
                    key, value = line.split(b":", 1)
                    out[key.decode()] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        return {}
    return out


def _machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (all cores), from /proc/stat."""
    with open("/proc/stat", "rb") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def wait_until_quiet(server: Server, max_seconds: float, window: float = 3.0, threshold: float = 0.10) -> float:
    """Wait (at most ``max_seconds``) until other processes use under ``threshold`` of a core; returns their share."""
    deadline = time.monotonic() + max_seconds
    while True:
        machine, served, ours = _machine_busy_seconds(), server.cpu_seconds(), time.process_time()
        time.sleep(window)
        other = (_machine_busy_seconds() - machine - (server.cpu_seconds() - served) - (time.process_time() - ours))
        share = max(0.0, other / window)
        if share < threshold or time.monotonic() >= deadline:
            return share
        print(f"[other processes use {share:.0%} of a core: waiting for a quiet machine]", file=sys.stderr)


def _proc_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


class PartCounter:
    """Outcome rows written so far: the row counts in the footers of the crawl's finished part files."""

    def __init__(self, outcomes_dir: Path) -> None:
        self.dir = outcomes_dir
        self._rows: dict[str, int] = {}

    def rows(self) -> int:
        import pyarrow.parquet as pq

        with contextlib.suppress(OSError):
            for path in self.dir.glob("part-*.parquet"):
                if path.name not in self._rows:
                    with contextlib.suppress(OSError, ValueError):
                        self._rows[path.name] = pq.read_metadata(path).num_rows
        return sum(self._rows.values())


@dataclass
class Sample:
    seconds: float
    rss: int
    rows: int


@dataclass
class CrawlResult:
    label: str
    concurrency: int | None
    returncode: int
    wall_seconds: float
    cpu_seconds: float
    maxrss: int
    summary: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    hash_ms: float | None = None
    server_cpu_seconds: float = 0.0
    other_cpu_seconds: float = 0.0  # used meanwhile by processes other than the crawl, the server and us
    log: Path | None = None

    @property
    def refs(self) -> int:
        return int(self.summary.get("references", 0))


def run_crawl(snapshot: Path, out: Path, run_id: str, *, concurrency: int | None, per_host: int | None,
              server: Server, timeout: float, sample_interval: float, profile: Path | None = None,
              profile_timer: str = "cpu", label: str = "", env: dict[str, str] | None = None) -> CrawlResult:
    args = ["crawl", str(snapshot), "--out", str(out), "--run-id", run_id, "--allow-private-networks", "--json",
            "--no-progress"]
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    if per_host is not None:
        args += ["--per-host", str(per_host)]
    if profile is None:
        cmd = [sys.executable, "-m", "crawler.cli.main", *args]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "_profiled", str(profile), profile_timer, *args]
    run_dir = out / "runs" / run_id
    out.mkdir(parents=True, exist_ok=True)
    stdout_path, log_path = out / f"{run_id}.stdout.json", out / f"{run_id}.log"
    counter = PartCounter(run_dir / "outcomes")
    server_cpu_before = server.cpu_seconds()
    machine_before, harness_before = _machine_busy_seconds(), time.process_time()
    waited: dict[str, Any] = {}
    done = threading.Event()

    with stdout_path.open("wb") as stdout, log_path.open("wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, cwd=REPO_ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

        def wait() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            waited.update(ended=time.perf_counter(), status=status, usage=usage)
            done.set()

        waiter = threading.Thread(target=wait, name="wait4", daemon=True)
        waiter.start()
        samples: list[Sample] = []
        peak_hwm = 0
        deadline = started + timeout
        try:
            while not done.is_set():
                status = _proc_status(proc.pid)
                peak_hwm = max(peak_hwm, status.get("VmHWM", 0))
                if status.get("VmRSS"):
                    samples.append(Sample(time.perf_counter() - started, status["VmRSS"], counter.rows()))
                if time.perf_counter() > deadline:
                    print(f"crawl {run_id} passed --timeout {timeout:.0f} s: killing it", file=sys.stderr)
                    proc.kill()
                    break
                done.wait(sample_interval)
        except BaseException:
            if not done.is_set():
                proc.kill()
            raise
        finally:
            done.wait(30)
            waiter.join(timeout=5)
    if "status" not in waited:
        raise RuntimeError(f"crawl {run_id}: could not reap pid {proc.pid}")
    proc.returncode = os.waitstatus_to_exitcode(waited["status"])  # reaped by wait4, not by Popen
    usage = waited["usage"]
    try:
        summary = json.loads(stdout_path.read_text() or "{}")
    except json.JSONDecodeError:
        summary = {}
    if samples:
        samples.append(Sample(waited["ended"] - started, samples[-1].rss, counter.rows()))
    server_cpu = server.cpu_seconds() - server_cpu_before
    crawl_cpu = usage.ru_utime + usage.ru_stime
    harness_cpu = time.process_time() - harness_before
    other_cpu = (_machine_busy_seconds() - machine_before) - crawl_cpu - server_cpu - harness_cpu
    return CrawlResult(
        label=label or run_id,
        concurrency=concurrency,
        returncode=proc.returncode,
        wall_seconds=waited["ended"] - started,
        cpu_seconds=crawl_cpu,
        maxrss=peak_hwm or usage.ru_maxrss * 1024,  # VmHWM; ru_maxrss (KiB) would include the harness's
        summary=summary,
        samples=samples,
        hash_ms=_mean_hash_ms(run_dir / "outcomes"),
        server_cpu_seconds=server_cpu,
        other_cpu_seconds=max(0.0, other_cpu),
        log=log_path,
    )


def _mean_hash_ms(outcomes_dir: Path) -> float | None:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    try:
        table = ds.dataset(str(outcomes_dir), format="parquet").to_table(
            columns=["hash_ms"], filter=ds.field("outcome") == "ok")
    except (OSError, ValueError):
        return None
    if table.num_rows == 0:
        return None
    return float(pc.mean(table["hash_ms"]).as_py())


# ---------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------


def print_table(results: list[CrawlResult], expected: dict[str, int]) -> None:
    header = (f"{'run':<14}{'conc':>6}{'refs':>9}{'wall s':>9}{'refs/s':>9}{'engine s':>10}{'refs/s*':>9}"
              f"{'peak MiB':>10}{'CPU ms/ref':>12}{'CPU %':>7}{'hash ms':>9}{'srv ms/ref':>12}{'other %':>9}")
    print(header)
    print("-" * len(header))
    for r in results:
        refs = max(r.refs, 1)
        hash_ms = f"{r.hash_ms:.2f}" if r.hash_ms is not None else "-"
        print(f"{r.label:<14}{r.concurrency or 64:>6}{r.refs:>9}{r.wall_seconds:>9.1f}"
              f"{r.refs / r.wall_seconds:>9.0f}{r.summary.get('seconds', float('nan')):>10.1f}"
              f"{r.summary.get('refs_per_second', float('nan')):>9.0f}{r.maxrss / MiB:>10.0f}"
              f"{1000 * r.cpu_seconds / refs:>12.2f}{100 * r.cpu_seconds / r.wall_seconds:>7.0f}{hash_ms:>9}"
              f"{1000 * r.server_cpu_seconds / refs:>12.3f}{100 * r.other_cpu_seconds / r.wall_seconds:>9.0f}")
    print("refs/s = refs / wall time incl. start-up; refs/s* = the summary's (engine start to close); CPU % of "
          "one core, crawl process; srv = the image server process; other % = CPU (of one core) used meanwhile by "
          "other processes on the machine: above ~10% the rates are not trustworthy")
    for r in results:
        outcomes = {k: v for k, v in r.summary.get("outcomes", {}).items() if v}
        want = {k: v for k, v in expected.items() if v}
        if r.other_cpu_seconds > 0.10 * r.wall_seconds:
            print(f"!! {r.label}: other processes used {r.other_cpu_seconds / r.wall_seconds:.0%} of a core meanwhile; "
                  "its rates are not trustworthy")
        if r.returncode != 0 or outcomes != want:
            print(f"!! {r.label}: exit {r.returncode}, outcomes {outcomes}, expected {want}; log: {r.log}")


def print_memory(result: CrawlResult, refs: int) -> None:
    samples = [s for s in result.samples if s.rss]
    if not samples:
        print("no RSS samples")
        return
    print(f"\nRSS of the crawl process ({len(samples)} samples, one every ~"
          f"{samples[-1].seconds / max(len(samples) - 1, 1):.1f} s):")
    print(f"{'progress':>9}{'rows':>10}{'t s':>8}{'RSS MiB':>9}")
    marks = (0.0, 0.10, 0.25, 0.50, 0.75, 0.90, 1.0)
    shown = set()
    for mark in marks:
        hit = next((s for s in samples if s.rows >= mark * refs), samples[-1])
        if id(hit) in shown:
            continue
        shown.add(id(hit))
        print(f"{mark:>8.0%} {hit.rows:>10}{hit.seconds:>8.1f}{hit.rss / MiB:>9.1f}")
    # A straight line through the samples after the first quarter (start-up and the first garbage-collection
    # sawtooth are over by then): its slope is what a longer snapshot would add.
    late = [s for s in samples if s.rows >= 0.25 * refs]
    if len(late) >= 3 and late[-1].rows > late[0].rows:
        n = len(late)
        mean_x = sum(s.rows for s in late) / n
        mean_y = sum(s.rss for s in late) / n
        sxx = sum((s.rows - mean_x) ** 2 for s in late)
        slope = sum((s.rows - mean_x) * (s.rss - mean_y) for s in late) / sxx if sxx else 0.0
        per_100k = slope * 100_000 / MiB
        low, high = min(s.rss for s in late) / MiB, max(s.rss for s in late) / MiB
        print(f"RSS from 25% on: min {low:.1f}, max {high:.1f} MiB; "
              f"fitted slope {per_100k:+.2f} MiB per 100k refs (x50 for a 5M-row snapshot: {per_100k * 50:+.0f} MiB); "
              f"peak (VmHWM) {result.maxrss / MiB:.0f} MiB")


# ---------------------------------------------------------------------------------------------------------
# Profiling (child process: ``crawl_bench.py _profiled FILE crawl ...``)
# ---------------------------------------------------------------------------------------------------------


def cmd_profiled(argv: Sequence[str]) -> int:
    """Run ``crawler.cli.main.main(argv[2:])`` with a cProfile profiler in every thread; argv[:2] = FILE, TIMER.

    TIMER ``cpu`` is ``time.thread_time`` (a system call per event: ~4x slower, and call-heavy code looks
    costlier than it is); ``wall`` is cProfile's own clock (~2x slower, but time spent waiting for the GIL
    counts against whatever was running; idle waits are left out of the report).
    """
    import cProfile

    out, timer, cli_args = Path(argv[0]), argv[1], list(argv[2:])

    def new_profiler() -> cProfile.Profile:
        return cProfile.Profile(time.thread_time) if timer == "cpu" else cProfile.Profile()

    finished: list[cProfile.Profile] = []
    lock = threading.Lock()
    original_run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profiler = new_profiler()
        profiler.enable()
        try:
            original_run(self)
        finally:
            profiler.disable()
            with lock:
                finished.append(profiler)

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    from crawler.cli.main import main

    main_profiler = new_profiler()
    main_profiler.enable()
    try:
        code = main(cli_args)
    finally:
        main_profiler.disable()
        import pstats

        with lock:
            stats = pstats.Stats(main_profiler)
            for profiler in finished:
                stats.add(profiler)
        stats.dump_stats(out)
        print(f"profile: main thread + {len(finished)} finished threads -> {out}", file=sys.stderr)
    return code


_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("/PIL/", "Pillow (decode, convert)"),
    ("/imagehash/", "imagehash (pHash, dHash)"),
    ("/scipy/", "imagehash (pHash, dHash)"),
    ("/pdqhash/", "pdqhash"),
    ("/numpy/", "numpy"),
    ("/pyarrow/", "pyarrow (snapshot + outcome parts)"),
    ("/scrapy/", "Scrapy"),
    ("/twisted/", "Twisted"),
    ("/asyncio/", "asyncio"),
    ("/logging/", "logging"),
    ("/concurrent/", "concurrent.futures"),
    ("/crawler/hashing/digest.py", "refwatch hashing.py"),
    ("/crawler/pipelines/", "refwatch pipelines"),
    ("/crawler/readers/", "refwatch readers"),
    ("/crawler/", "refwatch other"),
    ("/middlewares/", "refwatch middlewares"),
    ("/spiders/", "refwatch spider"),
    ("/w3lib/", "w3lib (URLs)"),
    ("/urllib/", "urllib"),
    ("/parsel/", "parsel"),
    ("/itemadapter/", "itemadapter"),
    ("/pydispatch/", "pydispatch (signals)"),
    ("/zope/", "zope.interface"),
    ("/threading.py", "threading"),
    ("/queue.py", "threading"),
    ("/dataclasses.py", "dataclasses"),
    ("/enum.py", "enum"),
)


def _category(filename: str) -> str:
    for needle, name in _CATEGORIES:
        if needle in filename:
            return name
    if "site-packages" in filename:
        return "other libraries: " + filename.split("site-packages/", 1)[1].split("/", 1)[0]
    return "other stdlib"


# Waiting, not working: left out of the report (they only count with the wall-clock timer).
_IDLE = ("<method 'poll' of 'select.epoll' objects>", "<method 'acquire' of '_thread.lock' objects>",
         "<built-in method time.sleep>", "<method 'acquire' of '_thread.RLock' objects>",
         "<method 'get' of '_queue.SimpleQueue' objects>")


def _builtin_category(name: str) -> str | None:
    """Builtins that are their own cost centre, whatever calls them."""
    if "openssl_" in name or "_hashlib" in name:
        return "hashlib (md5, sha1, sha256)"
    if "select.epoll" in name or "'poll' of" in name:
        return "event loop poll"
    if "socket" in name and ("recv" in name or "send" in name):
        return "socket I/O"
    return None


def report_profile(path: Path, refs: int, top: int = 25) -> None:
    """Costs per reference by library (builtins charged to their caller's library) and the top functions."""
    import pstats

    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    idle = sum(tt for (filename, _, name), (_, _, tt, _, _) in raw.items() if filename == "~" and name in _IDLE)
    raw = {func: entry for func, entry in raw.items() if not (func[0] == "~" and func[2] in _IDLE)}
    total = sum(tt for (_, _, tt, _, _) in raw.values())
    by_category: dict[str, float] = {}
    for func, (_, _, tt, _, callers) in raw.items():
        filename, _, name = func
        if filename == "~":
            own = _builtin_category(name)
            if own is not None or not callers:
                by_category[own or "builtins"] = by_category.get(own or "builtins", 0.0) + tt
                continue
            edge_total = sum(edge[2] for edge in callers.values()) or 1.0
            for caller, edge in callers.items():
                share = tt * edge[2] / edge_total
                category = _category(caller[0]) if caller[0] != "~" else "builtins"
                by_category[category] = by_category.get(category, 0.0) + share
        else:
            by_category[_category(filename)] = by_category.get(_category(filename), 0.0) + tt
    print(f"\nProfile {path}: {total:.2f} s in profiled threads over {refs} refs "
          f"= {1000 * total / max(refs, 1):.2f} ms/ref (inflated by the profiler); {idle:.1f} s idle waits left out")
    print(f"{'where the CPU goes (self time; builtins charged to their caller)':<58}{'ms/ref':>8}{'share':>7}")
    for category, seconds in sorted(by_category.items(), key=lambda kv: -kv[1]):
        if seconds / total < 0.005:
            continue
        print(f"  {category:<56}{1000 * seconds / max(refs, 1):>8.3f}{100 * seconds / total:>6.1f}%")
    print(f"\nTop {top} functions by self time:")
    print(f"{'self ms/ref':>12}{'cum ms/ref':>11}{'calls/ref':>10}  function")
    ranked = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    for (filename, line, name), (_, ncalls, tt, ct, _) in ranked:
        where = name if filename == "~" else f"{_short(filename)}:{line}({name})"
        print(f"{1000 * tt / refs:>12.3f}{1000 * ct / refs:>11.3f}{ncalls / refs:>10.2f}  {where}")
    interesting = ("hash_bytes", "_decode_and_hash", "_perceptual_hashes", "_pdq", "parse", "failed", "_row",
                   "process_item", "write_part", "_flush", "start", "_batch_references", "process_response",
                   "process_request", "invalid_url_reason", "emit", "handle", "log")
    print("\nCumulative time of refwatch entry points and logging:")
    for (filename, line, name), (_, ncalls, tt, ct, _) in sorted(raw.items(), key=lambda kv: -kv[1][3]):
        local = any(part in filename for part in ("/crawler/", "/middlewares/", "/spiders/"))
        logging_call = "/logging/" in filename and name in ("emit", "handle", "callHandlers", "_log")
        if (local and name in interesting) or logging_call:
            print(f"{1000 * ct / refs:>12.3f} ms/ref cum {ncalls / refs:>7.2f} calls/ref  "
                  f"{_short(filename)}:{line}({name})")


def _short(filename: str) -> str:
    for marker in ("site-packages/", str(REPO_ROOT) + "/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crawl_bench.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refs", type=int, default=None, help="references (default 5000; 100000 --flat-memory)")
    parser.add_argument("--concurrency", default=None,
                        help="crawl --concurrency; a comma list runs one crawl each (default: the CLI's, 64)")
    parser.add_argument("--per-host", type=int, default=None, help="crawl --per-host (default: the CLI's, 8)")
    parser.add_argument("--hosts", type=int, default=16, help="loopback hosts 127.0.0.1..K (default 16)")
    parser.add_argument("--distinct", type=int, default=1000, help="distinct images served (default 1000)")
    parser.add_argument("--not-found-share", type=float, default=None,
                        help="share of /status/404 references (default 0.05; 0.95 with --flat-memory)")
    parser.add_argument("--flat-memory", action="store_true",
                        help="a larger, mostly-404 snapshot; print the crawl's RSS as it progresses")
    parser.add_argument("--server", choices=["fast", "sampleweb"], default="fast")
    parser.add_argument("--profile", type=Path, default=None, help="run once under cProfile, save stats here")
    parser.add_argument("--profile-timer", choices=["cpu", "wall"], default="cpu",
                        help="cProfile clock: per-thread CPU (default, ~4x overhead) or wall (~2x, GIL waits count)")
    parser.add_argument("--profile-report", type=Path, default=None,
                        help="only print the report of a saved profile (with --refs: the refs it covered)")
    parser.add_argument("--sample-interval", type=float, default=1.0, help="seconds between RSS samples")
    parser.add_argument("--timeout", type=float, default=1800.0, help="kill a crawl after this many seconds")
    parser.add_argument("--wait-quiet", type=float, default=300.0, metavar="SECONDS",
                        help="before each crawl, wait up to this long for other processes to go quiet (default 300)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for the crawl process, for diagnosis (e.g. ARROW_DEFAULT_MEMORY_POOL=system)")
    parser.add_argument("--keep", type=Path, default=None, help="keep snapshot, outputs and logs in this folder")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the results as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_serve"]:
        return cmd_serve(argv[1:])
    if argv[:1] == ["_profiled"]:
        return cmd_profiled(argv[1:])
    args = build_parser().parse_args(argv)
    if args.profile_report is not None:
        report_profile(args.profile_report, args.refs or 5000)
        return 0
    refs = args.refs or (100_000 if args.flat_memory else 5000)
    share = args.not_found_share if args.not_found_share is not None else (0.95 if args.flat_memory else 0.05)
    concurrencies: list[int | None] = (
        [int(c) for c in args.concurrency.split(",")] if args.concurrency else [None])
    if args.profile is not None:
        concurrencies = concurrencies[:1]
    if not 1 <= args.hosts <= 254:
        raise SystemExit("--hosts must be 1..254")

    env = dict(item.split("=", 1) for item in args.env)
    work = args.keep or Path(tempfile.mkdtemp(prefix="refwatch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results: list[CrawlResult] = []
    try:
        t = time.perf_counter()
        with running_server(args.server, args.hosts, args.distinct) as server:
            print(f"[{args.server} server up in {time.perf_counter() - t:.1f} s on {len(server.bases)} hosts, "
                  f"{args.distinct} distinct images]", file=sys.stderr)
            snapshot = work / "snapshot.parquet"
            expected = write_snapshot(snapshot, server.bases, refs, share, args.distinct)
            print(f"[snapshot {snapshot}: {refs} refs, {expected}]", file=sys.stderr)
            for i, concurrency in enumerate(concurrencies):
                run_id = f"bench-{i}-c{concurrency or 'default'}"
                if args.wait_quiet > 0:
                    wait_until_quiet(server, args.wait_quiet)
                print(f"[crawl {run_id} ...]", file=sys.stderr)
                result = run_crawl(snapshot, work / "out", run_id, concurrency=concurrency, per_host=args.per_host,
                                   server=server, timeout=args.timeout, sample_interval=args.sample_interval,
                                   profile=args.profile, profile_timer=args.profile_timer,
                                   label=f"{args.server}-{run_id.split('-', 2)[2]}", env=env)
                results.append(result)
                print(f"[crawl {run_id}: exit {result.returncode}, {result.wall_seconds:.1f} s]", file=sys.stderr)
        print(f"\nrefwatch crawl benchmark: {refs} refs ({share:.0%} 404), {args.hosts} loopback hosts, "
              f"per-host {args.per_host or 8}, {args.server} server, {os.cpu_count()} CPUs"
              + (f", crawl env {env}" if env else ""))
        print_table(results, expected)
        if args.flat_memory:
            for result in results:
                print_memory(result, refs)
        if args.profile is not None and results:
            report_profile(args.profile, max(results[0].refs, 1))
        if args.json_out is not None:
            args.json_out.write_text(json.dumps([{
                "label": r.label, "concurrency": r.concurrency, "refs": r.refs, "returncode": r.returncode,
                "wall_seconds": r.wall_seconds, "cpu_seconds": r.cpu_seconds, "peak_rss_bytes": r.maxrss,
                "summary_seconds": r.summary.get("seconds"),
                "summary_refs_per_second": r.summary.get("refs_per_second"),
                "hash_ms": r.hash_ms, "server_cpu_seconds": r.server_cpu_seconds,
                "other_cpu_seconds": r.other_cpu_seconds,
                "rss_samples": [[s.seconds, s.rss, s.rows] for s in r.samples],
            } for r in results], indent=1))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"[outputs kept in {work}]", file=sys.stderr)
    return 0 if results and all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the table piped into head(1)
        sys.exit(0)
