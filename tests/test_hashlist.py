"""Hash-list loading: the three formats, errors naming file and line or skipped and counted, the columnar
representation, the compiled cache, and no contents in logs or messages."""

from __future__ import annotations

import hashlib
import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest

from crawler.matching.hashlist import (
    HEX_DIGITS,
    HashEntry,
    HashList,
    HashListError,
    normalize_hash,
    parse_hashlist_spec,
)
from crawler.matching.compiled import compile_hashlist, compiled_path
from crawler.matching.loading import load_hashlist, load_hashlists

RNG = random.Random(20240611)


def rand_hex(algorithm: str) -> str:
    return f"{RNG.getrandbits(HEX_DIGITS[algorithm] * 4):0{HEX_DIGITS[algorithm]}x}"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def test_csv_basic_with_ids_and_labels(tmp_path: Path) -> None:
    md5 = hashlib.md5(b"benign test bytes").hexdigest()
    phash = rand_hex("phash")
    path = write(tmp_path, "known.csv", f"algorithm,hash,id,label\nmd5,{md5},A-1,series x\nphash,{phash},A-2,\n")
    hl = load_hashlist(path)
    assert hl == HashList(
        name="known",
        path=str(path),
        entries=(
            HashEntry("md5", md5, "A-1", "series x"),
            HashEntry("phash", phash, "A-2", None),
        ),
    )


def test_csv_header_order_case_extras_and_default_ids(tmp_path: Path) -> None:
    sha1 = rand_hex("sha1")
    pdq = rand_hex("pdq")
    text = (
        "# exported 2024-06-01\n"
        "\n"
        "Notes, HASH ,Algorithm\n"
        f"whatever,{sha1.upper()},SHA1\n"
        "# a comment between rows\n"
        "\n"
        f"more,  {pdq}  , pdq \n"
    )
    hl = load_hashlist(write(tmp_path, "mixed.csv", text), name="ngo")
    assert hl.name == "ngo"
    assert hl.entries == (
        HashEntry("sha1", sha1, "ngo:4", None),
        HashEntry("pdq", pdq, "ngo:7", None),
    )


def test_csv_empty_id_cell_falls_back_to_line(tmp_path: Path) -> None:
    h = rand_hex("dhash")
    hl = load_hashlist(write(tmp_path, "l.csv", f"algorithm,hash,id\ndhash,{h},\n"))
    assert hl.entries[0].entry_id == "l:2"


def test_crlf_and_bom_keep_line_numbers(tmp_path: Path) -> None:
    good = rand_hex("phash")
    path = tmp_path / "win.csv"
    path.write_bytes(("\ufeffalgorithm,hash\r\nphash," + good + "\r\n\r\nphash,zz\r\n").encode("utf-8"))
    with pytest.raises(HashListError) as info:
        load_hashlist(path)
    assert str(info.value).startswith(f"{path}:4: ")
    assert info.value.line == 4


def test_count_by_algorithm(tmp_path: Path) -> None:
    rows = ["algorithm,hash"] + [f"phash,{rand_hex('phash')}"] * 3 + [f"md5,{rand_hex('md5')}"]
    hl = load_hashlist(write(tmp_path, "c.csv", "\n".join(rows) + "\n"))
    assert hl.count_by_algorithm() == {"md5": 1, "phash": 3}


def test_text_list_with_algorithm(tmp_path: Path) -> None:
    a, b = rand_hex("sha256"), rand_hex("sha256")
    path = write(tmp_path, "plain.txt", f"# sha256 list\n{a.upper()}\n\n  {b}  \n")
    hl = load_hashlist(path, algorithm="SHA256")
    assert hl.entries == (HashEntry("sha256", a, "plain:2", None), HashEntry("sha256", b, "plain:4", None))


def test_text_list_without_algorithm_says_so(tmp_path: Path) -> None:
    path = write(tmp_path, "plain.txt", f"# comment\n{rand_hex('phash')}\n")
    with pytest.raises(HashListError, match=r"plain\.txt:2: .*--hashlist-algorithm"):
        load_hashlist(path)


