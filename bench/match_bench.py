"""Benchmark hash matching: ``crawler.matching.index.HammingIndex`` next to brute force, on one core.

Not a test: run it by hand from the repository root, pinned to one core, and read the table it prints.

    taskset -c 1 python bench/match_bench.py                         # 1M and 10M, pHash r=8 and PDQ r=31
    taskset -c 1 python bench/match_bench.py --sizes 1000000 --algorithms pdq
    taskset -c 1 python bench/match_bench.py --realdata ../shared/realdata   # + Meta's PDQ haystack/needles
    taskset -c 1 python bench/match_bench.py --digests                # md5 exact lookups at 10M, three ways
    taskset -c 1 python bench/match_bench.py --alternatives           # numpy-only MIH and faiss, for comparison

For each algorithm and size: ``n`` random uniform entries (the worst case for bucket sizes), ``--queries``
queries of which half are an entry with 0..r+1 random bits flipped and half random. Columns: build s (from
the packed array), index MB and x raw (raw = 8 bytes a pHash, 32 a PDQ), batch /s (all queries in one
``query`` call), single /s and p50/p99 us (one call per query, as the crawl asks), brute /s (numpy XOR +
``np.bitwise_count`` over the whole array, on ``--brute`` of the same queries in the same run), recall (pairs
the index found / pairs brute force found on those queries; a pair brute force did not find fails the run),
save s / load s (memory-mapped) and batch /s on the loaded index. Rates are per CPU-second of this process,
best of ``--repeat`` runs (the machine is shared: another process's time slices on the same core are not
this code's cost); ``batch wall /s`` is one wall-clock run for comparison. The load average is printed first.

Measured 2026-11-24: AMD EPYC (Zen 4, 32 MiB L3), 2 cores, ``taskset -c 1``, other jobs running (load ~2);
Python 3.11, numpy 2.4, numba 0.68.

The options, against 10M random entries (1M in brackets), each on the same planted queries; lookups/s as
batch / single query; memory as a multiple of the raw hashes:

| option                                                         | pHash r=8                      | PDQ r=31                   | memory        | build 10M    |
|----------------------------------------------------------------|--------------------------------|----------------------------|---------------|--------------|
| (a) MIH in numpy only, same tables, batches of 500 (--alternatives) | 8,400 / 2,100 (13,100 / 2,400) | 835 / 330 (1,560 / 335)    | 2.8x          | 4.9 / 19.7 s |
| (b) faiss 1.15 IndexBinaryMultiHash + range_search, 3x21 bits nflip 2 / 16x16 nflip 1 | 480 / 460 (6,700 / 5,600) | 36 / 28 (615 / 660) | 12x / 8.7x (RSS) | 17.8 / 31.0 s |
| (c) MIH in numba, codes gathered, no prefetching (prototype; PDQ 16x16) | 6,000 / 6,300        | 530 / 660                  | 2.8x / 3.0x   | 1.8 / 6.9 s  |
| (c) + software prefetching, codes gathered (prototypes; PDQ 12x21)     | ~17,000-19,000        | ~3,000                     | 2.8x          |              |
| (c) + 32-bit sketches for 64-bit codes (first version of this module)  | 24,900 / 20,500       | 3,080 / 2,870              | 2.8x          | 3.3 / 5.2 s  |
| chosen: + no early exit in the distance, 64-byte-aligned codes         | 35,900 / 29,500 (80,300 / 53,600) | 4,330 / 4,500 (9,270 / 8,630) | 2.81x (2.89x) | 3.2 / 4.4 s |

numpy alone is latency-bound (every step a pass over thousands of random reads, and ~30 numpy calls per
table per batch); faiss keeps an ``unordered_map`` of id vectors per table and de-duplicates through a set.
Software prefetching was the large step (misses overlap instead of queueing); sketches spare 64-bit codes
most random reads; aligning the codes to 64 bytes, so no 32-byte PDQ row straddles two cache lines, was
worth another 1.4-1.8x for PDQ (the memory-mapped file was already aligned, and faster than the built index).

The chosen index (``taskset -c 1 python bench/match_bench.py --realdata ../shared/realdata --digests --brute 60``):

| case                   | n          | build s | index MB | x raw | batch /s | batch wall /s | single /s | p50 us | p99 us | brute /s | speed-up | recall | pairs | save s   | load s   | loaded /s |
|------------------------|------------|---------|----------|-------|----------|---------------|-----------|--------|--------|----------|----------|--------|-------|----------|----------|-----------|
| phash r=8              |  1,000,000 |   0.478 |     23.1 |  2.89 |   80,342 |        67,878 |    53,606 |   18.5 |   26.4 |      746 |      108 |  1.000 |    25 |   0.0352 |  0.00154 |    85,168 |
| phash r=8              | 10,000,000 |     3.2 |      225 |  2.81 |   35,896 |        33,538 |    29,516 |   32.7 |   59.0 |     30.3 |    1,184 |  1.000 |    28 |     0.34 |  0.00243 |    34,312 |
| pdq r=31               |  1,000,000 |   0.117 |     92.6 |  2.89 |    9,273 |         9,582 |     8,626 |    127 |    267 |     37.8 |      246 |  1.000 |    30 |    0.244 |  0.00301 |     8,483 |
| pdq r=31               | 10,000,000 |    4.42 |      901 |  2.81 |    4,325 |         3,953 |     4,497 |    217 |    293 |     2.97 |    1,456 |  1.000 |    28 |     1.97 |   0.0579 |     5,274 |
| pdq r=31 Meta haystack |      1,350 | 0.00117 |   0.0486 |  1.13 |  141,839 |       139,568 |    71,161 |   13.8 |   14.2 |   23,560 |     6.02 |  1.000 |   250 | 0.000911 | 0.000391 |   131,109 |

Run to run on this shared machine the rates move by up to ~1.5x; the targets (20,000 pHash and 2,000 PDQ
lookups/s against 10M, recall 1.0, memory <= 3x) held in every run measured this way. (An earlier run timed
by wall clock under heavier load saw 15,400 single pHash lookups/s at 10M, p99 471 us: time slices lost to
other processes, which is why rates are now CPU time.)
Layouts: pHash 3 tables of 21-bit keys (18 at 1M) with sketches; PDQ 12 tables of 21-bit keys (18 at 1M)
with positions; the 1,350-entry haystack is simply scanned (one table, no key bits).

md5 digests at 10M (``--digests``; memory is the growth of the process while building, raw = 160 MB):

| option                                   | memory         | build | lookups/s, one at a time |
|------------------------------------------|----------------|-------|--------------------------|
| Python ``set`` of 16-byte ``bytes``      | 911 MB (5.7x)  | 4.0 s | 3,690,000                |
| sorted ``S16`` array + ``np.searchsorted`` | 200 MB (1.2x)  | 3.2 s | 263,000                  |
| ``HammingIndex`` at radius 0 (chosen)    | 267 MB (1.7x)  | 0.7 s | 190,000                  |

The Matcher uses the radius-0 index for md5/sha1/sha256: one code path and one file format for every
algorithm, a third of the set's memory, and ~5 us a lookup (mostly Python) is nothing next to decoding an
image.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crawler.matching.index import HammingIndex, hamming_brute_force, pack_hex  # noqa: E402

WIDTHS = {"phash": (1, 8), "dhash": (1, 8), "pdq": (4, 31)}  # words, default radius


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="entries, comma-separated")
    parser.add_argument("--algorithms", default="phash,pdq", help="phash, dhash, pdq, comma-separated")
    parser.add_argument("--queries", type=int, default=4000, help="queries per run, half planted")
    parser.add_argument("--single", type=int, default=2000, help="queries timed one call each")
    parser.add_argument("--brute", type=int, default=40, help="queries also answered by brute force")
    parser.add_argument("--repeat", type=int, default=3, help="runs per rate; the best is kept")
    parser.add_argument("--radius", action="append", default=[], metavar="ALGO=N", help="override a radius")
    parser.add_argument("--realdata", type=Path, help="folder with pdq/haystack.txt and pdq/needles.txt")
    parser.add_argument("--digests", action="store_true", help="also md5 exact lookups at the largest size")
    parser.add_argument("--alternatives", action="store_true", help="also numpy-only MIH and faiss (slow)")
    parser.add_argument("--compiled", type=float, metavar="N",
                        help="also: compile an N-entry pHash+PDQ text list, then time loading it and building the "
                             "Matcher (and the memory that costs)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    radii = {a: r for a, (_, r) in WIDTHS.items()} | {k: int(v) for k, v in (s.split("=") for s in args.radius)}
    print(f"load average {os.getloadavg()[0]:.2f}, affinity {sorted(os.sched_getaffinity(0))}", flush=True)

    rows = []
    for algorithm in args.algorithms.split(","):
        words, _ = WIDTHS[algorithm]
        for n in (int(float(s)) for s in args.sizes.split(",")):
            rows.append(run(algorithm, words, radii[algorithm], n, args))
            if args.alternatives:
                alternatives(algorithm, words, radii[algorithm], n, args)
    if args.realdata:
        rows.append(run_realdata(args.realdata, args))
    print()
    print_table(rows)
    if args.digests:
        digests(max(int(float(s)) for s in args.sizes.split(",")), args)
    if args.compiled:
        compiled_list(int(args.compiled), args)
    return 0


def compiled_list(n: int, args: argparse.Namespace) -> None:
    """Parse + compile an n-entry list per algorithm once, then time what a crawl does at start: load the
    compiled list, build the Matcher, match one image (in a child process, so its memory is its own)."""
    import subprocess

    from crawler.matching.compiled import compile_hashlist

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in ("phash", "pdq"):
            words = WIDTHS[algorithm][0]
            path = Path(tmp) / f"{algorithm}.txt"
            codes = rng.integers(0, 2**63, size=(n, words), dtype=np.uint64, endpoint=True)
            hexes = codes.astype(">u8").view(np.uint8).reshape(n, 8 * words)
            with path.open("w") as handle:
                for chunk in range(0, n, 1_000_000):
                    handle.write("\n".join(row.tobytes().hex() for row in hexes[chunk:chunk + 1_000_000]) + "\n")
            del codes, hexes
            started = time.perf_counter()
            compile_hashlist(path, algorithm=algorithm)
            compile_s = time.perf_counter() - started
            probe = f"""
