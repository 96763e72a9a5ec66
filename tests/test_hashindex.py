"""HammingIndex: equal to brute force (planted neighbours at r-1, r, r+1, duplicates, every table layout), the
file round trip and its damage checks, packing helpers, and Meta's PDQ regression haystack."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crawler.matching.index import (
    HammingIndex,
    IndexFileError,
    _plan,
    _sketch_extras,
    hamming_brute_force,
    pack_hex,
    unpack_hex,
)


def flip(rng: np.random.Generator, code: np.ndarray, bits: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """``code`` with exactly ``bits`` distinct bits flipped (chosen among ``allowed`` bit numbers)."""
    out = code.copy()
    choices = np.arange(64 * len(code)) if allowed is None else allowed
    for bit in rng.choice(choices, bits, replace=False):
        out[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    return out


def planted(seed: int, n: int, words: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Random entries plus, for half the queries, neighbours at 0, r-1, r, r+1 and exact duplicates."""
    rng = np.random.default_rng(seed)
    entries = [rng.integers(0, 2**64, size=(n, words), dtype=np.uint64)]
    queries = rng.integers(0, 2**64, size=(24, words), dtype=np.uint64)
    for query in queries[:12]:
        near = [flip(rng, query, d) for d in (0, max(radius - 1, 0), radius, radius + 1, radius)]
        entries.append(np.array(near + [near[1]] * 3))  # three duplicates of the r-1 neighbour
    data = np.concatenate(entries)
    return data[rng.permutation(len(data))], queries


def assert_same(got: tuple[np.ndarray, ...], expected: tuple[np.ndarray, ...]) -> None:
    assert [a.tolist() for a in got] == [b.tolist() for b in expected]


LAYOUTS = [  # (words, radius_max, tables, key_bits): None lets the planner choose
    (1, 8, None, None),
    (1, 8, 3, 8),  # sketches
    (1, 8, 2, 10),  # sketches, 4 bits a probe
    (1, 8, 1, 6),  # one table: probes of up to 6 bits
    (1, 8, 1, 0),  # one bucket: a scan
    (4, 31, None, None),
    (4, 31, 12, 9),  # positions, refined pigeonhole (8 tables at 2 bits, 4 at 1)
    (4, 31, 16, 10),
    (4, 31, 3, 8),
    (2, 0, None, None),  # an md5-like exact index
]


@pytest.mark.parametrize(("words", "radius", "tables", "key_bits"), LAYOUTS)
def test_equals_brute_force(words: int, radius: int, tables: int | None, key_bits: int | None) -> None:
    data, queries = planted(words * 100 + radius, 3000, words, radius)
    index = HammingIndex.build(data, radius, tables=tables, key_bits=key_bits)
    assert len(index) == len(data)
    if tables is not None:
        assert (index.tables, index.key_bits) == (tables, key_bits)
    for r in sorted({0, max(radius - 1, 0), radius, radius + 1, radius + 5}):
        got = index.query(queries, r)
        assert_same(got, hamming_brute_force(data, queries, r))
        assert got[0].dtype == np.int64 and got[1].dtype == np.int64 and got[2].dtype == np.int32
    found = index.query(queries)  # radius_max by default
    on_edge = {int(d) for d in found[2]}
    assert {0, radius} <= on_edge and radius + 1 not in on_edge


def test_sketch_groups_of_distinct_codes() -> None:
    """Distinct codes equal on every bit a sketch table knows land side by side in one bucket: all are found."""
    rng = np.random.default_rng(7)
    stride, key_bits = 64 // 3, 10
    extras = _sketch_extras(3, key_bits, stride)
    assert extras is not None
    known = set(range(key_bits)) | set(range(stride, stride + key_bits)) | set(
        range(int(extras[1]), int(extras[1]) + 32 - key_bits))
    unknown = np.array(sorted(set(range(64)) - known))
    base = rng.integers(0, 2**64, size=1, dtype=np.uint64)
    group = np.array([flip(rng, base, k, unknown) for k in (1, 1, 2, 2, 3, 3)] + [base] * 2)
    data = np.concatenate([rng.integers(0, 2**64, size=(2000, 1), dtype=np.uint64), group])
    index = HammingIndex.build(data, 8, tables=3, key_bits=key_bits)
    assert index.sketch
    queries = np.array([flip(rng, base, d, np.array(sorted(known))) for d in (0, 2, 4, 5)])
    assert_same(index.query(queries, 8), hamming_brute_force(data, queries, 8))
    assert len(index.query(queries[:1], 8)[0]) == len(group)


def test_duplicates_of_everything_and_skewed_buckets() -> None:
    rng = np.random.default_rng(3)
    few = rng.integers(0, 2**64, size=(5, 4), dtype=np.uint64)
    data = few[rng.integers(0, 5, 4000)]  # 5 distinct codes, 800 copies each: buckets of hundreds
    index = HammingIndex.build(data, 31, tables=12, key_bits=9)
    queries = np.array([flip(rng, few[0], 30), flip(rng, few[1], 32), few[2]])
    assert_same(index.query(queries), hamming_brute_force(data, queries, 31))


@pytest.mark.parametrize("words", [1, 4])
def test_empty_index(words: int, tmp_path: Path) -> None:
    index = HammingIndex.build(np.zeros((0, words), dtype=np.uint64), 8)
    assert len(index) == 0
    queries = np.zeros((3, words), dtype=np.uint64)
    assert [len(a) for a in index.query(queries)] == [0, 0, 0]
    index.save(tmp_path / "empty.idx")
    loaded = HammingIndex.load(tmp_path / "empty.idx")
    assert len(loaded) == 0 and [len(a) for a in loaded.query(queries)] == [0, 0, 0]