def test_csv_without_required_header_is_text(tmp_path: Path) -> None:
    # A header lacking "algorithm" is not a CSV header, so the file is read as text and its first line fails.
    path = write(tmp_path, "x.csv", f"hash,id\n{rand_hex('md5')},1\n")
    with pytest.raises(HashListError, match=r"x\.csv:1: "):
        load_hashlist(path, algorithm="md5")


@pytest.mark.parametrize(
    ("body", "line", "reason"),
    [
        ("phash,zz\n", 2, r"2 characters \(not all hex\) is not a 16-hex-digit phash"),
        (f"phash,{'a' * 15}\n", 2, "15 characters"),
        (f"pdq,{'g' * 64}\n", 2, "not all hex"),
        (f"phash,{'0' * 16}\nmd5,{'0' * 31}\n", 3, "32-hex-digit md5"),
        (f"sha512,{'0' * 128}\n", 2, "unknown algorithm 'sha512'"),
        ("phash\n", 2, "empty value"),
        (f",{'0' * 16}\n", 2, "unknown algorithm ''"),
        (f"phash,0x{'0' * 14}\n", 2, "not all hex"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, body: str, line: int, reason: str) -> None:
    path = write(tmp_path, "lists.csv", "algorithm,hash\n" + body)
    with pytest.raises(HashListError, match=reason) as info:
        load_hashlist(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: ")
    assert "\n" not in message


def test_error_never_repeats_the_value(tmp_path: Path) -> None:
    # A real-looking md5 put in a phash column must not end up in an error message (which may be logged).
    md5 = rand_hex("md5")
    path = write(tmp_path, "l.csv", f"algorithm,hash\nphash,{md5}\n")
    with pytest.raises(HashListError) as info:
        load_hashlist(path)
    assert md5 not in str(info.value)


def test_unknown_algorithm_argument(tmp_path: Path) -> None:
    path = write(tmp_path, "p.txt", rand_hex("md5") + "\n")
    with pytest.raises(HashListError, match=r"p\.txt: unknown algorithm 'crc32'"):
        load_hashlist(path, algorithm="crc32")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HashListError, match=r"nope\.csv: no such file"):
        load_hashlist(tmp_path / "nope.csv")


@pytest.mark.parametrize("text", ["", "algorithm,hash\n", "# only comments\n\n", "algorithm,hash\n# none\n\n"])
def test_empty_list(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "empty.csv", text)
    with pytest.raises(HashListError, match=r"empty\.csv: no hashes found"):
        load_hashlist(path, algorithm="md5")


def test_not_utf8_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bin.csv"
    path.write_bytes(b"algorithm,hash\nmd5," + b"0" * 32 + b"\n\xff\xfe\n")
    with pytest.raises(HashListError, match=r"bin\.csv:3: not valid UTF-8"):
        load_hashlist(path)


def test_duplicate_column(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "algorithm,hash,Hash\n")
    with pytest.raises(HashListError, match=r"d\.csv:1: column 'hash' appears twice"):
        load_hashlist(path)


def test_loading_logs_counts_but_no_contents(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    values = [rand_hex("phash") for _ in range(5)]
    text = "algorithm,hash,id,label\n" + "".join(f"phash,{v},ID-{v},LBL-{v}\n" for v in values)
    with caplog.at_level(logging.DEBUG):
        hl = load_hashlist(write(tmp_path, "secret.csv", text))
    assert len(hl.entries) == 5
    assert "5 entries" in caplog.text
    for value in values:
        assert value not in caplog.text


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("known.csv", ("known", "known.csv")),
        ("lists/known.csv", ("known", "lists/known.csv")),
        ("/abs/path/list.txt", ("list", "/abs/path/list.txt")),
        ("ngo=lists/known.csv", ("ngo", "lists/known.csv")),
        ("ngo=/abs/a=b.csv", ("ngo", "/abs/a=b.csv")),
        ("dir/a=b.csv", ("a=b", "dir/a=b.csv")),
        ("x.txt.gz", ("x.txt", "x.txt.gz")),
    ],
)
def test_parse_hashlist_spec(spec: str, expected: tuple[str, str]) -> None:
    assert parse_hashlist_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "=lists/x.csv", "ngo=", "   "])