import resource, time, numpy as np
def rss():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return np.array([int(status[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile")])
from crawler.matching.loading import load_hashlist
from crawler.matching.matcher import Matcher
import crawler.matching.kernels
before = rss(); t0 = time.perf_counter()
hl = load_hashlist({str(path)!r}, algorithm={algorithm!r}); t1 = time.perf_counter()
m = Matcher([hl]); t2 = time.perf_counter()
m.match({{{algorithm!r}: {"0" * (16 * words)!r}}}); t3 = time.perf_counter()
anon, mapped = rss() - before
print(f"{{t1 - t0:.3f}} {{t2 - t1:.3f}} {{t3 - t2:.4f}} {{anon:.1f}} {{mapped:.1f}} {{hl.from_cache}}")
"""
            out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parents[1]).stdout.split()
            size = (Path(tmp) / f"{algorithm}.txt.rwidx").stat().st_size / 2**20
            print(f"compiled {algorithm} list of {n:,}: compile {compile_s:.1f} s, file {size:.0f} MiB "
                  f"({size * 2**20 / (n * 8 * words):.2f}x raw); load {out[0]} s, Matcher {out[1]} s, "
                  f"first match {out[2]} s; process memory +{out[3]} MiB private, +{out[4]} MiB of the mapped file "
                  f"(shared page cache); from the compiled file: {out[5]}")


def planted_queries(rng: np.random.Generator, codes: np.ndarray, count: int, radius: int) -> np.ndarray:
    """Half: an entry with 0..radius+1 bits flipped (uniformly); half: random."""
    n, words = codes.shape
    queries = rng.integers(0, 2**64, size=(count, words), dtype=np.uint64)
    half = count // 2
    queries[:half] = codes[rng.integers(0, n, half)]
    for i in range(half):
        for bit in rng.choice(64 * words, int(rng.integers(0, radius + 2)), replace=False):
            queries[i, bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    return queries


def best_rate(count: int, repeat: int, call) -> float:  # type: ignore[no-untyped-def]
    """``count`` per CPU-second of this process, the best of ``repeat`` runs of ``call``.

    CPU time, not wall time: the machine is shared, and time slices given to other processes on the same
    core are not this code's cost. (On an idle pinned core the two agree.)
    """
    best = 0.0
    for _ in range(repeat):
        started = time.process_time()
        call()
        best = max(best, count / max(time.process_time() - started, 1e-9))
    return best


def run(algorithm: str, words: int, radius: int, n: int, args: argparse.Namespace) -> dict[str, object]:
    rng = np.random.default_rng(args.seed)
    codes = rng.integers(0, 2**64, size=(n, words), dtype=np.uint64)
    queries = planted_queries(rng, codes, args.queries, radius)
    return measure(f"{algorithm} r={radius}", codes, queries, radius, args)


def run_realdata(folder: Path, args: argparse.Namespace) -> dict[str, object]:
    haystack = pack_hex((folder / "pdq" / "haystack.txt").read_text().split(), 256)
    needles = pack_hex((folder / "pdq" / "needles.txt").read_text().split(), 256)
    return measure("pdq r=31 Meta haystack", haystack, needles, 31, args, brute=len(needles))


def measure(name: str, codes: np.ndarray, queries: np.ndarray, radius: int, args: argparse.Namespace,
            brute: int | None = None) -> dict[str, object]:
    n, words = codes.shape
    print(f"{name}, {n:,} entries: building", flush=True)
    started = time.perf_counter()
    index = HammingIndex.build(codes, radius)
    build_s = time.perf_counter() - started
    print(f"  {index!r} in {build_s:.2f} s", flush=True)
    index.query(queries[:2])  # compile / warm up

    started = time.perf_counter()
    index.query(queries)
    batch_wall = len(queries) / (time.perf_counter() - started)
    batch = best_rate(len(queries), args.repeat, lambda: index.query(queries))
    single = min(args.single, len(queries))
    order = np.random.default_rng(0).permutation(len(queries))[:single]  # planted and random mixed
    latencies = np.empty(single)

    def one_at_a_time() -> None:
        for k, i in enumerate(order):
            started = time.perf_counter()
            index.query(queries[i : i + 1])
            latencies[k] = time.perf_counter() - started

    single_rate = best_rate(single, args.repeat, one_at_a_time)  # latencies: the last run's, wall clock
    print(f"  batch {batch:,.0f}/s ({batch_wall:,.0f}/s wall), single {single_rate:,.0f}/s", flush=True)

    # Brute force on a subset (half planted, half random), the same queries the index answers.
    brute = brute or args.brute
    half = len(queries) // 2
    subset = np.concatenate([np.arange(min(brute // 2, half)), half + np.arange(brute - min(brute // 2, half))])
    subset = subset[subset < len(queries)]
    started = time.process_time()
    expected = hamming_brute_force(codes, queries[subset], radius)
    brute_rate = len(subset) / (time.process_time() - started)
    got = index.query(queries[subset], radius)
    expected_pairs = set(zip(expected[0].tolist(), expected[1].tolist(), expected[2].tolist()))
    got_pairs = set(zip(got[0].tolist(), got[1].tolist(), got[2].tolist()))
    if got_pairs - expected_pairs:
        raise SystemExit(f"{name}: the index reported {len(got_pairs - expected_pairs)} pairs brute force did not")
    recall = len(got_pairs & expected_pairs) / len(expected_pairs) if expected_pairs else 1.0
    print(f"  brute force {brute_rate:,.1f}/s, recall {recall:.3f} on {len(expected_pairs)} pairs", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "index.rwhidx"
        started = time.perf_counter()
        index.save(path)
        save_s = time.perf_counter() - started
        file_mb = path.stat().st_size / 1e6
        started = time.perf_counter()
        loaded = HammingIndex.load(path)
        load_s = time.perf_counter() - started
        loaded.query(queries[:2])
        loaded_batch = best_rate(len(queries), args.repeat, lambda: loaded.query(queries))
        same = all(np.array_equal(a, b) for a, b in zip(loaded.query(queries[subset], radius), got))
        del loaded
    if not same:
        raise SystemExit(f"{name}: the loaded index answers differently")
    print(f"  save {save_s:.2f} s, {file_mb:.0f} MB, load {load_s:.3f} s, loaded batch {loaded_batch:,.0f}/s",
          flush=True)
    return {
        "case": name, "n": n, "build s": build_s, "index MB": index.nbytes / 1e6,
        "x raw": index.nbytes / codes.nbytes, "batch /s": batch, "batch wall /s": batch_wall,
        "single /s": single_rate,
        "p50 us": np.percentile(latencies, 50) * 1e6, "p99 us": np.percentile(latencies, 99) * 1e6,
        "brute /s": brute_rate, "speed-up": batch / brute_rate, "recall": recall, "pairs": len(expected_pairs),
        "save s": save_s, "load s": load_s, "loaded /s": loaded_batch,
    }


def print_table(rows: list[dict[str, object]]) -> None:
    columns = list(rows[0])
    cells = [[_fmt(row[c], c) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[k]) for r in cells)) for k, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(v.rjust(w) if k else v.ljust(w) for k, (v, w) in enumerate(zip(r, widths))) + " |")


def _fmt(value: object, column: str = "") -> str:
    if column == "recall":
        return f"{value:.3f}"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if value < 10 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def rss_bytes() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def digests(n: int, args: argparse.Namespace) -> None:
    """md5 exact lookups at ``n`` entries: Python set of bytes, sorted fixed-width bytes + searchsorted,
    HammingIndex at radius 0. Memory is the RSS growth while building (the packed input excluded)."""
    rng = np.random.default_rng(args.seed)
    codes = rng.integers(0, 2**64, size=(n, 2), dtype=np.uint64)
    present = codes[rng.integers(0, n, args.queries // 2)]
    queries = np.vstack([present, rng.integers(0, 2**64, size=(args.queries - len(present), 2), dtype=np.uint64)])
    raw = codes.astype(">u8").tobytes()
    query_bytes = [queries[i].astype(">u8").tobytes() for i in range(len(queries))]
    print(f"\nmd5, {n:,} entries (raw {codes.nbytes / 1e6:.0f} MB):")

    before = rss_bytes()
    started = time.perf_counter()
    table = {raw[i : i + 16] for i in range(0, len(raw), 16)}
    build_s, memory = time.perf_counter() - started, rss_bytes() - before
    rate = best_rate(len(query_bytes), args.repeat, lambda: [q in table for q in query_bytes])
    print(f"  Python set of bytes:            {memory / 1e6:7.0f} MB ({memory / codes.nbytes:.1f}x), "
          f"build {build_s:.1f} s, {rate:,.0f} lookups/s (one at a time)")
    del table

    before = rss_bytes()
    started = time.perf_counter()
    keys = np.frombuffer(raw, dtype="S16")
    order = np.argsort(keys, kind="stable").astype(np.uint32)
    keys = keys[order]
    build_s, memory = time.perf_counter() - started, keys.nbytes + order.nbytes
    query_keys = np.frombuffer(b"".join(query_bytes), dtype="S16")

    def one_at_a_time() -> None:
        for k in range(len(query_keys)):
            lo = np.searchsorted(keys, query_keys[k : k + 1], "left")
            hi = np.searchsorted(keys, query_keys[k : k + 1], "right")
            order[int(lo[0]) : int(hi[0])]

    rate = best_rate(len(query_keys), args.repeat, one_at_a_time)
    print(f"  sorted S16 + np.searchsorted:   {memory / 1e6:7.0f} MB ({memory / codes.nbytes:.1f}x), "
          f"build {build_s:.1f} s, {rate:,.0f} lookups/s (one at a time)")
    del keys, order

    started = time.perf_counter()
    index = HammingIndex.build(codes, 0)
    build_s = time.perf_counter() - started
    index.query(queries[:1])
    rate = best_rate(len(queries), args.repeat, lambda: [index.query(queries[i : i + 1]) for i in range(len(queries))])
    print(f"  HammingIndex radius 0:          {index.nbytes / 1e6:7.0f} MB ({index.nbytes / codes.nbytes:.1f}x), "
          f"build {build_s:.1f} s, {rate:,.0f} lookups/s (one at a time)")


def alternatives(algorithm: str, words: int, radius: int, n: int, args: argparse.Namespace) -> None:
    """The options measured before choosing: multi-index hashing in numpy alone, and faiss's binary hash index."""
    rng = np.random.default_rng(args.seed)
    codes = rng.integers(0, 2**64, size=(n, words), dtype=np.uint64)
    queries = planted_queries(rng, codes, min(args.queries, 1000), radius)
    index = HammingIndex.build(codes, radius)
    tables, key_bits = index.tables, index.key_bits
    del index
    started = time.perf_counter()
    mih = NumpyMIH(codes, tables, key_bits)
    build_s = time.perf_counter() - started
    batch = best_rate(len(queries), 1, lambda: [mih.query(queries[i : i + 500], radius)
                                                for i in range(0, len(queries), 500)])
    single = best_rate(200, 1, lambda: [mih.query(queries[i : i + 1], radius) for i in range(200)])
    print(f"  numpy MIH {tables}x{key_bits}: build {build_s:.1f} s, {mih.nbytes / codes.nbytes:.2f}x raw, "
          f"batch {batch:,.0f}/s, single {single:,.0f}/s", flush=True)
    del mih
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        print("  faiss not installed (pip install faiss-cpu) - skipped")
        return
    faiss.omp_set_num_threads(1)
    nhash, bits, nflip = (3, 21, 2) if words == 1 else (16, 16, 1)
    before = rss_bytes()
    started = time.perf_counter()
    fx = faiss.IndexBinaryMultiHash(64 * words, nhash, bits)
    fx.nflip = nflip
    fx.add(codes.view(np.uint8).reshape(n, 8 * words))
    build_s, memory = time.perf_counter() - started, rss_bytes() - before
    xq = queries.view(np.uint8).reshape(len(queries), 8 * words)
    batch = best_rate(len(xq), 1, lambda: fx.range_search(xq, radius + 1))  # faiss: distance < radius
    single = best_rate(100, 1, lambda: [fx.range_search(xq[i : i + 1], radius + 1) for i in range(100)])
    print(f"  faiss IndexBinaryMultiHash {nhash}x{bits} nflip {nflip}: build {build_s:.1f} s, "
          f"{memory / codes.nbytes:.1f}x raw (RSS), batch {batch:,.0f}/s, single {single:,.0f}/s", flush=True)


class NumpyMIH:
    """Multi-index hashing with numpy only (batched): the same tables, every step a vectorised numpy call."""

    def __init__(self, codes: np.ndarray, tables: int, key_bits: int) -> None:
        self.codes, self.tables, self.key_bits = codes, tables, key_bits
        self.stride = 64 * codes.shape[1] // tables
        self.perms, self.offsets = [], []
        for t in range(tables):
            keys = self.keys(codes, t)
            self.perms.append(np.argsort(keys, kind="stable").astype(np.uint32))
            counts = np.bincount(keys, minlength=1 << key_bits)
            self.offsets.append(np.concatenate([[0], np.cumsum(counts)]).astype(np.uint32))
        self.nbytes = codes.nbytes + sum(p.nbytes for p in self.perms) + sum(o.nbytes for o in self.offsets)

    def keys(self, codes: np.ndarray, t: int) -> np.ndarray:
        word, shift = divmod(t * self.stride, 64)
        value = codes[:, word] >> np.uint64(shift)
        if shift + self.key_bits > 64:
            value |= codes[:, word + 1] << np.uint64(64 - shift)
        return (value & np.uint64((1 << self.key_bits) - 1)).astype(np.intp)

    def query(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from itertools import combinations

        per_table, extra = divmod(radius, self.tables)
        found = []
        for t in range(self.tables):
            depth = per_table if t <= extra else per_table - 1
            if depth < 0:
                continue
            masks = np.array([sum(1 << b for b in c) for k in range(depth + 1)
                              for c in combinations(range(self.key_bits), k)], dtype=np.intp)
            probes = self.keys(queries, t)[:, None] ^ masks[None, :]
            first = self.offsets[t][probes].ravel().astype(np.int64)
            lengths = self.offsets[t][probes + 1].ravel().astype(np.int64) - first
            q = np.repeat(np.repeat(np.arange(len(queries)), len(masks)), lengths)
            position = np.repeat(first - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
            entry = self.perms[t][position]
            distance = np.bitwise_count(self.codes[entry] ^ queries[q]).sum(axis=1, dtype=np.int32)
            keep = distance <= radius
            q, entry, distance = q[keep], entry[keep], distance[keep]
            for s in range(t):  # report each pair from the first table that finds it
                depth_s = per_table if s <= extra else per_table - 1
                if depth_s >= 0:
                    near = np.bitwise_count(self.keys(self.codes[entry], s) ^ self.keys(queries[q], s)) <= depth_s
                    q, entry, distance = q[~near], entry[~near], distance[~near]
            found.append((q, entry, distance))
        return tuple(np.concatenate(parts) for parts in zip(*found))  # type: ignore[return-value]


if __name__ == "__main__":
    sys.exit(main())
