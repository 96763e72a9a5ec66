"""``refwatch hashlist stats|match|compile`` through ``crawler.cli.main.main``: output, exit status, no echoed values."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from crawler.cli.main import main
from crawler.matching.hashlist import HEX_DIGITS
from crawler.matching.compiled import compiled_path

RNG = random.Random(20240612)


def rand_hex(algorithm: str) -> str:
    return f"{RNG.getrandbits(HEX_DIGITS[algorithm] * 4):0{HEX_DIGITS[algorithm]}x}"


def flip(value: str, bits: int) -> str:
    mask = sum(1 << b for b in RNG.sample(range(len(value) * 4), bits))
    return f"{int(value, 16) ^ mask:0{len(value)}x}"


@pytest.fixture()
def lists(tmp_path: Path) -> dict[str, object]:
    """Two lists: ``known`` (CSV with a bad line 4 and a duplicate) and ``tx`` (ThreatExchange CSV)."""
    pdq, phash, md5 = rand_hex("pdq"), rand_hex("phash"), rand_hex("md5")
    known = tmp_path / "known.csv"
    known.write_text(
        "algorithm,hash,id,label\n"
        f"pdq,{pdq},K-1,series x\n"
        f"phash,{phash},K-2,\n"
        "phash,zz,K-3,\n"
        f"pdq,{pdq},K-4,again\n"
        f"md5,{md5},K-5,\n",
        encoding="utf-8",
    )
    tx_pdq = flip(pdq, 40)
    tx = tmp_path / "tx.csv"
    tx.write_text(
        "signal_type,signal_str,collab,category,tags\n"
        f"pdq,{tx_pdq},Sample,TRUE_POSITIVE,t1 t2\n"
        "url,https://example.com,Sample,TRUE_POSITIVE,\n",
        encoding="utf-8",
    )
    return {"known": known, "tx": tx, "pdq": pdq, "phash": phash, "md5": md5, "tx_pdq": tx_pdq}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["hashlist", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_stats_json(lists: dict, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "stats", str(lists["known"]), f"ngo={lists['tx']}", "--skip-bad-lines", "--json")
    assert code == 0, err
    known, tx = (json.loads(line) for line in out.splitlines())
    assert known["entries"] == {"md5": 1, "pdq": 2, "phash": 1}
    assert known["duplicates"] == {"md5": 0, "pdq": 1, "phash": 0}
    assert known["bad_lines"] == 1 and known["bad_line_samples"][0]["line"] == 4
    assert known["format"] == "csv" and known["from_cache"] is False
    assert (tx["list"], tx["format"], tx["entries"], tx["ignored_lines"]) == ("ngo", "threatexchange", {"pdq": 1}, 1)


def test_stats_table_and_bad_lines_without_skipping(lists: dict, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "stats", str(lists["known"]), "--skip-bad-lines")
    assert code == 0
    assert "pdq" in out and "bad lines skipped: 1" in out and "line 4:" in out
    code, out, err = run(capsys, "stats", str(lists["known"]))
    assert code == 2 and out == ""
    assert err.startswith(f"refwatch: error: {lists['known']}:4: ")


def test_match_hashes_table(lists: dict, capsys: pytest.CaptureFixture[str]) -> None:
    near = flip(lists["pdq"], 5)
    other = rand_hex("md5")
    code, out, err = run(capsys, "match", str(lists["known"]), str(lists["tx"]), "--skip-bad-lines",
                         "--hash", f"pdq:{near.upper()}", "--hash", f"md5:{other}", "--hash", f"phash:{lists['phash']}")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split("\t") == ["query", "list", "entry_id", "label", "distance", "matched_hash"]
    rows = [line.split("\t") for line in lines[1:]]
    assert rows == [
        [f"pdq:{near}", "known", "K-1", "series x", "5", lists["pdq"]],
        [f"pdq:{near}", "known", "K-4", "again", "5", lists["pdq"]],
        [f"md5:{other}", "no match"],
        [f"phash:{lists['phash']}", "known", "K-2", "-", "0", lists["phash"]],
    ]


def test_match_json_radius_and_hashes_file(lists: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queries = tmp_path / "q.txt"
    queries.write_text(f"# from a case\n\npdq:{lists['tx_pdq']}\nmd5:{lists['md5']}\n", encoding="utf-8")
    code, out, err = run(capsys, "match", f"known={lists['known']}", str(lists["tx"]), "--skip-bad-lines",
                         "--hashes-file", str(queries), "--radius", "pdq=45", "--json")
    assert code == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    assert {"query", "algorithm", "list", "entry_id", "label", "distance", "matched_hash"} == set(got[0])
    assert [(m["list"], m["entry_id"], m["distance"]) for m in got] == [
        ("known", "K-1", 40), ("known", "K-4", 40), ("tx", "tx:2", 0), ("known", "K-5", 0),
    ]
    assert got[2]["label"] == "t1 t2" and got[2]["query"] == f"pdq:{lists['tx_pdq']}"
    # the default pdq radius (31) does not reach 40 bits
    code, out, _ = run(capsys, "match", str(lists["known"]), "--skip-bad-lines", "--hashes-file", str(queries),
                       "--json")
    assert [json.loads(line)["entry_id"] for line in out.splitlines()] == ["K-5"]


def test_match_hashes_file_as_csv(lists: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queries = tmp_path / "q.csv"
    queries.write_text(f"hash,algorithm,note\n{lists['md5']},md5,x\n", encoding="utf-8")
    code, out, _ = run(capsys, "match", str(lists["known"]), "--skip-bad-lines", "--hashes-file", str(queries))
    assert code == 0
    assert out.splitlines()[1].split("\t")[:3] == [f"md5:{lists['md5']}", "known", "K-5"]


def test_match_no_match_is_exit_zero(lists: dict, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "match", str(lists["tx"]), "--hash", f"pdq:{rand_hex('pdq')}", "--json")
    assert (code, out) == (0, "")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("pdq", "--hash #1: expected ALGO:HEX"),
        ("pdq:abc", "--hash #1: value of 3 characters (hex) is not a 64-hex-digit pdq"),
        ("crc32:00", "--hash #1: unknown algorithm 'crc32'"),
    ],
)
def test_match_bad_query(lists: dict, capsys: pytest.CaptureFixture[str], query: str, message: str) -> None:
    code, out, err = run(capsys, "match", str(lists["tx"]), "--hash", query)
    assert code == 2 and out == ""
    assert err.startswith(f"refwatch: error: {message}") and err.count("\n") == 1


def test_bad_query_file_names_line_not_value(lists: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = rand_hex("md5")
    queries = tmp_path / "q.txt"
    queries.write_text(f"md5:{rand_hex('md5')}\npdq:{wrong}\n", encoding="utf-8")
    code, _, err = run(capsys, "match", str(lists["tx"]), "--hashes-file", str(queries))
    assert code == 2
    assert err.startswith(f"refwatch: error: {queries}:2: value of 32 characters (hex)")
    assert wrong not in err
    code, _, err = run(capsys, "match", str(lists["tx"]), "--hashes-file", str(tmp_path / "none.txt"))
    assert code == 2 and "no such file" in err


def test_match_needs_exactly_one_query_source(lists: dict, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["hashlist", "match", str(lists["tx"])])
    assert info.value.code == 2
    capsys.readouterr()


def test_compile_then_stats_reads_the_cache(lists: dict, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compile", str(lists["known"]), "--skip-bad-lines")
    assert code == 0, err
    assert compiled_path(lists["known"]).is_file()
    assert "5 entries" not in out and "4 entries" in out and "1 bad lines skipped" in out
    code, out, _ = run(capsys, "stats", str(lists["known"]), "--skip-bad-lines", "--json")
    assert json.loads(out)["from_cache"] is True
    code, _, err = run(capsys, "compile", str(lists["known"]))  # the bad line is an error without the option
    assert code == 2 and ":4: " in err


def test_hashlist_output_never_reaches_the_log(lists: dict, capsys: pytest.CaptureFixture[str],
                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG"):
        run(capsys, "match", str(lists["known"]), "--skip-bad-lines", "--hash", f"pdq:{lists['pdq']}")
    for value in (lists["pdq"], lists["phash"], lists["md5"], "K-1", "series x"):
        assert value not in caplog.text