def test_parse_hashlist_spec_errors(spec: str) -> None:
    with pytest.raises(HashListError):
        parse_hashlist_spec(spec)


def test_normalize_hash() -> None:
    assert normalize_hash("phash", " ABCDEF0123456789\n") == "abcdef0123456789"
    with pytest.raises(ValueError):
        normalize_hash("phash", "abcdef012345678")


# --- ThreatExchange CSV ----------------------------------------------------------------------------------
# The header python-threatexchange's `threatexchange dataset -P --csv` writes (cli/dataset_cmd.py); an older
# release put collab first. Signal types: "pdq", "video_md5" (-> md5), "video_sha256" (-> sha256).


@pytest.mark.parametrize(
    "header", ["signal_type,signal_str,collab,category,tags", "collab,signal_type,signal_str,category,tags"]
)
def test_threatexchange_csv(tmp_path: Path, header: str) -> None:
    pdq, md5, sha256 = rand_hex("pdq"), rand_hex("md5"), rand_hex("sha256")
    columns = header.split(",")

    def row(**cells: str) -> str:
        return ",".join(cells.get(c, "") for c in columns)

    text = "\n".join([
        header,
        row(signal_type="pdq", signal_str=pdq, collab="Sample Collab", category="TRUE_POSITIVE", tags="a b"),
        row(signal_type="video_md5", signal_str=md5.upper(), collab="c", category="WORTH_INVESTIGATING"),
        row(signal_type="url", signal_str="https://example.com/x", collab="c", category="TRUE_POSITIVE"),
        row(signal_type="pdq", signal_str=rand_hex("pdq"), collab="c", category="FALSE_POSITIVE", tags="fp"),
        row(signal_type="video_sha256", signal_str=sha256, collab="c", category="TRUE_POSITIVE"),
    ]) + "\n"
    hl = load_hashlist(write(tmp_path, "collab.csv", text), name="tx")
    assert hl.source_format == "threatexchange"
    assert hl.entries == (
        HashEntry("pdq", pdq, "tx:2", "a b"),
        HashEntry("md5", md5, "tx:3", None),
        HashEntry("sha256", sha256, "tx:6", None),
    )
    assert hl.ignored_lines == 2  # the url row and the false positive
    assert hl.bad_lines == 0


def test_threatexchange_bad_rows(tmp_path: Path) -> None:
    body = f"signal_type,signal_str,collab,category,tags\npdq,{rand_hex('md5')},c,TRUE_POSITIVE,\n"
    with pytest.raises(HashListError, match=r"tx\.csv:2: value of 32 characters \(hex\) is not a 64-hex-digit pdq"):
        load_hashlist(write(tmp_path, "tx.csv", body))
    body = f"signal_type,signal_str,collab,category,tags\n,{rand_hex('pdq')},c,TRUE_POSITIVE,\n"
    with pytest.raises(HashListError, match=r"tx2\.csv:2: empty signal_type"):
        load_hashlist(write(tmp_path, "tx2.csv", body))
    only_other = "signal_type,signal_str,collab,category,tags\nurl,https://example.com,c,TRUE_POSITIVE,\n"
    with pytest.raises(HashListError, match="no hashes found .*1 rows of other signal types ignored"):
        load_hashlist(write(tmp_path, "tx3.csv", only_other))


# --- skipping bad lines ----------------------------------------------------------------------------------


