"""Side by side, in one invocation: refwatch crawl, img2dataset and refwatch's hashing alone, on one image corpus.

Not a test: run it by hand from the repository root (as root, or with Debian's ``nginx`` installed) and read
the table it prints. This is the benchmark of issue 10 ("Throughput per core").

    python bench/throughput_bench.py                         # 3,000 images + 10% dead links, 3 rounds
    python bench/throughput_bench.py --images 600 --rounds 1 # a quick look
    python bench/throughput_bench.py --json /tmp/tp.json     # the whole result as JSON too
    python bench/throughput_bench.py --no-img2dataset        # refwatch and the hashing loop only
    python bench/throughput_bench.py --clean                 # delete the cached corpus and img2dataset's venv

What it does:

* **corpus**: ``--images`` photo-like synthetic scenes (``crawler.sample.scenes.scene_image(seed,
  long_side=(320, 1024))``, long side log-uniform), 80% JPEG (quality 80-92), 10% PNG (60% 256-colour
  palette, 40% truecolour: the heavy tail), 10% WebP (quality 75-90): about 56 KB mean, median ~30 KB, the
  size mix of web images. Made once with a process pool and cached in
  ``$TMPDIR/refwatch-throughput-bench/corpus-v<version>-n<N>`` (printed); a pure function of the seed.
* **URL list**: every image once, plus ``--dead-share`` of dead links (default 10% of the list): half ask the
  server for a missing file (404), half a loopback port with nothing listening (refused connection).
  Shuffled deterministically, written as a LAION-style Parquet (``SAMPLE_ID``, ``URL``, ``TEXT``) that both
  refwatch and img2dataset read.
* **server**: Debian's nginx as a child process in its own process group, generated config in a temp dir
  (``daemon off``, one worker, keep-alive, sendfile, ``listen 127.0.0.1:<free port>``, root = the corpus);
  ``apt-get install -y nginx`` if missing and we are root. Stopped at the end whatever happens.
* **clients**, each a child process in its own session, killed (whole group) after ``--timeout`` s; run in
  every round, the order rotated from round to round, so a noisy neighbour hurts all of them alike:

  - ``refwatch all``: ``python -m crawler.cli.main crawl SNAPSHOT --out TMP --allow-private-networks --json
    --per-host 64 --concurrency 64 --no-progress`` (every hash; a run of one shard, which the command binds
    to the CPU it started on since session 8, as ``REFWATCH_PIN_PROCESSES=auto`` does on this machine);
  - ``refwatch no-pdq``: the same with ``-s REFWATCH_HASHES=md5,sha1,sha256,phash,dhash``;
  - ``refwatch all on 1 core``: ``refwatch all`` under ``taskset -c 0``: one process's threads on one core
    (as shard children run, crawler/workers/affinity.py), where they pass the GIL without waking another;
    since the default binds too, this is now a check that it does;
  - ``img2dataset defaults``: img2dataset 1.47.0 (its own venv in the cache dir, never a refwatch
    dependency) with ``--processes_count 1 --thread_count 64 --output_format files`` and its defaults
    otherwise (resizes and re-encodes every image to 256 px JPEG);
  - ``img2dataset no-reencode``: the same with ``--disable_all_reencoding True --resize_mode no`` (fetch,
    sha256, write the files). One download process, so its CPU compares with one refwatch process; its
    multiprocessing parent (idle) is counted too. Its output goes to a temp dir, deleted after each run;
  - ``hash loop all`` / ``hash loop no-pdq``: ``crawler.hashing.digest.hash_bytes(body, algorithms=...)`` over
    every corpus image, read into memory first, ``time.process_time()`` around the loop (after one warm-up
    call: lazy imports, JIT compilation): the CPU limit.

  Before the rounds, each client except the hash loop runs once on a one-image snapshot: its start-up CPU
  (interpreter, imports, engine), printed, and subtracted in the "net" column.
  Wall time is process start to exit (start-up included); CPU is user+sys of the child and every descendant
  it reaped, from ``os.wait4`` (threads included); peak RSS is the largest sum of VmRSS over the child's
  process tree, sampled every 0.2 s, or the largest VmHWM of one of its processes if that is higher.

Columns: images/s (live images over wall seconds, median over rounds, and the range), CPU ms per image (CPU
over *live images only*; dead links are in the denominator of nothing, their count is printed above; the
whole process, start-up included, except for the hash loop: the loop alone), start-up CPU s, net CPU ms per
image (start-up CPU subtracted), peak RSS MiB. Ratios, as issue 10's targets use them (medians over rounds):

* refwatch all, images per CPU-second / img2dataset no-reencode, images per CPU-second (target >= 0.6);
* refwatch whole-crawl CPU per image / hash loop CPU per image, for all and for no-pdq (target <= 1.35).

Correctness, cheaply: refwatch's summary must count the expected ok / not_found / connection_error
outcomes (a warning otherwise); img2dataset's successes are read from its ``*_stats.json``. Network: loopback
only. Temp dirs are removed at the end except the cached corpus and the venv (``--clean`` removes those).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

CORPUS_VERSION = 2  # bump when the corpus recipe changes: the cache is keyed by (N, version)
CACHE_ROOT = Path(tempfile.gettempdir()) / "refwatch-throughput-bench"
IMG2DATASET = "img2dataset==1.47.0"
VENV_DIR = CACHE_ROOT / "venv-img2dataset-1.47.0"
ALL_HASHES = "md5,sha1,sha256,phash,dhash,pdq"
NO_PDQ = "md5,sha1,sha256,phash,dhash"
MiB = 1024 * 1024
SAMPLE_INTERVAL = 0.2
# One BLAS/OpenMP thread everywhere: numpy's small products run slower with a thread per core on 2 cores,
# and the clients must not spread their work over threads we do not expect.
QUIET_THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# ---------------------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------------------


def _draw(seed: int) -> tuple[str, bytes]:
    """Image ``seed`` of the corpus: (file name, encoded bytes); a pure function of the seed."""
    from crawler.sample.scenes import scene_image

    image, _kind = scene_image(seed, long_side=(320, 1024))
    rng = random.Random(0x7B0 * 1_000_003 + seed)
    pick = rng.random()
    out = io.BytesIO()
    if pick < 0.8:
        image.save(out, "JPEG", quality=rng.randint(80, 92))
        suffix = "jpg"
    elif pick < 0.9:
        # 60% palette PNGs (pngquant-style, ~120 KB here), 40% truecolour (~450 KB): the web's heavy tail
        (image if rng.random() < 0.4 else image.quantize(256)).save(out, "PNG")
        suffix = "png"
    else:
        image.save(out, "WEBP", quality=rng.randint(75, 90))
        suffix = "webp"
    return f"{seed:06d}.{suffix}", out.getvalue()


def _draw_to(args: tuple[int, str]) -> tuple[str, int]:
    seed, folder = args
    name, body = _draw(seed)
    (Path(folder) / name).write_bytes(body)
    return name, len(body)


def corpus_dir(images: int) -> Path:
    return CACHE_ROOT / f"corpus-v{CORPUS_VERSION}-n{images}"


def build_corpus(images: int) -> tuple[Path, list[tuple[str, int]]]:
    """The cached corpus folder and its (file name, size) list, made with every core if not cached yet."""
    import multiprocessing

    final = corpus_dir(images)
    manifest = final / "manifest.json"
    if manifest.exists():
        files = [tuple(item) for item in json.loads(manifest.read_text())["files"]]
        print(f"corpus: {final} (cached, {len(files)} images)", flush=True)
        return final, files  # type: ignore[return-value]
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"corpus-n{images}-", dir=CACHE_ROOT))
    os.chmod(work, 0o755)  # nginx's worker runs as nobody
    started = time.monotonic()
    print(f"corpus: drawing {images} images into {final} (once; cached for later runs)...", flush=True)
    try:
        workers = max(1, os.cpu_count() or 1)
        files: list[tuple[str, int]] = []
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for i, item in enumerate(pool.imap(_draw_to, [(seed, str(work)) for seed in range(images)],
                                               chunksize=8), 1):
                files.append(item)
                if i % 500 == 0:
                    print(f"  {i}/{images} ({time.monotonic() - started:.0f} s)", flush=True)
        (work / "manifest.json").write_text(json.dumps({"version": CORPUS_VERSION, "files": files}))
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    print(f"corpus: done in {time.monotonic() - started:.0f} s", flush=True)
    return final, files


def describe_corpus(files: list[tuple[str, int]]) -> dict[str, Any]:
    sizes = [size for _, size in files]
    kinds: dict[str, int] = {}
    for name, _ in files:
        kinds[name.rsplit(".", 1)[1]] = kinds.get(name.rsplit(".", 1)[1], 0) + 1
    return {"images": len(files), "mean_kb": statistics.fmean(sizes) / 1000, "median_kb":
            statistics.median(sizes) / 1000, "total_mb": sum(sizes) / 1e6, "formats": kinds}


# ---------------------------------------------------------------------------------------------------------
# URL list and snapshot
# ---------------------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write_snapshot(path: Path, files: list[tuple[str, int]], port: int, dead_port: int,
                   dead_share: float, seed: int = 20240601) -> dict[str, int]:
    """The LAION-style Parquet both clients read. Returns the expected counts of each outcome."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    live = [f"http://127.0.0.1:{port}/img/{name}" for name, _ in files]
    dead = round(len(files) * dead_share / (1 - dead_share)) if dead_share > 0 else 0
    missing = dead // 2
    refused = dead - missing
    urls = (live + [f"http://127.0.0.1:{port}/img/missing-{i:06d}.jpg" for i in range(missing)]
            + [f"http://127.0.0.1:{dead_port}/img/{i:06d}.jpg" for i in range(refused)])
    random.Random(seed).shuffle(urls)
    table = pa.table({
        "SAMPLE_ID": pa.array(range(len(urls)), pa.int64()),
        "URL": pa.array(urls, pa.string()),
        "TEXT": pa.array([f"a synthetic picture, number {i}" for i in range(len(urls))], pa.string()),
    })
    pq.write_table(table, path)
    return {"references": len(urls), "ok": len(live), "not_found": missing, "connection_error": refused}


