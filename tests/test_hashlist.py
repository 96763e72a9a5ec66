"""Hash-list loading: both formats, validation errors naming file and line, and no contents in logs."""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

import pytest

from crawler.hashlist import (
    HEX_DIGITS,
    HashEntry,
    HashList,
    HashListError,
    load_hashlist,
    normalize_hash,
    parse_hashlist_spec,
)

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