def test_skip_bad_lines_counts_and_keeps_the_good_ones(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = [rand_hex("phash") for _ in range(3)]
    leaked = rand_hex("md5")
    text = (
        "algorithm,hash,id\n"
        f"phash,{good[0]},G1\n"
        f"phash,{leaked},B1\n"  # an md5 in a phash row: bad, and must not be echoed anywhere
        f"sha512,{'0' * 128},B2\n"
        f"phash,{good[1]},G2\n"
        "phash,,B3\n"
        f"phash,{good[2]},G3\n"
    )
    path = write(tmp_path, "mixed.csv", text)
    with pytest.raises(HashListError, match=r"mixed\.csv:3: "):
        load_hashlist(path)
    with caplog.at_level(logging.DEBUG):
        hl = load_hashlist(path, skip_bad_lines=True)
    assert [e.entry_id for e in hl.entries] == ["G1", "G2", "G3"]
    assert hl.bad_lines == 3
    assert [line for line, _ in hl.bad_line_samples] == [3, 4, 6]
    assert "16-hex-digit phash" in hl.bad_line_samples[0][1]
    assert "3 bad lines skipped" in caplog.text
    for secret in (leaked, *good):
        assert secret not in caplog.text
        assert all(secret not in reason for _, reason in hl.bad_line_samples)


def test_bad_line_samples_are_bounded(tmp_path: Path) -> None:
    text = "algorithm,hash\n" + "phash,zz\n" * 50 + f"phash,{rand_hex('phash')}\n"
    hl = load_hashlist(write(tmp_path, "many.csv", text), skip_bad_lines=True)
    assert hl.bad_lines == 50
    assert len(hl.bad_line_samples) == 10
    assert len(hl) == 1


def test_skip_bad_lines_in_text_lists_and_undecodable_lines(tmp_path: Path) -> None:
    a, b = rand_hex("md5"), rand_hex("md5")
    path = tmp_path / "plain.txt"
    path.write_bytes(f"{a}\nnot-a-hash\n\xff\xfe\n".encode("latin-1") + f"{b}\n".encode())
    hl = load_hashlist(path, algorithm="md5", skip_bad_lines=True)
    assert [e.hash for e in hl.entries] == [a, b]
    assert [line for line, _ in hl.bad_line_samples] == [2, 3]
    assert hl.bad_line_samples[1][1] == "not valid UTF-8 text"


def test_undecodable_line_inside_a_quoted_csv_record(tmp_path: Path) -> None:
    h = rand_hex("pdq")
    path = tmp_path / "q.csv"
    path.write_bytes(b'algorithm,hash,label\npdq,' + h.encode() + b',"two\n\xff lines"\npdq,' + h.encode() + b',ok\n')
    with pytest.raises(HashListError, match=r"q\.csv:3: not valid UTF-8"):
        load_hashlist(path)
    hl = load_hashlist(path, skip_bad_lines=True)
    assert (hl.bad_lines, len(hl), hl.entries[0].label) == (1, 1, "ok")


def test_all_lines_bad_is_still_an_empty_list(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", "algorithm,hash\nphash,zz\nmd5,1\n")
    with pytest.raises(HashListError, match=r"no hashes found \(3 lines read, 2 bad lines skipped\)"):
        load_hashlist(path, skip_bad_lines=True)


def test_file_level_errors_are_not_skipped(tmp_path: Path) -> None:
    with pytest.raises(HashListError, match="appears twice"):
        load_hashlist(write(tmp_path, "d.csv", "algorithm,hash,HASH\n"), skip_bad_lines=True)
    with pytest.raises(HashListError, match="needs an algorithm"):
        load_hashlist(write(tmp_path, "t.txt", rand_hex("md5") + "\n"), skip_bad_lines=True)


def test_quoted_fields_and_multiline_records(tmp_path: Path) -> None:
    a, b = rand_hex("phash"), rand_hex("phash")
    text = f'algorithm,hash,id,label\nphash,{a},"id, with comma","label\nover two lines"\nphash,"{b}",x,\n'
    hl = load_hashlist(write(tmp_path, "q.csv", text))
    assert hl.entries == (HashEntry("phash", a, "id, with comma", "label\nover two lines"), HashEntry("phash", b, "x"))
    assert list(hl.lines("phash")) == [3, 4]  # a record is numbered by its last line, as csv.reader counts


def test_unknown_algorithm_that_looks_like_a_hash_is_not_echoed(tmp_path: Path) -> None:
    swapped = rand_hex("pdq")  # columns swapped: the hash sits in the algorithm column
    path = write(tmp_path, "swap.csv", f"algorithm,hash\n{swapped},pdq\n")
    with pytest.raises(HashListError, match=r"unknown algorithm \(a value of 64 characters, hex\)") as info:
        load_hashlist(path)
    assert swapped not in str(info.value)


# --- columnar representation -----------------------------------------------------------------------------


def test_packed_arrays_and_lazy_entries_in_file_order(tmp_path: Path) -> None:
    rows = [("pdq", rand_hex("pdq")), ("phash", rand_hex("phash")), ("sha1", rand_hex("sha1")),
            ("pdq", rand_hex("pdq")), ("phash", rand_hex("phash"))]
    text = "algorithm,hash,label\n" + "".join(f"{a},{h},L{i}\n" for i, (a, h) in enumerate(rows))
    hl = load_hashlist(write(tmp_path, "p.csv", text))
    assert hl.algorithms == ("pdq", "phash", "sha1")
    assert len(hl) == len(hl.entries) == 5
    assert [(e.algorithm, e.hash, e.label) for e in hl.entries] == [(a, h, f"L{i}") for i, (a, h) in enumerate(rows)]
    assert hl.entries[-1] == hl.entries[4] == HashEntry("phash", rows[4][1], "p:6", "L4")
    assert hl.entries[1:3] == (hl.entries[1], hl.entries[2])
    with pytest.raises(IndexError):
        hl.entries[5]
    pdq = hl.packed("pdq")
    assert pdq.dtype == np.uint64 and pdq.shape == (2, 4) and not pdq.flags.writeable
    assert [int(w) for w in pdq[1]] == [int(rows[3][1][16 * k : 16 * k + 16], 16) for k in range(4)]
    assert hl.packed("phash")[:, 0].tolist() == [int(rows[1][1], 16), int(rows[4][1], 16)]
    assert hl.packed("sha1").shape == (1, 3)  # 160 bits, zero-padded to 3 words
    assert hl.hash_hex("sha1", 0) == rows[2][1]
    assert hl.packed("md5").shape == (0, 2)
    assert hl.lines("pdq").tolist() == [2, 5]
    assert hl.entry("pdq", 1) == HashEntry("pdq", rows[3][1], "p:5", "L3")


def test_hashlist_built_from_entries_validates_them() -> None:
    entry = HashEntry("phash", rand_hex("phash"), "x:1", "l")
    hl = HashList("x", "x.csv", (entry,))
    assert hl.entries == (entry,) and hl.count_by_algorithm() == {"phash": 1}
    assert len(HashList("x", "x.csv", ())) == 0
    with pytest.raises(ValueError):
        HashList("x", "x.csv", (HashEntry("phash", "ABCDEF0123456789", "x:1"),))
    with pytest.raises(ValueError):
        HashList("x", "x.csv", (HashEntry("sha512", "0" * 128, "x:1"),))
    with pytest.raises(ValueError):
        HashList("x", "x.csv", (HashEntry("pdq", "0" * 63, "x:1"),))


def test_duplicates_per_algorithm(tmp_path: Path) -> None:
    p, q, m = rand_hex("pdq"), rand_hex("pdq"), rand_hex("md5")
    rows = [("pdq", p), ("pdq", q), ("pdq", p.upper()), ("pdq", p), ("md5", m), ("phash", m[:16]), ("dhash", m[:16])]
    text = "algorithm,hash\n" + "".join(f"{a},{h}\n" for a, h in rows)
    hl = load_hashlist(write(tmp_path, "dup.csv", text))
    assert hl.duplicate_counts() == {"dhash": 0, "md5": 0, "pdq": 2, "phash": 0}


def test_repr_shows_counts_only(tmp_path: Path) -> None:
    h = rand_hex("pdq")
    hl = load_hashlist(write(tmp_path, "r.csv", f"algorithm,hash,id,label\npdq,{h},ID-SECRET,LBL-SECRET\n"))
    text = repr(hl) + repr(hl.entries)
    assert h not in text and "SECRET" not in text and "'pdq': 1" in text


def test_load_hashlists_names_and_duplicates(tmp_path: Path) -> None:
    a = write(tmp_path, "a.csv", f"algorithm,hash\nmd5,{rand_hex('md5')}\n")
    lists = load_hashlists([str(a), f"other={a}"])
    assert [hl.name for hl in lists] == ["a", "other"]
    with pytest.raises(HashListError, match="a second list named 'a'"):
        load_hashlists([str(a), f"a={a}"])


# --- compiled cache ----------------------------------------------------------------------------------------


def _list_text(n: int) -> str:
    rows = [f"pdq,{rand_hex('pdq')},E{i},{'lbl' if i % 2 else ''}" for i in range(n)]
    rows += [f"md5,{rand_hex('md5')},," for _ in range(3)] + [f"sha1,{rand_hex('sha1')},S,x"]
    return "algorithm,hash,id,label\n" + "\n".join(rows) + "\n"


def test_compile_and_load_from_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "big.csv", _list_text(200))
    parsed = load_hashlist(path, name="n")
    compiled, target = compile_hashlist(path)
    assert target == compiled_path(path) == tmp_path / "big.csv.rwidx"
    assert compiled.from_cache is False and not parsed.from_cache
    with caplog.at_level(logging.DEBUG):
        cached = load_hashlist(path, name="n")
    assert cached.from_cache
    assert cached == parsed  # same entries, in file order; default ids use the name given at load time
    assert cached.entries[200].entry_id == "n:202"
    for algorithm in parsed.algorithms:
        assert np.array_equal(cached.packed(algorithm), parsed.packed(algorithm))
    assert "from cache" in caplog.text
    assert "E1" not in caplog.text and parsed.entries[0].hash not in caplog.text
    assert not load_hashlist(path, use_cache=False).from_cache


def test_cache_is_ignored_once_the_list_changes(tmp_path: Path) -> None:
    path = write(tmp_path, "l.csv", _list_text(5))
    compile_hashlist(path)
    extra = rand_hex("pdq")
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"pdq,{extra},NEW,\n")
    hl = load_hashlist(path)
    assert not hl.from_cache and hl.entries[-1].hash == extra
    # same size, other content, other mtime: still not used
    compile_hashlist(path)
    text = path.read_text(encoding="utf-8").replace(extra, rand_hex("pdq"))
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert not load_hashlist(path).from_cache


