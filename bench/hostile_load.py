"""Load with hostility: a whole ``refwatch crawl`` of many references where 1 in 10 answers is hostile.

Not a test: run it by hand from the repository root and read what it prints.

    python bench/hostile_load.py                       # 100,000 refs, --timeout 5, everything else default
    python bench/hostile_load.py --refs 20000 --timeout 10
    python bench/hostile_load.py --refs 20000 --without ratelimit   # every kind but the 429s
    python bench/hostile_load.py --refs 5000 -- -s REFWATCH_DECODE_PIXEL_BUDGET=1000000000   # more crawl options

It answers issue 12's "Load with hostility": does a crawl process stay under its memory ceiling and finish,
giving every reference its row, when the web fights back? The site is a child process (``_serve``): an asyncio
HTTP/1.1 keep-alive server on ``--hosts`` loopback addresses (127.0.0.1 ... 127.0.0.K, one port each; Scrapy
limits requests per host, so K hosts let the default 64 requests run at once). 9 references in 10 are
``/img/<n>.jpg``, web-sized synthetic JPEGs (256x256, ``crawler.sample.images``, as ``bench/crawl_bench.py``
serves them); the 10th is hostile, its kind taken in turn from:

====================  ==============================================================  ==================
kind                  what the server does                                            expected outcome
====================  ==============================================================  ==================
``chunked``           a chunked body without end (stops ~12 MiB past 50 MiB)          too_large
``headers``           header lines without end (~2 MB)                                http_error
``drip``              a Content-Length of 1 MB, then one byte every 0.5 s              timeout
``gzip``              4 x 50 MiB of zeros gzip-compressed (~200 kB on the wire)        too_large
``bomb``              a PNG whose header says 20000x20000 (1-bit, a few kB)           decode_error
``garbage``           ``image/jpeg`` whose bytes are not an image                     decode_error
``ratelimit``         429 with ``Retry-After: 1``, every time                         http_error
``reset``             the connection closed with a TCP reset, nothing answered        connection_error
====================  ==============================================================  ==================

and 1 reference in ``--big-every`` (default 2,000) is the largest legal RGB PNG (48 megapixels at the default
limit: ``crawler.sample.hostile.big_png()``, 0.7 MB), decoded and
hashed: what the decode budget is for.

The crawl is ``python -m crawler.cli.main crawl SNAPSHOT --processes 1 --allow-private-networks --json
--no-progress --timeout T`` at the default settings otherwise (64 in flight, 8 per host, 2 retries, 50 MiB
bodies, 48-megapixel images, the default decode and body budgets). ``--timeout`` is the only one changed, to 5 s by
default: a drip-fed answer holds a request slot for the whole timeout, three times (timeouts are retried),
so at the default 30 s the 1,250 of 100,000 references would keep slots busy for ~30 minutes on their own.

It prints refs/s (wall, start-up included), CPU per reference of the crawl process (user+sys from
``os.wait4``, hashing threads included) and of the server, the crawl's peak RSS (``VmHWM`` from
``/proc/<pid>/status``, sampled each second, as ``bench/crawl_bench.py`` does), the RSS along the way, the
outcome counts per kind, and whether every reference got exactly one row. Everything runs on loopback, the
server is stopped on exit (also on Ctrl-C), and outputs go to a temporary folder unless ``--keep DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "bench")]

from crawler.sample.hostile import big_png, gzip_bomb, png_bomb  # noqa: E402
import crawl_bench  # noqa: E402 - the image maker and /proc readers, shared with the crawl benchmark

MiB = 1024 * 1024
MAX_BYTES = 50 * MiB  # DOWNLOAD_MAXSIZE, the default --max-bytes
HOSTILE = ("chunked", "headers", "drip", "gzip", "bomb", "garbage", "ratelimit", "reset")
EXPECTED = {"img": "ok", "big": "ok", "chunked": "too_large", "headers": "http_error", "drip": "timeout",
            "gzip": "too_large", "bomb": "decode_error", "garbage": "decode_error", "ratelimit": "http_error",
            "reset": "connection_error"}

# ---------------------------------------------------------------------------------------------------------
# The site (child process: ``hostile_load.py _serve``)
# ---------------------------------------------------------------------------------------------------------


def _answer(status: str, content_type: str, body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}"
            f"Connection: keep-alive\r\n\r\n").encode("latin-1") + body


class Site:
    """Every answer the site gives: pre-built bytes, or a coroutine for the ones that stream."""

    def __init__(self, images: list[bytes]) -> None:
        self.images = [_answer("200 OK", "image/jpeg", body) for body in images]
        self.fixed = {
            "big": _answer("200 OK", "image/png", big_png()),
            "gzip": _answer("200 OK", "image/jpeg", gzip_bomb(4 * MAX_BYTES), "Content-Encoding: gzip\r\n"),
            "bomb": _answer("200 OK", "image/png", png_bomb(20000, 20000)),
            "garbage": _answer("200 OK", "image/jpeg", b"\xff\xd8\xff\xe0 this is not really a jpeg " * 40),
            "ratelimit": _answer("429 Too Many Requests", "text/plain", b"slow down\n", "Retry-After: 1\r\n"),
        }
        self.not_found = _answer("404 Not Found", "text/plain", b"not found\n")
        self.counts: Counter[str] = Counter()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode("latin-1")
                kind, _, rest = target.strip("/").partition("/")
                self.counts[kind] += 1
                if kind == "img":
                    writer.write(self.images[int(rest.split(".")[0]) % len(self.images)])
                elif kind in self.fixed:
                    writer.write(self.fixed[kind])
                elif kind in ("chunked", "headers", "drip", "reset"):
                    await getattr(self, "_" + kind)(writer)
                    return
                else:
                    writer.write(self.not_found)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, IndexError, ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _chunked(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n")
        block = b"\x00" * (64 * 1024)
        frame = b"%x\r\n%s\r\n" % (len(block), block)
        for _ in range(MAX_BYTES // len(block) + 200):
            writer.write(frame)
            await writer.drain()

    @staticmethod
    async def _headers(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n")
        lines = (b"X-Filler: " + b"a" * 100 + b"\r\n") * 64
        for _ in range(2 * MiB // len(lines)):
            writer.write(lines)
            await writer.drain()

    @staticmethod
    async def _drip(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000\r\n\r\n\xff\xd8")
        for _ in range(240):  # two minutes at most
            await writer.drain()
            if writer.is_closing():
                return
            await asyncio.sleep(0.5)
            writer.write(b"\x00")

    @staticmethod
    async def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


def cmd_serve(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="hostile_load.py _serve")
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--distinct", type=int, default=1000)
    args = parser.parse_args(argv)
    site = Site(crawl_bench._make_images(args.distinct))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        servers = [await asyncio.start_server(site.handle, f"127.0.0.{i}", 0, backlog=1024, limit=256 * 1024)
                   for i in range(1, args.hosts + 1)]
        bases = [f"http://127.0.0.{i}:{s.sockets[0].getsockname()[1]}" for i, s in enumerate(servers, 1)]
        print("READY " + json.dumps(bases), flush=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        crawl_bench._wait_for_stdin_eof(lambda: loop.call_soon_threadsafe(stop.set))
        await stop.wait()
        for server in servers:
            server.close()

    asyncio.run(main())
    print("STATS " + json.dumps(site.counts), flush=True)
    return 0


@contextlib.contextmanager
def running_site(hosts: int) -> Iterator[crawl_bench.Server]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_serve", "--hosts", str(hosts)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT, env=env)
    server: crawl_bench.Server | None = None
    try:
        assert proc.stdout is not None
        line = b""
        deadline = time.monotonic() + crawl_bench.SERVER_START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 1.0)[0]:
                line = proc.stdout.readline()
                break
        if not line.startswith(b"READY "):
            raise RuntimeError(f"the site did not start (exit {proc.poll()}, said {line!r})")
        server = crawl_bench.Server(proc, json.loads(line[len(b"READY "):]), "hostile")
        yield server
    finally:
        if server is not None:
            print(f"[site stopped: {server.stop()}]", file=sys.stderr)
        elif proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------------------
# Snapshot, crawl, report
# ---------------------------------------------------------------------------------------------------------


def write_snapshot(path: Path, bases: list[str], refs: int, big_every: int, hostile_kinds: Sequence[str],
                   seed: int = 12) -> Counter[str]:
    """A Parquet snapshot: hosts take turns; every 10th reference (at random) hostile, kinds in turn."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    urls, kinds = [], Counter()
    hostile = 0
    for i in range(refs):
        base = bases[i % len(bases)]
        if big_every and i % big_every == big_every // 2:
            # on each host in turn (not always i % hosts's): one content on 20 URLs of a host is a placeholder
            kind, url = "big", f"{bases[i // big_every % len(bases)]}/big/{i}.png"
        elif rng.random() < 0.1:
            kind = hostile_kinds[hostile % len(hostile_kinds)]
            hostile += 1
            url = f"{base}/{kind}/{i}"
        else:
            # each host cycles through all the site's images: one image under 20 URLs of a host, so no
            # placeholder (REFWATCH_PLACEHOLDER_MIN_URLS) at 100,000 references
            kind, url = "img", f"{base}/img/{i // len(bases)}.jpg"
        kinds[kind] += 1
        urls.append(url)
    pq.write_table(pa.table({"SAMPLE_ID": pa.array(range(refs), pa.int64()), "URL": pa.array(urls, pa.string())}),
                   path, compression="zstd")
    return kinds


