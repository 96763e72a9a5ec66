"""Matching: exact lookups, Hamming radii at the boundary, the PDQ quality gate, and a brute-force cross-check."""

from __future__ import annotations

import hashlib
import random

import pytest

from crawler.matching.hashlist import HEX_DIGITS, HashEntry, HashList
from crawler.matching.matcher import DEFAULT_RADII, PDQ_MIN_QUALITY, Match, Matcher


def rand_hex(rng: random.Random, algorithm: str) -> str:
    digits = HEX_DIGITS[algorithm]
    return f"{rng.getrandbits(digits * 4):0{digits}x}"


def flip(rng: random.Random, value: str, bits: int) -> str:
    """``value`` with exactly ``bits`` distinct bits flipped."""
    width = len(value) * 4
    mask = 0
    for bit in rng.sample(range(width), bits):
        mask |= 1 << bit
    return f"{int(value, 16) ^ mask:0{len(value)}x}"


def distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def make_list(name: str, entries: list[tuple[str, str]]) -> HashList:
    return HashList(
        name=name,
        path=f"{name}.csv",
        entries=tuple(HashEntry(alg, h, f"{name}:{i}", f"label-{i}") for i, (alg, h) in enumerate(entries)),
    )


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256"])
def test_exact_match(algorithm: str) -> None:
    data = b"a benign synthetic image"
    digest = hashlib.new(algorithm, data).hexdigest()
    other = hashlib.new(algorithm, b"another").hexdigest()
    matcher = Matcher([make_list("l", [(algorithm, digest), (algorithm, other)])])
    assert matcher.match({algorithm: digest}) == [
        Match("l", algorithm, "l:0", "label-0", 0, digest, digest)
    ]
    assert matcher.match({algorithm: digest.upper()})[0].observed_hash == digest
    near = flip(random.Random(1), digest, 1)
    assert matcher.match({algorithm: near}) == []


@pytest.mark.parametrize("algorithm", ["phash", "dhash", "pdq"])
def test_hamming_boundary(algorithm: str) -> None:
    rng = random.Random(algorithm)
    radius = DEFAULT_RADII[algorithm]
    target = rand_hex(rng, algorithm)
    matcher = Matcher([make_list("l", [(algorithm, target)])])
    for d in (0, 1, radius - 1, radius):
        observed = flip(rng, target, d)
        (match,) = matcher.match({algorithm: observed})
        assert match.distance == d
        assert match.observed_hash == observed
        assert match.matched_hash == target
    assert matcher.match({algorithm: flip(rng, target, radius + 1)}) == []


def test_custom_radius() -> None:
    rng = random.Random(5)
    target = rand_hex(rng, "phash")
    matcher = Matcher([make_list("l", [("phash", target)])], radii={"phash": 2})
    assert matcher.match({"phash": flip(rng, target, 2)})
    assert not matcher.match({"phash": flip(rng, target, 3)})
    # dhash keeps its default
    dtarget = rand_hex(rng, "dhash")
    matcher = Matcher([make_list("l", [("dhash", dtarget)])], radii={"phash": 2})
    assert matcher.match({"dhash": flip(rng, dtarget, DEFAULT_RADII["dhash"])})
    assert not matcher.match({"dhash": flip(rng, dtarget, DEFAULT_RADII["dhash"] + 1)})