def test_cache_respects_options(tmp_path: Path) -> None:
    text_list = write(tmp_path, "t.txt", "\n".join(rand_hex("md5") for _ in range(4)) + "\n")
    compile_hashlist(text_list, algorithm="md5")
    assert load_hashlist(text_list, algorithm="md5").from_cache
    with pytest.raises(HashListError, match=r"t\.txt:1: value of 32 characters \(hex\) is not a 16-hex-digit phash"):
        load_hashlist(text_list, algorithm="phash")  # another algorithm: the cache does not apply
    with_bad = write(tmp_path, "b.csv", "algorithm,hash\nphash,zz\n" + f"phash,{rand_hex('phash')}\n")
    compile_hashlist(with_bad, skip_bad_lines=True)
    assert load_hashlist(with_bad, skip_bad_lines=True).from_cache
    assert load_hashlist(with_bad, skip_bad_lines=True).bad_line_samples[0][0] == 2
    with pytest.raises(HashListError, match=r"b\.csv:2: "):
        load_hashlist(with_bad)  # without skip_bad_lines the bad line is an error, cache or not


def test_damaged_cache_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "d.csv", _list_text(3))
    _, target = compile_hashlist(path)
    target.write_bytes(target.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        hl = load_hashlist(path)
    assert not hl.from_cache and len(hl) == 7
    assert "unusable" in caplog.text


def test_compile_errors(tmp_path: Path) -> None:
    with pytest.raises(HashListError, match="no such file"):
        compile_hashlist(tmp_path / "missing.csv")
    path = write(tmp_path, "e.csv", "algorithm,hash\nphash,zz\n")
    with pytest.raises(HashListError, match=r"e\.csv:2: "):
        compile_hashlist(path)
    assert not compiled_path(path).exists()


def test_compiled_list_brings_its_indexes_memory_mapped(tmp_path: Path) -> None:
    """The compiled file holds the built indexes: loading maps them, the Matcher builds nothing, and no second
    copy of the hashes exists (no packed array beside the index)."""
    from crawler.matching.matcher import Matcher

    path = write(tmp_path, "m.csv", _list_text(300))
    parsed = load_hashlist(path)
    compile_hashlist(path, radii={"pdq": 20})
    cached = load_hashlist(path)
    for algorithm in cached.algorithms:
        column = cached._columns[algorithm]
        assert column.hashes is None and column.index is not None
        assert isinstance(column.index._codes.base, np.memmap)
        assert not column.index._codes.flags.writeable
    assert cached._columns["pdq"].index.radius_max == 20
    assert cached._columns["md5"].index.radius_max == 0
    indexes_before = {a: cached._columns[a].index for a in cached.algorithms}
    queries = {"pdq": parsed.entries[7].hash, "md5": parsed.entries[300].hash, "sha1": parsed.entries[303].hash}
    from_cache = Matcher([cached]).match(queries)
    assert {a: cached._columns[a].index for a in cached.algorithms} == indexes_before  # reused, not rebuilt
    assert from_cache == Matcher([parsed]).match(queries)
    assert [(m.algorithm, m.entry_id, m.distance) for m in from_cache] == [("md5", "m:302", 0), ("pdq", "E7", 0),
                                                                           ("sha1", "S", 0)]
    assert {m.matched_hash for m in from_cache} == set(queries.values())


def test_building_the_index_drops_the_parsed_hashes(tmp_path: Path) -> None:
    """A parsed list holds its hashes once: as a packed array until the index is built, then in the index."""
    path = write(tmp_path, "p.csv", _list_text(50))
    hl = load_hashlist(path)
    packed = hl.packed("pdq").copy()
    column = hl._columns["pdq"]
    assert column.hashes is not None and column.index is None
    index = hl.index("pdq", 31)
    assert column.hashes is None and column.index is index
    assert np.array_equal(hl.packed("pdq"), packed)  # still readable in entry order, from the index
    assert hl.entries[3].hash == hl.hash_hex("pdq", 3)
    assert hl.nbytes() >= index.nbytes


def test_hma_data_files(tmp_path: Path) -> None:
    """Hasher-Matcher-Actioner 1.x ``<group>.hash_pdq.te``: headerless hash,indicator_id,descriptor_id,time,tags."""
    a, b = rand_hex("pdq"), rand_hex("pdq")
    path = write(tmp_path, "303636684709969.hash_pdq.te",
                 f"{a},4208891,6548923,2020-07-31T18:47:45+0000,media_type_photo\n"
                 f"{b},4208892,6548924,2020-07-31T18:47:46+0000,\n")
    hl = load_hashlist(path)
    assert hl.source_format == "hma"
    assert hl.entries == (HashEntry("pdq", a, "4208891", "media_type_photo"), HashEntry("pdq", b, "4208892", None))
    md5 = write(tmp_path, "g.hash_video_md5.te", f"{rand_hex('md5')},77,1,2020-01-01,\n")
    assert load_hashlist(md5).count_by_algorithm() == {"md5": 1}
    bad = write(tmp_path, "g.hash_pdq.te", f"{a},1,2,t,\nnothex,2,3,t,\n")
    with pytest.raises(HashListError, match=r"g\.hash_pdq\.te:2: value of 6 characters \(not all hex\)"):
        load_hashlist(bad)
    assert load_hashlist(bad, skip_bad_lines=True).bad_lines == 1


def test_an_overlong_line_is_a_bad_line_read_in_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crawler.matching import formats

    monkeypatch.setattr(formats, "MAX_LINE_CHARS", 100)
    a, b = rand_hex("md5"), rand_hex("md5")
    path = write(tmp_path, "long.csv", f"algorithm,hash,label\nmd5,{a},{'x' * 5000}\nmd5,{b},ok\n")
    with pytest.raises(HashListError, match=r"long\.csv:2: a line longer than 100 characters"):
        load_hashlist(path)
    hl = load_hashlist(path, skip_bad_lines=True)
    assert [e.hash for e in hl.entries] == [b]
    assert list(hl.bad_line_samples) == [(2, "a line longer than 100 characters")]