def run(snapshot: Path, out: Path, timeout: float, server: crawl_bench.Server, deadline: float,
        extra: Sequence[str]) -> dict[str, object]:
    cmd = [sys.executable, "-m", "crawler.cli.main", "crawl", str(snapshot), "--out", str(out), "--run-id", "hostile",
           "--processes", "1", "--allow-private-networks", "--json", "--no-progress", "--timeout", str(timeout),
           *extra]
    counter = crawl_bench.PartCounter(out / "runs" / "hostile" / "outcomes")
    samples: list[tuple[float, int, int]] = []
    peak, peak_at = 0, (0.0, 0)
    server_cpu, machine = server.cpu_seconds(), crawl_bench._machine_busy_seconds()
    log = out.parent / "crawl.log"
    with log.open("wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, cwd=REPO_ROOT)
        waited: dict[str, object] = {}

        def wait() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            waited.update(ended=time.perf_counter(), status=status, usage=usage)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        try:
            while waiter.is_alive():
                status = crawl_bench._proc_status(proc.pid)
                if status.get("VmHWM", 0) > peak:
                    peak, peak_at = status["VmHWM"], (time.perf_counter() - started, counter.rows())
                if status.get("VmRSS"):
                    samples.append((time.perf_counter() - started, status["VmRSS"], counter.rows()))
                if time.perf_counter() - started > deadline:
                    print(f"crawl passed {deadline:.0f} s: killing it", file=sys.stderr)
                    proc.kill()
                waiter.join(1.0)
        finally:
            if proc.poll() is None and waiter.is_alive():
                proc.kill()
            waiter.join(30)
    assert proc.stdout is not None
    summary_text = proc.stdout.read().decode(errors="replace")
    usage = waited["usage"]
    cpu = usage.ru_utime + usage.ru_stime  # type: ignore[attr-defined]
    server_cpu = server.cpu_seconds() - server_cpu
    return {
        "status": os.waitstatus_to_exitcode(waited["status"]),  # type: ignore[arg-type]
        "wall": waited["ended"] - started,  # type: ignore[operator]
        "cpu": cpu,
        "server_cpu": server_cpu,
        "other_cpu": max(0.0, crawl_bench._machine_busy_seconds() - machine - cpu - server_cpu),
        "peak": peak,
        "peak_at": peak_at,
        "samples": samples,
        "summary": json.loads(summary_text) if summary_text.strip().startswith("{") else {},
        "log": log,
    }


def report(result: dict[str, object], kinds: Counter[str], out: Path) -> bool:
    import pyarrow.parquet as pq

    refs = sum(kinds.values())
    rows = pq.read_table(out / "runs" / "hostile" / "outcomes", columns=["ref_id", "url", "outcome"]).to_pylist()
    ids = Counter(row["ref_id"] for row in rows)
    complete = len(rows) == refs and len(ids) == refs
    table: dict[str, Counter[str]] = {}
    for row in rows:
        kind = row["url"].split("/", 4)[3]
        table.setdefault(kind, Counter())[row["outcome"]] += 1
    wall, cpu, peak = result["wall"], result["cpu"], result["peak"]
    print(f"\nrefwatch crawl under hostility: {refs} refs ({refs - kinds['img'] - kinds['big']} hostile, "
          f"{kinds['big']} largest PNGs), exit {result['status']}")
    print(f"  wall {wall:.0f} s = {refs / wall:.0f} refs/s (start-up included); crawl CPU {cpu:.0f} s = "
          f"{1000 * cpu / refs:.2f} ms/ref ({100 * cpu / wall:.0f}% of a core); site CPU "
          f"{1000 * result['server_cpu'] / refs:.2f} ms/ref; other processes {100 * result['other_cpu'] / wall:.0f}% "
          "of a core meanwhile")
    print(f"  peak RSS (VmHWM) {peak / MiB:.0f} MiB, reached by {result['peak_at'][0]:.0f} s "
          f"({result['peak_at'][1]} rows written)")
    samples = result["samples"]
    if samples:
        marks = [samples[min(len(samples) - 1, int(f * (len(samples) - 1)))] for f in (0.1, 0.25, 0.5, 0.75, 1.0)]
        print("  RSS along the way: " + ", ".join(f"{t:.0f} s {rss / MiB:.0f} MiB ({n} rows)" for t, rss, n in marks))
    print(f"  every reference got exactly one row: {'yes' if complete else 'NO'} ({len(rows)} rows, "
          f"{len(ids)} distinct ids)")
    print(f"\n  {'kind':<10}{'refs':>8}  outcomes (expected first)")
    for kind in ["img", "big", *HOSTILE]:
        if kind in kinds:
            got = table.get(kind, Counter())
            want = EXPECTED[kind]
            others = ", ".join(f"{o} {n}" for o, n in got.most_common() if o != want)
            print(f"  {kind:<10}{kinds[kind]:>8}  {want} {got.get(want, 0)}" + (f"; {others}" if others else ""))
    summary = result["summary"]
    if isinstance(summary, dict) and summary:
        print("  summary outcomes: " + json.dumps({k: v for k, v in summary.get("outcomes", {}).items() if v}))
    return complete and result["status"] == 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_serve"]:
        return cmd_serve(argv[1:])
    parser = argparse.ArgumentParser(prog="hostile_load.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refs", type=int, default=100_000)
    parser.add_argument("--hosts", type=int, default=16, help="loopback hosts 127.0.0.1..K (default 16)")
    parser.add_argument("--timeout", type=float, default=5.0, help="crawl --timeout (default 5 s; see above)")
    parser.add_argument("--big-every", type=int, default=2000, help="one largest legal PNG in this many refs")
    parser.add_argument("--without", action="append", default=[], choices=HOSTILE, metavar="KIND",
                        help="leave a hostile kind out of the mix (repeatable)")
    parser.add_argument("--deadline", type=float, default=3600.0, help="kill the crawl after this many seconds")
    parser.add_argument("--keep", type=Path, default=None, help="keep snapshot, outputs and log in this folder")
    parser.add_argument("--rss-trace", type=Path, default=None,
                        help="write the crawl's RSS each second to this CSV (seconds,rss_mib,rows)")
    parser.add_argument("crawl_args", nargs="*", help="more crawl options, after --")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="refwatch-hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        with running_site(args.hosts) as server:
            snapshot = work / "snapshot.parquet"
            mix = [kind for kind in HOSTILE if kind not in args.without]
            kinds = write_snapshot(snapshot, server.bases, args.refs, args.big_every, mix)
            print(f"[snapshot: {dict(kinds)}]", file=sys.stderr)
            result = run(snapshot, work / "out", args.timeout, server, args.deadline, args.crawl_args)
        if args.rss_trace is not None:
            args.rss_trace.write_text("seconds,rss_mib,rows\n" + "".join(
                f"{t:.1f},{rss / MiB:.0f},{n}\n" for t, rss, n in result["samples"]))  # type: ignore[union-attr]
        ok = report(result, kinds, work / "out")
        if not ok:
            print("  the crawl's log ends with:\n" + "\n".join(
                Path(str(result["log"])).read_text(errors="replace").splitlines()[-30:]))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