@pytest.mark.parametrize(
    "radii",
    [{"md5": 1}, {"phash": -1}, {"phash": 65}, {"pdq": 257}, {"crc": 3}, {"phash": True}, {"phash": 2.0}],
)
def test_bad_radii(radii: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Matcher([], radii=radii)  # type: ignore[arg-type]


def test_pdq_quality_gate() -> None:
    rng = random.Random(7)
    pdq = rand_hex(rng, "pdq")
    phash = rand_hex(rng, "phash")
    matcher = Matcher([make_list("l", [("pdq", pdq), ("phash", phash)])])
    observed = {"pdq": flip(rng, pdq, 10), "phash": phash}
    assert [m.algorithm for m in matcher.match(observed, pdq_quality=PDQ_MIN_QUALITY - 1)] == ["phash"]
    assert [m.algorithm for m in matcher.match(observed, pdq_quality=PDQ_MIN_QUALITY)] == ["pdq", "phash"]
    assert [m.algorithm for m in matcher.match(observed, pdq_quality=None)] == ["pdq", "phash"]
    strict = Matcher([make_list("l", [("pdq", pdq)])], pdq_min_quality=90)
    assert strict.match(observed, pdq_quality=80) == []


def test_several_lists_duplicates_and_order() -> None:
    rng = random.Random(11)
    phash = rand_hex(rng, "phash")
    md5 = rand_hex(rng, "md5")
    near = flip(rng, phash, 3)
    b = make_list("b", [("phash", near), ("phash", phash), ("md5", md5)])
    a = make_list("a", [("phash", phash), ("phash", phash)])
    matcher = Matcher([b, a])
    got = matcher.match({"phash": phash, "md5": md5, "dhash": None})
    assert [(m.list_name, m.algorithm, m.distance, m.entry_id) for m in got] == [
        ("a", "phash", 0, "a:0"),
        ("a", "phash", 0, "a:1"),
        ("b", "md5", 0, "b:2"),
        ("b", "phash", 0, "b:1"),
        ("b", "phash", 3, "b:0"),
    ]
    assert matcher.counts() == {("a", "phash"): 2, ("b", "md5"): 1, ("b", "phash"): 2}


def test_absent_none_and_unlisted_algorithms() -> None:
    rng = random.Random(13)
    matcher = Matcher([make_list("l", [("phash", rand_hex(rng, "phash"))])])
    assert matcher.match({}) == []
    assert matcher.match({"phash": None, "pdq": rand_hex(rng, "pdq"), "md5": rand_hex(rng, "md5")}) == []
    assert matcher.match({"colorhash": "whatever"}) == []


@pytest.mark.parametrize("value", ["", "zz", "0" * 15, "0x" + "0" * 14])
def test_malformed_observed_hash_is_a_bug(value: str) -> None:
    matcher = Matcher([make_list("l", [("phash", "0" * 16)])])
    with pytest.raises(ValueError):
        matcher.match({"phash": value})


def test_empty_and_invalid_lists() -> None:
    assert Matcher([]).empty
    assert Matcher([HashList("x", "x.csv", ())]).empty
    assert not Matcher([make_list("l", [("md5", "0" * 32)])]).empty
    with pytest.raises(ValueError, match="two hash lists"):
        Matcher([make_list("l", [("md5", "0" * 32)]), make_list("l", [("md5", "1" * 32)])])
    with pytest.raises(ValueError):
        Matcher([make_list("l", [("phash", "ABCDEF0123456789")])])
    with pytest.raises(ValueError):
        Matcher([make_list("l", [("sha512", "0" * 128)])])


@pytest.mark.parametrize("algorithm", ["phash", "dhash", "pdq"])
def test_brute_force_cross_check(algorithm: str) -> None:
    rng = random.Random(f"cross-{algorithm}")
    radius = DEFAULT_RADII[algorithm]
    queries = [rand_hex(rng, algorithm) for _ in range(20)]
    lists: list[HashList] = []
    for n in range(3):
        entries = [(algorithm, rand_hex(rng, algorithm)) for _ in range(400)]
        for query in rng.sample(queries, 8):
            for d in (radius - 1, radius, radius + 1):
                entries.append((algorithm, flip(rng, query, d)))
        rng.shuffle(entries)
        lists.append(make_list(f"list{n}", entries))
    matcher = Matcher(lists)
    planted_hits = 0
    for query in queries:
        expected = sorted(
            (
                Match(hl.name, e.algorithm, e.entry_id, e.label, distance(query, e.hash), query, e.hash)
                for hl in lists
                for e in hl.entries
                if distance(query, e.hash) <= radius
            ),
            key=lambda m: (m.list_name, m.algorithm, m.distance, m.entry_id),
        )
        got = matcher.match({algorithm: query})
        assert got == expected
        planted_hits += sum(m.distance in (radius - 1, radius) for m in got)
    assert planted_hits >= 3 * 8 * 2  # every planted r-1 and r neighbour found; r+1 ones checked by equality


def test_per_list_radii() -> None:
    rng = random.Random(17)
    target = rand_hex(rng, "phash")
    pdq = rand_hex(rng, "pdq")
    a = make_list("a", [("phash", target), ("pdq", pdq)])
    b = make_list("b", [("phash", target), ("pdq", pdq)])
    matcher = Matcher([a, b], radii={"phash": 6}, list_radii={"b": {"phash": 2}, "a": {"pdq": 10}})
    assert (matcher.radius("a", "phash"), matcher.radius("b", "phash")) == (6, 2)
    assert (matcher.radius("a", "pdq"), matcher.radius("b", "pdq"), matcher.radius("a", "md5")) == (10, 31, 0)
    assert [m.list_name for m in matcher.match({"phash": flip(rng, target, 2)})] == ["a", "b"]
    assert [m.list_name for m in matcher.match({"phash": flip(rng, target, 5)})] == ["a"]
    assert matcher.match({"phash": flip(rng, target, 7)}) == []
    assert [m.list_name for m in matcher.match({"pdq": flip(rng, pdq, 20)})] == ["b"]
    wider = Matcher([a, b], list_radii={"b": {"phash": 12}})  # wider than every other list's
    assert [(m.list_name, m.distance) for m in wider.match({"phash": flip(rng, target, 11)})] == [("b", 11)]


@pytest.mark.parametrize(
    "list_radii",
    [{"c": {"phash": 2}}, {"a": {"md5": 1}}, {"a": {"phash": 65}}, {"a": {"crc": 1}}, {"a": {"pdq": True}}],
)
def test_bad_per_list_radii(list_radii: dict[str, dict[str, object]]) -> None:
    with pytest.raises(ValueError):
        Matcher([make_list("a", [("phash", "0" * 16)])], list_radii=list_radii)  # type: ignore[arg-type]


def test_pdq_dihedral_forms() -> None:
    rng = random.Random(19)
    target, other = rand_hex(rng, "pdq"), rand_hex(rng, "pdq")
    matcher = Matcher([make_list("l", [("pdq", target), ("pdq", other)])])
    plain = rand_hex(rng, "pdq")  # the image's own hash matches nothing
    rotated = flip(rng, target, 5)  # but its rotation is a listed image
    (match,) = matcher.match({"pdq": plain}, pdq_dihedral=[plain, flip(rng, plain, 3), rotated])
    assert (match.entry_id, match.distance, match.observed_hash, match.matched_hash) == ("l:0", 5, rotated, target)
    # One Match per entry: the closest form, the plain hash on a tie.
    near, nearer = flip(rng, target, 9), flip(rng, target, 3)
    (match,) = matcher.match({"pdq": near}, pdq_dihedral=[nearer, flip(rng, target, 20)])
    assert (match.distance, match.observed_hash) == (3, nearer)
    tie = flip(rng, target, 4)
    (match,) = matcher.match({"pdq": tie}, pdq_dihedral=[flip(rng, target, 4)])
    assert match.observed_hash == tie
    # Two forms, two entries; no plain hash computed; the quality gate covers every form.
    both = matcher.match({"pdq": None}, pdq_dihedral=[flip(rng, target, 1), flip(rng, other, 2)])
    assert [(m.entry_id, m.distance) for m in both] == [("l:0", 1), ("l:1", 2)]
    assert matcher.match({}, pdq_quality=PDQ_MIN_QUALITY - 1, pdq_dihedral=[rotated]) == []
    assert matcher.match({"pdq": plain}, pdq_dihedral=[rotated.upper()])[0].observed_hash == rotated
    with pytest.raises(ValueError):
        matcher.match({"pdq": plain}, pdq_dihedral=["not a hash"])


def test_large_lists_use_the_index_and_equal_brute_force() -> None:
    """Enough entries that each list's indexes cut them into several tables (PDQ needs 50k); still exactly the
    brute-force answer."""
    from crawler.matching.index import hamming_brute_force, pack_hex

    rng = random.Random(23)
    queries = {alg: [rand_hex(rng, alg) for _ in range(12)] for alg in ("phash", "pdq")}
    lists = []
    for n in range(2):
        entries = [(alg, rand_hex(rng, alg)) for alg in ("phash", "pdq") for _ in range(50_000)]
        for alg, observed in queries.items():
            radius = DEFAULT_RADII[alg]
            entries += [(alg, flip(rng, q, d)) for q in observed[:6] for d in (0, radius - 1, radius, radius + 1)]
        rng.shuffle(entries)
        lists.append(make_list(f"list{n}", entries))
    matcher = Matcher(lists, list_radii={"list1": {"phash": 5}})
    assert all(index.tables > 1 for indexes in matcher._indexes.values() for _, index, _ in indexes)
    for alg, observed in queries.items():
        bits = HEX_DIGITS[alg] * 4
        for query in observed:
            got = matcher.match({alg: query})
            expected = []
            for hashlist in lists:
                radius = matcher.radius(hashlist.name, alg)
                _, rows, dist = hamming_brute_force(hashlist.packed(alg), pack_hex([query], bits), radius)
                expected += [(hashlist.name, hashlist.entry_id(alg, int(r)), int(d), hashlist.hash_hex(alg, int(r)))
                             for r, d in zip(rows, dist)]
            assert sorted((m.list_name, m.entry_id, m.distance, m.matched_hash) for m in got) == sorted(expected)
            assert {m.observed_hash for m in got} <= {query}