# ---------------------------------------------------------------------------------------------------------
# nginx
# ---------------------------------------------------------------------------------------------------------


def find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if os.geteuid() != 0:
        raise SystemExit("nginx is missing: install Debian's nginx (sudo apt-get install -y nginx) and rerun")
    print("nginx is missing: apt-get install -y nginx ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "nginx"], env=env, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"apt-get install -y nginx failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return find_nginx()


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ image/jpeg jpg; image/png png; image/webp webp; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /img/ {{ alias {root}/; }}
        location / {{ return 404; }}
    }}
}}
"""


@contextlib.contextmanager
def running_nginx(root: Path, tmp: Path) -> Iterator[int]:
    """nginx serving ``root`` under /img/ on 127.0.0.1:<port>; yields the port, stops it whatever happens."""
    binary = find_nginx()
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root))
    # nginx runs in its own session: a bench killed with SIGTERM would leave it behind, so SIGTERM unwinds here.
    previous = signal.signal(signal.SIGTERM, _exit_on_term)
    proc = subprocess.Popen([binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                log = (tmp / "error.log").read_text(errors="replace") if (tmp / "error.log").exists() else ""
                raise RuntimeError(f"nginx exited with {proc.returncode}: {err}{log[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("nginx did not listen within 15 s")
            time.sleep(0.1)
        print(f"nginx {binary} (pid {proc.pid}) serving {root} on http://127.0.0.1:{port}/img/", flush=True)
        yield port
    finally:
        _kill_group(proc, signal.SIGTERM)  # TERM = nginx's fast shutdown
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            _kill_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)
        signal.signal(signal.SIGTERM, previous)


def _exit_on_term(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _kill_group(proc: subprocess.Popen[Any], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # each child is started with start_new_session: its pgid is its pid


# ---------------------------------------------------------------------------------------------------------
# Measuring a child
# ---------------------------------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _tree(pid: int) -> list[int]:
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(kids.get(current, ()))
    return out


def _memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes; zeros once it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return rss, hwm


@dataclass
class Measured:
    returncode: int
    wall_seconds: float
    cpu_seconds: float
    peak_rss: int
    stdout: str
    stderr_tail: str
    timed_out: bool = False


def measure(cmd: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
            cwd: Path = REPO_ROOT, scratch: Path) -> Measured:
    """Run ``cmd`` in its own session; wall, CPU (wait4: the child and what it reaped), peak RSS of its tree."""
    out_path, err_path = scratch / "child.stdout", scratch / "child.stderr"
    waited: dict[str, Any] = {}
    done = threading.Event()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, cwd=cwd, start_new_session=True,
                                env={**os.environ, **QUIET_THREADS, "PYTHONUNBUFFERED": "1", **(env or {})})

        def wait() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            waited.update(ended=time.perf_counter(), status=status, usage=usage)
            done.set()

        waiter = threading.Thread(target=wait, name="wait4", daemon=True)
        waiter.start()
        peak = 0
        timed_out = False
        try:
            while not done.is_set():
                pids = _tree(proc.pid)
                memory = [_memory(pid) for pid in pids]
                peak = max(peak, sum(rss for rss, _ in memory), max((hwm for _, hwm in memory), default=0))
                if time.perf_counter() - started > timeout:
                    print(f"  ! {cmd[0]}... passed --timeout {timeout:.0f} s: killing its process group",
                          flush=True)
                    timed_out = True
                    _kill_group(proc, signal.SIGKILL)
                    break
                done.wait(SAMPLE_INTERVAL)
        except BaseException:
            _kill_group(proc, signal.SIGKILL)
            raise
        finally:
            if not done.wait(30):
                _kill_group(proc, signal.SIGKILL)
                done.wait(10)
            # Stragglers (an img2dataset pool worker that outlived its parent) die with the group.
            _kill_group(proc, signal.SIGKILL)
            waiter.join(timeout=5)
    if "status" not in waited:
        raise RuntimeError(f"could not reap pid {proc.pid} ({cmd[0]})")
    usage = waited["usage"]
    stderr = err_path.read_text(errors="replace")
    return Measured(
        returncode=os.waitstatus_to_exitcode(waited["status"]),
        wall_seconds=waited["ended"] - started,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss=peak or usage.ru_maxrss * 1024,
        stdout=out_path.read_text(errors="replace"),
        stderr_tail=stderr[-3000:],
        timed_out=timed_out,
    )


# ---------------------------------------------------------------------------------------------------------
# The clients
# ---------------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    client: str
    round: int
    wall_seconds: float
    cpu_seconds: float  # what the ratios use (the hash loop: process_time around the loop only)
    peak_rss: int
    live_images: int
    ok: bool
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.live_images / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000 * self.cpu_seconds / self.live_images if self.live_images else float("nan")


def run_refwatch(label: str, hashes: str | None, snapshot: Path, expected: dict[str, int], round_: int,
                 scratch: Path, timeout: float, cpus: str | None = None) -> RunResult:
    out = scratch / "refwatch-out"
    cmd = ["taskset", "-c", cpus] if cpus else []
    cmd += [sys.executable, "-m", "crawler.cli.main", "crawl", str(snapshot), "--out", str(out),
           "--allow-private-networks", "--json", "--per-host", "64", "--concurrency", "64", "--no-progress"]
    if hashes is not None:
        cmd += ["-s", f"REFWATCH_HASHES={hashes}"]
    try:
        m = measure(cmd, timeout=timeout, scratch=scratch)
        try:
            summary = json.loads(m.stdout) if m.stdout.strip() else {}
        except json.JSONDecodeError:
            summary = {}
        outcomes = summary.get("outcomes", {})
        good = m.returncode == 0 and not m.timed_out and bool(summary)
        problems = []
        for outcome in ("ok", "not_found", "connection_error"):
            if outcomes.get(outcome, 0) != expected[outcome]:
                problems.append(f"{outcome} {outcomes.get(outcome, 0)} (expected {expected[outcome]})")
        if summary.get("references") != expected["references"]:
            problems.append(f"references {summary.get('references')} (expected {expected['references']})")
        if not good:
            problems.append(f"exit {m.returncode}{' (timed out)' if m.timed_out else ''}: {m.stderr_tail[-800:]}")
        if problems:
            print(f"  WARNING {label}: " + "; ".join(problems), flush=True)
        return RunResult(label, round_, m.wall_seconds, m.cpu_seconds, m.peak_rss, expected["ok"], good,
                         {"outcomes": outcomes, "summary_refs_per_second": summary.get("refs_per_second"),
                          "summary_seconds": summary.get("seconds"), "problems": problems,
                          "hash_ms_in_crawl": hash_ms_in_crawl(out)})
    finally:
        shutil.rmtree(out, ignore_errors=True)


def hash_ms_in_crawl(out: Path) -> float | None:
    """The mean ``hash_ms`` of the crawl's ok rows: CPU of the hashing thread inside ``hash_bytes`` per image
    (``time.thread_time``), which splits the crawl's CPU into its hashing and everything else."""
    import pyarrow.parquet as pq

    parts = sorted(out.glob("runs/*/outcomes/*.parquet"))
    if not parts:
        return None
    table = pq.read_table(parts, columns=["outcome", "hash_ms"])
    values = [ms for outcome, ms in zip(table.column("outcome").to_pylist(), table.column("hash_ms").to_pylist())
              if outcome == "ok" and ms is not None]
    return sum(values) / len(values) if values else None


