"""Exact Hamming-radius search over packed binary hashes, and the binary file that caches it.

``HammingIndex`` finds every entry within a Hamming radius of a query: all of them, never an approximation
(tests compare it with brute force). It is multi-index hashing (Norouzi et al., "Fast exact search in Hamming
space with multi-index hashing", 2014): the bits are cut into ``m`` disjoint keys, and by the pigeonhole
principle an entry within radius ``r`` of the query differs in at most ``r // m`` bits on at least one key
(refined: ``r = m*q + a`` means one of the first ``a + 1`` keys is within ``q``, or one of the others within
``q - 1``). Each key has a direct-address table (counts -> offsets, a counting sort), a query looks up every
key value within that many bits of its own key (the "probes") and checks the candidates found there with XOR
and popcount. A candidate is reported only from the first table whose probe found it, so once.

Why it is shaped this way (figures in ``bench/match_bench.py``, one core, 10M random entries):

- numpy alone reaches ~8,000 pHash (r=8) and ~800 PDQ (r=31) lookups/s with this algorithm (it is
  memory-latency bound: thousands of random reads a query); faiss's ``IndexBinaryMultiHash`` ~500 and ~30
  at 9-12x the raw memory. So the search and the build are numba kernels that prefetch the bucket and code
  each read needs a few steps ahead; they run without the GIL. They reach ~36,000 and ~4,300 lookups/s
  (~30,000 and ~4,500 one query per call) at 2.8x the raw memory, recall 1.0. The codes are 64-byte
  aligned: a 32-byte PDQ row across two cache lines costs two misses.
- Table 0 holds the codes themselves in its bucket order, so its candidates are read in sequence. For the
  other tables, 64-bit codes store a 32-bit *sketch* per entry (table 0's key plus other bits): it rules
  out almost every candidate without touching the code, and a rare survivor is found in table 0's bucket.
  Wider codes (PDQ) store the entry's position in table 0 instead (a sketch that small filters nothing at
  radius 31 of 256 bits).
- ``_plan`` picks the number of tables and the key width with a small cost model (probes cost about twice
  a gathered candidate, a sequential one a tenth) under a memory cap: codes + 4 bytes per entry per table
  + offsets stay within 2.9x the raw hashes. pHash/dHash at radius 8 get 3 tables, PDQ at 31 gets 12 of
  21 bits at 10M entries; tiny lists get one table with a one-bucket key, which is a plain scan.
- Radius 0 makes it an exact-match index too (one probe of a wide key), so md5/sha1/sha256 use it as well.

The file (``save``/``load``, the format of ``crawler.matching.arrayfile``) holds a JSON header (the plan,
the caller's ``meta``, every array's dtype, shape and offset) and the raw arrays at 64-byte boundaries.
``load`` maps the arrays read-only (``np.memmap``), so a 10M-entry index opens in tens of milliseconds and its pages
are shared with the page cache rather than copied; it checks the offsets and positions the kernels trust.

Nothing here logs a hash.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, Final

import numpy as np

from crawler.matching.arrayfile import ArrayFileError, aligned, read_arrays, write_arrays

logger = logging.getLogger(__name__)


def _kernels() -> ModuleType:
    """The numba kernels, imported on first use: loading numba costs ~0.5 s (and compiling, on a new machine,
    ~10 s), which opening or planning an index does not need."""
    from crawler.matching import kernels as hamming_kernels

    return hamming_kernels


_MAGIC: Final = b"RWHAMIDX"
_VERSION: Final = 1
#: Direct-address keys are at most this wide (offsets of 2^24 uint32 = 64 MiB a table).
_MAX_KEY_BITS: Final = 24
#: Index arrays (codes, positions, offsets) stay within this multiple of the raw hashes.
_MEMORY_CAP: Final = 2.9
#: Relative costs in the planner: a probe (two dependent random reads), a candidate read from a random place,
#: a candidate read in sequence (table 0's codes, a sketch).
_PROBE_COST, _GATHER_COST, _SEQUENTIAL_COST = 2.0, 1.0, 0.1


class IndexFileError(ArrayFileError):
    """A file that is not a readable index (wrong magic, version or sizes); the message names the file."""


def pack_hex(hexes: Sequence[str], bits: int) -> np.ndarray:
    """Hex strings of ``bits // 4`` digits each as a ``(n, ceil(bits / 64))`` uint64 array.

    Word 0 holds the first 16 digits (most significant first); a width that is not a multiple of 64 bits
    (sha1's 160) is padded with zero bits at the end, the layout of ``HashList.packed``. ValueError names
    the position of a value of the wrong length or not hex, never the value.
    """
    if bits <= 0 or bits % 8:
        raise ValueError(f"bits must be a positive multiple of 8, not {bits}")
    digits, words = bits // 4, -(-bits // 64)
    for position, text in enumerate(hexes):
        if len(text) != digits:
            raise ValueError(f"hash #{position} has {len(text)} characters, not {digits}")
    try:
        raw = bytes.fromhex("".join(hexes))
    except ValueError:
        raise ValueError("a hash is not hexadecimal") from None
    if len(raw) != len(hexes) * digits // 2:  # fromhex skips spaces
        raise ValueError("a hash is not hexadecimal")
    pad = words * 8 - digits // 2
    if pad:
        buffer = np.zeros((len(hexes), words * 8), dtype=np.uint8)
        buffer[:, : digits // 2] = np.frombuffer(raw, dtype=np.uint8).reshape(len(hexes), digits // 2)
        raw = buffer.tobytes()
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(hexes), words)


def unpack_hex(codes: np.ndarray, bits: int) -> list[str]:
    """The inverse of ``pack_hex``: each row as ``bits // 4`` lowercase hex digits."""
    raw = np.ascontiguousarray(codes, dtype=np.uint64).astype(">u8")
    digits = bits // 4
    return [row.tobytes().hex()[:digits] for row in raw]


def hamming_brute_force(codes: np.ndarray, queries: np.ndarray, radius: int) -> tuple[np.ndarray, ...]:
    """The reference answer: ``(query_idx, entry_idx, distance)`` of every pair within ``radius``, by a full scan.

    Sorted like ``HammingIndex.query``. One XOR + ``np.bitwise_count`` pass over ``codes`` per query.
    """
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for i, query in enumerate(np.asarray(queries, dtype=np.uint64)):
        distance = np.bitwise_count(codes ^ query).sum(axis=1, dtype=np.int32)
        hits = np.flatnonzero(distance <= radius)
        found.append((np.full(len(hits), i, dtype=np.int64), hits.astype(np.int64), distance[hits]))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
    return tuple(np.concatenate(parts) for parts in zip(*found))


class HammingIndex:
    """Every entry within a Hamming radius of a query, exactly; build once, query many times, save and load.

    ``HammingIndex.build(codes, radius_max)`` takes a ``(n, words)`` uint64 array (``pack_hex`` or
    ``HashList.packed``); ``query(queries, radius)`` answers a ``(q, words)`` batch. Any radius up to the
    width is exact; ``radius_max`` is the one the layout is tuned for (larger ones probe more).
    """

    __slots__ = ("words", "n", "radius_max", "tables", "key_bits", "stride", "sketch", "meta",
                 "_codes", "_ids", "_refs", "_offsets", "_starts", "_extra", "_probes")

    def __init__(self, *, words: int, radius_max: int, tables: int, key_bits: int, stride: int, sketch: bool,
                 codes: np.ndarray, ids: np.ndarray, refs: np.ndarray, offsets: np.ndarray,
                 meta: Mapping[str, Any] | None = None) -> None:
        """Use ``build`` or ``load``; this only assembles checked parts."""
        self.words, self.radius_max, self.tables = words, radius_max, tables
        self.key_bits, self.stride, self.sketch = key_bits, stride, sketch
        self.n = len(ids)
        self.meta = dict(meta or {})
        self._codes, self._ids, self._refs, self._offsets = codes, ids, refs, offsets
        self._starts = _readonly(np.arange(tables, dtype=np.int64) * stride)
        extras = _sketch_extras(tables, key_bits, stride) if sketch else None
        self._extra = _readonly(extras if extras is not None else np.zeros(tables, dtype=np.int64))
        self._probes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def bits(self) -> int:
        return 64 * self.words

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        """Bytes of the index's arrays (codes, entry ids, per-table positions or sketches, offsets)."""
        return sum(a.nbytes for a in (self._codes, self._ids, self._refs, self._offsets))

    def __repr__(self) -> str:
        return (f"HammingIndex(n={self.n}, bits={self.bits}, radius_max={self.radius_max}, tables={self.tables}, "
                f"key_bits={self.key_bits}, {'sketch' if self.sketch else 'gather'}, {self.nbytes} bytes)")

    # --- building ----------------------------------------------------------------------------------------
    @classmethod
    def build(cls, codes: np.ndarray, radius_max: int, *, tables: int | None = None,
              key_bits: int | None = None, meta: Mapping[str, Any] | None = None) -> HammingIndex:
        """Index ``codes`` (``(n, words)`` uint64) for searches up to ``radius_max`` bits.

        ``tables`` and ``key_bits`` override the planner (tests use them to exercise the multi-table path on
        small data). Entry ``i`` of the results is row ``i`` of ``codes``.
        """
        codes = _readonly(_check_codes(codes, None, "codes").view())
        n, words = codes.shape
        if n >= 2**32 - 1:
            raise ValueError(f"an index holds fewer than 2^32 entries, not {n}")
        radius_max = _check_radius(radius_max, 64 * words)
        started = time.perf_counter()
        kernels = _kernels()
        if tables is None:
            tables, fitting_bits = _plan(n, words, radius_max)
        elif not 1 <= tables <= 64 * words:
            raise ValueError(f"cannot cut {64 * words} bits into {tables} keys")
        else:
            fitting_bits = max(0, _key_bits_for(n, words, tables))
        key_bits = fitting_bits if key_bits is None else key_bits
        stride = 64 * words // tables
        if not 0 <= key_bits <= min(stride, _MAX_KEY_BITS):
            raise ValueError(f"keys of {key_bits} bits do not fit {tables} tables of {stride} bits")
        sketch = words == 1 and tables > 1 and _sketch_extras(tables, key_bits, stride) is not None
        starts = np.arange(tables, dtype=np.int64) * stride
        offsets = np.empty((tables, (1 << key_bits) + 1), dtype=np.uint32)
        ids = kernels.counting_order(codes, 0, key_bits, offsets[0])
        sorted_codes = aligned((n, words), np.uint64)
        np.take(codes, ids, axis=0, out=sorted_codes)
        _readonly(sorted_codes)
        refs = np.empty((tables - 1, n), dtype=np.uint32)
        extras = _sketch_extras(tables, key_bits, stride) if sketch else None
        for t in range(1, tables):
            if sketch:
                kernels.fill_sketches(sorted_codes, int(starts[t]), key_bits, int(extras[t]), offsets[t], refs[t - 1])
            else:
                refs[t - 1] = kernels.counting_order(sorted_codes, int(starts[t]), key_bits, offsets[t])
        index = cls(words=words, radius_max=radius_max, tables=tables, key_bits=key_bits, stride=stride,
                    sketch=sketch, codes=sorted_codes, ids=_readonly(ids), refs=_readonly(refs),
                    offsets=_readonly(offsets), meta=meta)
        logger.debug("Built %r in %.2f s", index, time.perf_counter() - started)
        return index

    # --- searching ---------------------------------------------------------------------------------------
    def query(self, queries: np.ndarray, radius: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(query_idx, entry_idx, distance)`` of every entry within ``radius`` of each query row.

        ``queries`` is ``(q, words)`` uint64 (or one ``(words,)`` row); ``radius`` defaults to ``radius_max``.
        Sorted by query, then entry; int64, int64, int32.
        """
        queries = _readonly(_check_codes(queries, self.words, "queries").view())
        radius = self.radius_max if radius is None else _check_radius(radius, self.bits)
        query_idx, positions, distance = self._search(queries, radius)
        entry_idx = self._ids[positions].astype(np.int64)
        if len(entry_idx) > 1:
            order = np.lexsort((entry_idx, query_idx))
            query_idx, entry_idx, distance = query_idx[order], entry_idx[order], distance[order]
        return query_idx, entry_idx, distance

    def query_codes(self, queries: np.ndarray, radius: int | None = None,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``query`` plus the matched codes (``(k, words)``): what a caller that keeps no copy of the hashes
        needs to report which hash matched."""
        queries = _readonly(_check_codes(queries, self.words, "queries").view())
        radius = self.radius_max if radius is None else _check_radius(radius, self.bits)
        query_idx, positions, distance = self._search(queries, radius)
        entry_idx = self._ids[positions].astype(np.int64)
        order = np.lexsort((entry_idx, query_idx))
        return query_idx[order], entry_idx[order], distance[order], self._codes[positions[order]]

    def codes_in_entry_order(self) -> np.ndarray:
        """Every code, row ``i`` being entry ``i`` (a new array: for reports and tests, not the hot path)."""
        codes = np.empty_like(self._codes)
        codes[self._ids] = self._codes
        return codes

    def _search(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unsorted ``(query_idx, position in the codes, distance)`` of every hit."""
        if self.n == 0 or len(queries) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
        probe_radii, masks, mask_counts = self._probe_plan(radius)
        found = _kernels().search(queries, radius, self._codes, self._refs, self._offsets, self._starts,
                                  self.key_bits, self._extra, self.sketch, probe_radii, masks, mask_counts)
        return found[:, 0].copy(), found[:, 1].copy(), found[:, 2].astype(np.int32)

    def _probe_plan(self, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per table, how many bits its probes flip at ``radius``; the probe masks by popcount; their counts."""
        plan = self._probes.get(radius)
        if plan is None:
            per_table, extra = divmod(radius, self.tables)
            probe_radii = np.array([per_table if t <= extra else per_table - 1 for t in range(self.tables)],
                                   dtype=np.int64)
            deepest = min(int(probe_radii.max()), self.key_bits)
            counts = np.array([sum(math.comb(self.key_bits, k) for k in range(j + 1)) for j in range(deepest + 1)],
                              dtype=np.int64)
            masks = _masks_by_popcount(self.key_bits, deepest, int(counts[-1]))
            plan = self._probes[radius] = (_readonly(probe_radii), _readonly(masks), _readonly(counts))
        return plan

    # --- the file ----------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to ``path`` atomically (a temporary file beside it, then a rename)."""
        header, arrays = self.to_arrays()
        write_arrays(path, _MAGIC, _VERSION, header, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, mmap: bool = True) -> HammingIndex:
        """Open an index ``save`` wrote; arrays are memory-mapped read-only unless ``mmap=False`` (read in)."""
        try:
            header, arrays = read_arrays(path, _MAGIC, _VERSION, mmap=mmap, what="index file")
        except ArrayFileError as exc:
            raise IndexFileError(str(exc)) from None
        return cls.from_arrays(os.fspath(path), header, arrays)

    def to_arrays(self, prefix: str = "") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The layout header and the named arrays that ``from_arrays`` reassembles (names under ``prefix``),
        for files that hold an index among other arrays (a compiled hash list)."""
        header = {"kind": "hamming", "words": self.words, "n": self.n, "radius_max": self.radius_max,
                  "tables": self.tables, "key_bits": self.key_bits, "stride": self.stride,
                  "sketch": self.sketch, "meta": self.meta}
        arrays = {"codes": self._codes, "ids": self._ids, "refs": self._refs, "offsets": self._offsets}
        return header, {prefix + name: array for name, array in arrays.items()}

    @classmethod
    def from_arrays(cls, where: str, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                    prefix: str = "") -> HammingIndex:
        """The index ``to_arrays`` described, after checking every shape, offset and position the kernels
        trust (``IndexFileError`` naming ``where`` if one is off: the file is damaged)."""
        try:
            words, n, tables, key_bits = (int(header[k]) for k in ("words", "n", "tables", "key_bits"))
            stride, radius_max, sketch = int(header["stride"]), int(header["radius_max"]), bool(header["sketch"])
            meta = dict(header.get("meta") or {})
        except (KeyError, TypeError, ValueError):
            raise IndexFileError(f"{where}: header lacks the index layout") from None
        if header.get("kind") != "hamming" or words < 1 or n < 0 or not 1 <= tables <= 64 * words \
                or stride != 64 * words // tables or not 0 <= key_bits <= min(stride, _MAX_KEY_BITS) \
                or not 0 <= radius_max <= 64 * words:
            raise IndexFileError(f"{where}: not a consistent Hamming index header")
        expected = {"codes": ((n, words), np.uint64), "ids": ((n,), np.uint32),
                    "refs": ((tables - 1, n), np.uint32), "offsets": ((tables, (1 << key_bits) + 1), np.uint32)}
        found = {}
        for name, (shape, dtype) in expected.items():
            array = arrays.get(prefix + name)
            if array is None or array.shape != shape or array.dtype != dtype:
                raise IndexFileError(f"{where}: array {prefix + name!r} missing or of the wrong shape or type")
            found[name] = _readonly(array)
        _check_offsets(where, found["offsets"], n)
        if n and int(found["ids"].max()) >= n:
            raise IndexFileError(f"{where}: an entry id points past the end of the entries")
        if not sketch and n and tables > 1 and int(found["refs"].max()) >= n:
            raise IndexFileError(f"{where}: a table points past the end of the codes")
        if sketch and (words != 1 or _sketch_extras(tables, key_bits, stride) is None):
            raise IndexFileError(f"{where}: sketch layout recorded for codes it cannot describe")
        return cls(words=words, radius_max=radius_max, tables=tables, key_bits=key_bits, stride=stride,
                   sketch=sketch, codes=found["codes"], ids=found["ids"], refs=found["refs"],
                   offsets=found["offsets"], meta=meta)


# --- planning ------------------------------------------------------------------------------------------------
def _plan(n: int, words: int, radius: int) -> tuple[int, int]:
    """``(tables, key_bits)`` with the lowest estimated cost per query that fits the memory cap."""
    best: tuple[float, int, int] = (math.inf, 1, 0)
    for tables in range(1, 4 * words + 1):
        per_table, extra = divmod(radius, tables)
        for key_bits in range(_key_bits_for(n, words, tables) + 1):  # none if the tables cannot fit
            bucket = n / 2**key_bits
            cost = 0.0
            for t in range(tables):
                depth = per_table if t <= extra else per_table - 1
                if depth < 0:
                    continue
                probes = sum(math.comb(key_bits, k) for k in range(min(depth, key_bits) + 1))
                sequential = t == 0 or words == 1
                cost += probes * (_PROBE_COST + bucket * (_SEQUENTIAL_COST if sequential else _GATHER_COST))
            if cost < best[0]:
                best = (cost, tables, key_bits)
    return best[1], best[2]


def _key_bits_for(n: int, words: int, tables: int) -> int:
    """The widest key (within the key's share of the bits) whose offsets keep the index under the memory cap.

    -1 if ``tables`` tables cannot fit at all (their positions alone pass the cap).
    """
    raw = 8 * words
    budget = (_MEMORY_CAP * raw - raw - 4 * (tables - 1) - 4) * max(n, 1)  # bytes left for offsets
    if budget <= 0:
        return -1
    fitting = int(math.floor(math.log2(max(budget / (4 * tables), 1))))
    return max(0, min(64 * words // tables, _MAX_KEY_BITS, fitting))


def _sketch_extras(tables: int, key_bits: int, stride: int) -> np.ndarray | None:
    """For 64-bit codes: where each table's sketch takes its ``32 - key_bits`` bits beside table 0's key.

    A sketch is table 0's key followed by a run of bits that is neither table 0's key nor the table's own;
    ``None`` if some table has no such run (then positions are stored instead).
    """
    width = 32 - key_bits
    extras = np.zeros(tables, dtype=np.int64)
    for t in range(1, tables):
        taken = set(range(key_bits)) | set(range(t * stride, t * stride + key_bits))
        start = next((s for s in range(64 - width + 1) if taken.isdisjoint(range(s, s + width))), None)
        if start is None:
            return None
        extras[t] = start
    return extras


# --- the file format -----------------------------------------------------------------------------------------
def _check_offsets(where: str, offsets: np.ndarray, n: int) -> None:
    """The kernels read ``codes``/``refs`` at every position the offsets span: they must be sane."""
    if offsets.size and (np.any(offsets[:, 0] != 0) or np.any(offsets[:, -1] != n)
                         or np.any(offsets[:, 1:] < offsets[:, :-1])):
        raise IndexFileError(f"{where}: bucket offsets are not a partition of the entries")


# --- small helpers -------------------------------------------------------------------------------------------
def _check_codes(codes: np.ndarray, words: int | None, what: str) -> np.ndarray:
    if (type(codes) is np.ndarray and codes.dtype == np.uint64 and codes.ndim == 2 and codes.flags.c_contiguous
            and codes.shape[1] and (words is None or codes.shape[1] == words)):
        return codes  # the common case, checked cheaply: one image's query costs microseconds
    array = np.asarray(codes)
    if array.ndim == 1 and words is not None:
        array = array.reshape(1, -1)
    if array.ndim != 2 or (words is not None and array.shape[1] != words) or array.shape[1] == 0:
        expected = f"(n, {words})" if words is not None else "(n, words)"
        raise ValueError(f"{what} must be a {expected} array of uint64, not shape {array.shape}")
    if array.dtype != np.uint64:
        if array.dtype.kind not in "ui":
            raise ValueError(f"{what} must be unsigned 64-bit integers, not {array.dtype}")
        array = array.astype(np.uint64)
    return np.ascontiguousarray(array)


def _check_radius(radius: int, bits: int) -> int:
    if isinstance(radius, bool) or not isinstance(radius, int | np.integer) or not 0 <= radius <= bits:
        raise ValueError(f"radius must be an int between 0 and {bits}, not {radius!r}")
    return int(radius)


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # one numba signature for built and loaded (read-only memmap) arrays
    return array


def _masks_by_popcount(width: int, depth: int, count: int) -> np.ndarray:
    """Every ``width``-bit value with at most ``depth`` bits set, ordered by popcount (``count`` of them)."""
    masks = np.empty(count, dtype=np.uint32)
    _kernels().fill_masks(width, depth, masks)
    return masks