@pytest.mark.parametrize(("words", "radius"), [(1, 8), (4, 31)])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(words: int, radius: int, mmap: bool, tmp_path: Path) -> None:
    data, queries = planted(11, 2000, words, radius)
    index = HammingIndex.build(data, radius, meta={"source_size": 123, "list": "known"})
    path = tmp_path / "list.csv.rwhidx"
    index.save(path)
    assert not list(tmp_path.glob(".*tmp"))
    loaded = HammingIndex.load(path, mmap=mmap)
    assert repr(loaded) == repr(index) and loaded.nbytes == index.nbytes
    assert loaded.meta == {"source_size": 123, "list": "known"}
    assert_same(loaded.query(queries), index.query(queries))
    assert_same(loaded.query(queries, radius + 3), hamming_brute_force(data, queries, radius + 3))
    assert path.stat().st_size < index.nbytes + 4096


def test_damaged_files_are_refused(tmp_path: Path) -> None:
    data, _ = planted(5, 1000, 4, 31)
    path = tmp_path / "index.idx"
    HammingIndex.build(data, 31, tables=12, key_bits=6).save(path)
    good = path.read_bytes()

    def refused(content: bytes, match: str) -> None:
        path.write_bytes(content)
        with pytest.raises(IndexFileError, match=match):
            HammingIndex.load(path)

    refused(b"not an index at all", "not a refwatch index")
    refused(good[:8] + (2).to_bytes(4, "little") + good[12:], "version 2")
    refused(good[: len(good) // 2], "truncated")
    refused(good[:16] + b"[" + good[17:], "header")
    header_end = 16 + int.from_bytes(good[12:16], "little")
    head = good[16:header_end]
    refused(good[:16] + head.replace(b'"tables": 12', b'"tables": 11') + good[header_end:], "wrong shape|consistent")
    # An offset pointing past the entries would make the kernel read outside the codes.
    start = -(-header_end // 64) * 64
    offsets_at = start + int(json.loads(head)["arrays"]["offsets"]["offset"])
    damaged = bytearray(good)
    damaged[offsets_at + 4 * 5 : offsets_at + 4 * 6] = (10**6).to_bytes(4, "little")
    refused(bytes(damaged), "offsets")
    with pytest.raises(IndexFileError, match="no such file"):
        HammingIndex.load(tmp_path / "missing.idx")


def test_bad_arguments() -> None:
    data = np.zeros((10, 1), dtype=np.uint64)
    index = HammingIndex.build(data, 8)
    for radius in (-1, 65, True, 2.0):
        with pytest.raises(ValueError):
            index.query(data, radius)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        index.query(np.zeros((2, 4), dtype=np.uint64))
    with pytest.raises(ValueError):
        HammingIndex.build(np.zeros((10, 1), dtype=np.float64), 8)
    with pytest.raises(ValueError):
        HammingIndex.build(data, 8, tables=3, key_bits=22)  # wider than a third of 64 bits
    assert index.query(np.zeros(1, dtype=np.uint64))[1].tolist() == list(range(10))  # one row as a 1-D array


def test_pack_hex() -> None:
    assert pack_hex(["0123456789abcdef"], 64).tolist() == [[0x0123456789ABCDEF]]
    pdq = "f" * 16 + "0" * 15 + "1" + "a" * 32
    assert pack_hex([pdq], 256).tolist() == [[2**64 - 1, 1, 0xAAAAAAAAAAAAAAAA, 0xAAAAAAAAAAAAAAAA]]
    sha1 = "ab" * 20
    packed = pack_hex([sha1, "00" * 20], 160)
    assert packed.shape == (2, 3) and packed[0, 2] == 0xABABABAB00000000  # zero bits padded at the end
    assert unpack_hex(packed, 160) == [sha1, "00" * 20]
    assert pack_hex([], 64).shape == (0, 1)
    for bad in (["abc"], ["zz" * 8], ["01234567 9abcdef"]):
        with pytest.raises(ValueError) as info:
            pack_hex(bad, 64)
        assert bad[0] not in str(info.value)


def test_plan_meets_the_memory_cap_at_scale() -> None:
    """The layouts chosen for 1M and 10M entries stay within 3x the raw hashes (computed, not built)."""
    assert _plan(10_000_000, 1, 8) == (3, 21)
    assert _plan(10_000_000, 4, 31) == (12, 21)
    for words, radius in ((1, 8), (4, 31), (2, 0)):
        for n in (1_000_000, 10_000_000, 50_000_000):
            tables, key_bits = _plan(n, words, radius)
            nbytes = n * (8 * words + 4 * tables) + tables * ((1 << key_bits) + 1) * 4
            assert nbytes <= 3 * 8 * words * n, (words, radius, n, tables, key_bits)
    assert _plan(100, 1, 8) == (1, 0)  # a tiny list is scanned: one table whose key has no bits


def test_meta_pdq_regression_haystack(realdata: Path) -> None:
    """Meta's PDQ regression hashes (read in place): the index at radius 31 answers exactly as brute force."""
    haystack = pack_hex((realdata / "pdq" / "haystack.txt").read_text().split(), 256)
    needles = pack_hex((realdata / "pdq" / "needles.txt").read_text().split(), 256)
    assert haystack.shape == (1350, 4) and needles.shape == (100, 4)
    expected = hamming_brute_force(haystack, needles, 31)
    assert len(expected[0]) > 100  # the needles do have neighbours in the haystack
    for tables, key_bits in ((None, None), (12, 8), (16, 8)):
        index = HammingIndex.build(haystack, 31, tables=tables, key_bits=key_bits)
        assert_same(index.query(needles, 31), expected)