def run_img2dataset(label: str, extra: list[str], snapshot: Path, expected: dict[str, int], round_: int,
                    scratch: Path, timeout: float) -> RunResult:
    out = scratch / "img2dataset-out"
    cmd = [str(VENV_DIR / "bin" / "img2dataset"), "--url_list", str(snapshot), "--input_format", "parquet",
           "--url_col", "URL", "--caption_col", "TEXT", "--output_folder", str(out), "--output_format", "files",
           "--processes_count", "1", "--thread_count", "64", *extra]
    try:
        m = measure(cmd, timeout=timeout, scratch=scratch, cwd=scratch,
                    env={"PATH": f"{VENV_DIR / 'bin'}:{os.environ.get('PATH', '')}", "WANDB_MODE": "disabled",
                         # albumentations (an img2dataset dependency) asks PyPI for updates at import: not here
                         "NO_ALBUMENTATIONS_UPDATE": "1"})
        stats: dict[str, Any] = {"successes": 0, "count": 0, "failed_to_download": 0, "failed_to_resize": 0}
        errors: dict[str, int] = {}
        for path in out.glob("*_stats.json"):
            shard = json.loads(path.read_text())
            for key in stats:
                stats[key] += int(shard.get(key, 0))
            for message, count in (shard.get("status_dict") or {}).items():
                errors[message] = errors.get(message, 0) + int(count)
        good = m.returncode == 0 and not m.timed_out
        problems = []
        if stats["successes"] != expected["ok"]:
            problems.append(f"successes {stats['successes']} (expected {expected['ok']})")
        if not good:
            problems.append(f"exit {m.returncode}{' (timed out)' if m.timed_out else ''}: {m.stderr_tail[-800:]}")
        if problems:
            print(f"  WARNING {label}: " + "; ".join(problems), flush=True)
        return RunResult(label, round_, m.wall_seconds, m.cpu_seconds, m.peak_rss, expected["ok"], good,
                         {**stats, "status_dict": errors, "problems": problems})
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run_hash_loop(label: str, hashes: str, corpus: Path, files: list[tuple[str, int]], round_: int,
                  scratch: Path, timeout: float) -> RunResult:
    names = scratch / "hashloop-files.txt"
    names.write_text("\n".join(name for name, _ in files))
    cmd = [sys.executable, str(Path(__file__).resolve()), "_hashloop", str(corpus), str(names), hashes]
    m = measure(cmd, timeout=timeout, scratch=scratch)
    try:
        result = json.loads(m.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        result = {}
    good = m.returncode == 0 and not m.timed_out and bool(result)
    if not good:
        print(f"  WARNING {label}: exit {m.returncode}: {m.stderr_tail[-800:]}", flush=True)
    elif result.get("errors"):
        print(f"  WARNING {label}: {result['errors']} images did not decode", flush=True)
    return RunResult(label, round_, result.get("loop_wall_seconds", m.wall_seconds),
                     result.get("loop_cpu_seconds", m.cpu_seconds), m.peak_rss, len(files), good,
                     {"process_cpu_seconds": m.cpu_seconds, "process_wall_seconds": m.wall_seconds,
                      "errors": result.get("errors"), "warm_up_cpu_seconds": result.get("warm_up_cpu_seconds")})


def cmd_hashloop(argv: Sequence[str]) -> int:
    """Child: hash every listed corpus file in memory, print {loop_cpu_seconds, loop_wall_seconds, errors}.
    An optional fourth argument is a ``time.time()`` to start the timed loop at, so that loops in several
    processes (bench/scaling_bench.py's "hash loop x2") run at the same time."""
    corpus, names, hashes = Path(argv[0]), Path(argv[1]), argv[2].split(",")
    start_at = float(argv[3]) if len(argv) > 3 else None
    from crawler.hashing.digest import hash_bytes

    bodies = [(corpus / name).read_bytes() for name in names.read_text().split()]
    # One call first, outside the timed loop: lazy imports and JIT compilation are start-up, not hashing
    # (the crawl pays them in its start-up run, which the "net" column subtracts).
    warm = time.process_time()
    hash_bytes(bodies[0], algorithms=hashes)
    warm = time.process_time() - warm
    errors = 0
    late = 0.0
    if start_at is not None:
        late = max(0.0, time.time() - start_at)
        time.sleep(max(0.0, start_at - time.time()))
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    for body in bodies:
        digest = hash_bytes(body, algorithms=hashes)
        if digest.decode_error is not None:
            errors += 1
    cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started_wall
    print(json.dumps({"loop_cpu_seconds": cpu, "loop_wall_seconds": wall, "images": len(bodies),
                      "errors": errors, "warm_up_cpu_seconds": warm, "late_seconds": late}))
    return 0


# ---------------------------------------------------------------------------------------------------------
# img2dataset's environment
# ---------------------------------------------------------------------------------------------------------


def ensure_img2dataset() -> str | None:
    """Install img2dataset into the benchmark's own venv (once). Returns why it is unavailable, or None."""
    binary = VENV_DIR / "bin" / "img2dataset"
    marker = VENV_DIR / "installed.ok"
    if binary.exists() and marker.exists():
        return None
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    print(f"img2dataset: installing {IMG2DATASET} into {VENV_DIR} (once)...", flush=True)
    try:
        if not (VENV_DIR / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True, capture_output=True,
                           timeout=300)
        done = subprocess.run([str(VENV_DIR / "bin" / "pip"), "install", "-q", IMG2DATASET],
                              capture_output=True, text=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"could not make the venv or run pip: {exc}"
    if done.returncode != 0 or not binary.exists():
        lines = [line for line in (done.stderr + done.stdout).splitlines() if "is ignored" not in line]
        return f"pip install {IMG2DATASET} failed (exit {done.returncode}): " + "\n".join(lines[-15:])
    check = subprocess.run([str(VENV_DIR / "bin" / "python"), "-c", "import img2dataset"],
                           capture_output=True, text=True, timeout=120)
    if check.returncode != 0:
        return f"img2dataset installed but does not import: {check.stderr[-1500:]}"
    marker.write_text(IMG2DATASET + "\n")
    return None


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "kernel": platform.release(), "load_average": os.getloadavg()}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(results: list[RunResult], startup: dict[str, float]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for client in dict.fromkeys(r.client for r in results):
        runs = [r for r in results if r.client == client and r.ok]
        rates = [r.images_per_second for r in runs]
        cpu = [r.cpu_ms_per_image for r in runs]
        base = startup.get(client, 0.0)
        net = [1000 * (r.cpu_seconds - base) / r.live_images for r in runs]
        hashing = [r.details["hash_ms_in_crawl"] for r in runs if r.details.get("hash_ms_in_crawl") is not None]
        table[client] = {
            "runs_ok": len(runs), "runs": sum(r.client == client for r in results),
            "images_per_second": _median(rates), "images_per_second_min": min(rates, default=float("nan")),
            "images_per_second_max": max(rates, default=float("nan")),
            "cpu_ms_per_image": _median(cpu), "cpu_ms_per_image_min": min(cpu, default=float("nan")),
            "cpu_ms_per_image_max": max(cpu, default=float("nan")),
            "startup_cpu_seconds": startup.get(client), "net_cpu_ms_per_image": _median(net),
            "peak_rss_mib": max((r.peak_rss for r in runs), default=0) / MiB,
            "hash_ms_in_crawl": _median(hashing) if hashing else None,
        }
    return table


def ratios(table: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def cpu(client: str) -> float | None:
        row = table.get(client)
        return row["cpu_ms_per_image"] if row and row["runs_ok"] else None

    out: dict[str, float | None] = {}
    rw_all, rw_nopdq, i2d = cpu("refwatch all"), cpu("refwatch no-pdq"), cpu("img2dataset no-reencode")
    loop_all, loop_nopdq = cpu("hash loop all"), cpu("hash loop no-pdq")
    # images per CPU-second of refwatch / of img2dataset = img2dataset's CPU per image / refwatch's
    out["refwatch_all_vs_img2dataset_noreencode"] = i2d / rw_all if rw_all and i2d else None
    out["refwatch_nopdq_vs_img2dataset_noreencode"] = i2d / rw_nopdq if rw_nopdq and i2d else None
    out["crawl_vs_hash_loop_all"] = rw_all / loop_all if rw_all and loop_all else None
    out["crawl_vs_hash_loop_nopdq"] = rw_nopdq / loop_nopdq if rw_nopdq and loop_nopdq else None
    rw_one = cpu("refwatch all on 1 core")
    out["refwatch_all_1core_vs_img2dataset_noreencode"] = i2d / rw_one if rw_one and i2d else None
    out["crawl_1core_vs_hash_loop_all"] = rw_one / loop_all if rw_one and loop_all else None

    def net(client: str) -> float | None:
        row = table.get(client)
        return row["net_cpu_ms_per_image"] if row and row["runs_ok"] and row["startup_cpu_seconds"] else None

    rw_net, i2d_net = net("refwatch all"), net("img2dataset no-reencode")
    out["net_refwatch_all_vs_img2dataset_noreencode"] = i2d_net / rw_net if rw_net and i2d_net else None
    out["net_crawl_vs_hash_loop_all"] = rw_net / loop_all if rw_net and loop_all else None
    return out


def print_report(facts: dict[str, Any], options: dict[str, Any], corpus: dict[str, Any],
                 expected: dict[str, int], table: dict[str, dict[str, Any]], ratio: dict[str, float | None],
                 notes: list[str]) -> None:
    print()
    print(f"throughput_bench  {facts['date']}  nproc {facts['nproc']}  {facts['cpu_model']}  "
          f"Python {facts['python']}  load {facts['load_average'][0]:.2f} at the end")
    print("options: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items()))
    print(f"corpus: {corpus['images']} images, mean {corpus['mean_kb']:.1f} KB, median {corpus['median_kb']:.1f} KB,"
          f" {corpus['total_mb']:.0f} MB, formats {corpus['formats']}")
    print(f"URL list: {expected['references']} references = {expected['ok']} live images + "
          f"{expected['not_found']} 404 + {expected['connection_error']} refused (dead links: "
          f"{expected['not_found'] + expected['connection_error']}, not counted in per-image figures)")
    print()
    head = (f"{'client':<24} {'runs':>5} {'images/s (wall)':>16} {'CPU ms/image':>20} {'start-up':>9} "
            f"{'net ms/img':>10} {'peak RSS MiB':>12}")
    print(head)
    print("-" * len(head))
    for client, row in table.items():
        rate = (f"{row['images_per_second']:.0f} ({row['images_per_second_min']:.0f}-"
                f"{row['images_per_second_max']:.0f})")
        cpu = f"{row['cpu_ms_per_image']:.2f} ({row['cpu_ms_per_image_min']:.2f}-{row['cpu_ms_per_image_max']:.2f})"
        startup = "" if row["startup_cpu_seconds"] is None else f"{row['startup_cpu_seconds']:.2f} s"
        print(f"{client:<24} {row['runs_ok']:>2}/{row['runs']:<2} {rate:>16} {cpu:>20} {startup:>9} "
              f"{row['net_cpu_ms_per_image']:>10.2f} {row['peak_rss_mib']:>12.0f}")
    print()
    for client, row in table.items():
        if row.get("hash_ms_in_crawl") is not None:
            print(f"{client:<24} hashing inside the crawl {row['hash_ms_in_crawl']:.2f} ms/image (thread CPU in "
                  f"hash_bytes), everything else {row['net_cpu_ms_per_image'] - row['hash_ms_in_crawl']:.2f} "
                  f"(start-up subtracted)")
    print()

    def show(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else "n/a"

    print("ratios (medians over rounds)")
    print(f"  refwatch all    images/CPU-s / img2dataset no-reencode: "
          f"{show(ratio['refwatch_all_vs_img2dataset_noreencode'])}   (target >= 0.6)")
    print(f"  refwatch no-pdq images/CPU-s / img2dataset no-reencode: "
          f"{show(ratio['refwatch_nopdq_vs_img2dataset_noreencode'])}")
    print(f"  refwatch all    crawl CPU/image / hash loop all:        "
          f"{show(ratio['crawl_vs_hash_loop_all'])}   (target <= 1.35)")
    print(f"  refwatch no-pdq crawl CPU/image / hash loop no-pdq:     {show(ratio['crawl_vs_hash_loop_nopdq'])}")
    print(f"  refwatch all on 1 core: images/CPU-s / img2dataset no-reencode "
          f"{show(ratio['refwatch_all_1core_vs_img2dataset_noreencode'])}, crawl CPU/image / hash loop all "
          f"{show(ratio['crawl_1core_vs_hash_loop_all'])}")
    print(f"  start-up CPU subtracted: refwatch all / img2dataset no-reencode "
          f"{show(ratio['net_refwatch_all_vs_img2dataset_noreencode'])}, refwatch all / hash loop all "
          f"{show(ratio['net_crawl_vs_hash_loop_all'])}")
    for note in notes:
        print(f"note: {note}")


# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------


def settings_know_hashes() -> bool:
    settings = (REPO_ROOT / "crawler" / "settings.py").read_text()
    return "REFWATCH_HASHES" in settings


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_hashloop"]:
        return cmd_hashloop(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=3000, help="live images in the corpus (default 3000)")
    parser.add_argument("--dead-share", type=float, default=0.10,
                        help="share of dead links in the URL list, half 404 half refused (default 0.10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a client is killed")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the result as JSON")
    parser.add_argument("--no-img2dataset", action="store_true", help="leave img2dataset out")
    parser.add_argument("--clean", action="store_true",
                        help=f"delete the cached corpora and img2dataset's venv ({CACHE_ROOT}) and stop")
    args = parser.parse_args(argv)
    if args.clean:
        shutil.rmtree(CACHE_ROOT, ignore_errors=True)
        print(f"removed {CACHE_ROOT}")
        return 0
    if not 0 <= args.dead_share < 1 or args.images < 1 or args.rounds < 1:
        parser.error("need --images >= 1, --rounds >= 1 and 0 <= --dead-share < 1")
    os.environ.update(QUIET_THREADS)
    started = time.monotonic()
    facts = machine_facts()
    notes: list[str] = []
    print(f"machine: nproc {facts['nproc']}, {facts['cpu_model']}, {facts['date']}", flush=True)

    corpus, files = build_corpus(args.images)
    corpus_facts = describe_corpus(files)
    if not settings_know_hashes():
        notes.append("crawler/settings.py has no REFWATCH_HASHES: 'refwatch no-pdq' computed every hash")
    i2d_problem = None if args.no_img2dataset else ensure_img2dataset()
    if i2d_problem:
        print(f"img2dataset left out: {i2d_problem}", flush=True)
        notes.append(f"img2dataset left out: {i2d_problem.splitlines()[0]}")
    use_i2d = not args.no_img2dataset and i2d_problem is None
    if use_i2d:
        notes.append("img2dataset runs with --processes_count 1 --thread_count 64: one download process "
                     "(plus its idle multiprocessing parent, counted too), comparable with one refwatch process")

    tmp = Path(tempfile.mkdtemp(prefix="refwatch-throughput-"))
    results: list[RunResult] = []
    try:
        nginx_tmp = tmp / "nginx"
        nginx_tmp.mkdir()
        with running_nginx(corpus, nginx_tmp) as port:
            dead_port = free_port()
            snapshot = tmp / "snapshot.parquet"
            expected = write_snapshot(snapshot, files, port, dead_port, args.dead_share)
            print(f"URL list: {expected} (refused ones on 127.0.0.1:{dead_port})", flush=True)
            t = args.timeout
            clients: list[tuple[str, Any]] = [  # name, run(round, scratch, snapshot, expected) -> RunResult
                ("refwatch all", lambda r, s, snap, exp: run_refwatch("refwatch all", None, snap, exp, r, s, t)),
                ("refwatch no-pdq",
                 lambda r, s, snap, exp: run_refwatch("refwatch no-pdq", NO_PDQ, snap, exp, r, s, t)),
                ("refwatch all on 1 core", lambda r, s, snap, exp: run_refwatch(
                    "refwatch all on 1 core", None, snap, exp, r, s, t, cpus="0")),
            ]
            if use_i2d:
                clients += [
                    ("img2dataset defaults", lambda r, s, snap, exp: run_img2dataset(
                        "img2dataset defaults", [], snap, exp, r, s, t)),
                    ("img2dataset no-reencode", lambda r, s, snap, exp: run_img2dataset(
                        "img2dataset no-reencode", ["--disable_all_reencoding", "True", "--resize_mode", "no"],
                        snap, exp, r, s, t)),
                ]
            clients += [
                ("hash loop all", lambda r, s, snap, exp: run_hash_loop(
                    "hash loop all", ALL_HASHES, corpus, files, r, s, t)),
                ("hash loop no-pdq", lambda r, s, snap, exp: run_hash_loop(
                    "hash loop no-pdq", NO_PDQ, corpus, files, r, s, t)),
            ]
            one = tmp / "one-image.parquet"
            one_expected = write_snapshot(one, files[:1], port, dead_port, 0.0)
            startup: dict[str, float] = {}
            for name, run in clients:
                if name.startswith("hash loop"):
                    continue
                scratch = Path(tempfile.mkdtemp(prefix="startup-", dir=tmp))
                try:
                    result = run(0, scratch, one, one_expected)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
                if result.ok:
                    startup[name] = result.cpu_seconds
                print(f"start-up  {name:<24} {result.cpu_seconds:5.2f} CPU s  wall {result.wall_seconds:5.1f} s "
                      f"(one image){'' if result.ok else '  FAILED'}", flush=True)
            for round_ in range(args.rounds):
                shift = round_ % len(clients)
                for name, run in clients[shift:] + clients[:shift]:
                    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=tmp))
                    try:
                        result = run(round_ + 1, scratch, snapshot, expected)
                    finally:
                        shutil.rmtree(scratch, ignore_errors=True)
                    results.append(result)
                    print(f"round {round_ + 1}/{args.rounds}  {name:<24} {result.images_per_second:7.0f} images/s  "
                          f"{result.cpu_ms_per_image:6.2f} CPU ms/image  {result.peak_rss / MiB:5.0f} MiB  "
                          f"wall {result.wall_seconds:5.1f} s{'' if result.ok else '  FAILED'}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    facts["load_average"] = os.getloadavg()
    table = summarise(results, startup)
    ratio = ratios(table)
    options = {"images": args.images, "dead_share": args.dead_share, "rounds": args.rounds,
               "timeout": args.timeout}
    print_report(facts, options, corpus_facts, expected, table, ratio, notes)
    print(f"(benchmark took {time.monotonic() - started:.0f} s; corpus cached in {corpus})")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": facts, "options": options, "corpus": {**corpus_facts, "path": str(corpus)},
            "expected": expected, "startup_cpu_seconds": startup, "clients": table, "ratios": ratio, "notes": notes,
            "runs": [{**asdict(r), "images_per_second": r.images_per_second,
                      "cpu_ms_per_image": r.cpu_ms_per_image} for r in results],
        }, indent=2, default=str))
        print(f"JSON written to {args.json}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
