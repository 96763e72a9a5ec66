"""Snapshot readers, URL tables and the public API: format detection, column mapping, validation, streaming.

Every table is generated here in ``tmp_path``; the Common Crawl archives are covered in
``test_readers_archives.py``.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from crawler.readers import Snapshot, SnapshotFormat, detect_format, iter_references, open_snapshot
from crawler.references import Reference, SnapshotError

REPO_ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    """An ``on_bad_record`` that remembers its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []

    def __call__(self, path: str, where: int, reason: str) -> None:
        self.calls.append((path, where, reason))


def write(path: Path, text: str, *, gz: bool = False) -> Path:
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def laion_table(n: int, start: int = 0) -> pa.Table:
    """A table shaped like a LAION-5B metadata parquet (same names, types and column order)."""
    ids = np.arange(start, start + n, dtype=np.int64)
    return pa.table({
        "SAMPLE_ID": pa.array(ids),
        "URL": pa.array([f"https://img.example.com/{i}.jpg" for i in ids]),
        "TEXT": pa.array([f"caption {i}" for i in ids]),
        "HEIGHT": pa.array(np.full(n, 512, dtype=np.int32)),
        "WIDTH": pa.array(np.full(n, 384, dtype=np.int32)),
        "LICENSE": pa.array(["?"] * n),
        "NSFW": pa.array(["UNLIKELY"] * n),
        "similarity": pa.array(np.full(n, 0.31, dtype=np.float64)),
    })


# --- format detection -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("laion.parquet", "parquet"),
    ("LAION-PART-00001.PARQUET", "parquet"),
    ("urls.csv", "csv"),
    ("urls.CSV.GZ", "csv"),
    ("urls.tsv", "tsv"),
    ("urls.tsv.gz", "tsv"),
    ("rows.jsonl", "jsonl"),
    ("rows.jsonl.gz", "jsonl"),
    ("rows.json", "jsonl"),
    ("rows.ndjson", "jsonl"),
    ("CC-MAIN-x.warc.wat.gz", "wat"),
    ("x.wat.gz", "wat"),
    ("x.wat", "wat"),
    ("CC-MAIN-x.warc.gz", "warc"),
    ("x.WARC", "warc"),
])
def test_detect_format_by_name(name: str, expected: str) -> None:
    fmt = detect_format(Path("/some/dir") / name)
    assert fmt == expected
    assert isinstance(fmt, SnapshotFormat)


@pytest.mark.parametrize("name", ["notes.txt", "x.parquet.gz", "x.csv.bz2", "x.warc.wet.gz", "csv", "x.gz"])
def test_detect_format_rejects_unknown_names(name: str) -> None:
    with pytest.raises(SnapshotError) as info:
        detect_format(name)
    assert name in str(info.value)
    assert "\n" not in str(info.value)


# --- Parquet ----------------------------------------------------------------------------------------------


def test_laion_parquet_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "part-00000.parquet"
    table = laion_table(5)
    # LAION has missing cells: a null URL is still a reference, a null caption is no alt.
    table = table.set_column(1, "URL", pa.array(["https://img.example.com/0.jpg", None, "", "x", "y"]))
    table = table.set_column(2, "TEXT", pa.array(["a cat", None, "", "d", "e"]))
    pq.write_table(table, path, row_group_size=2)

    snapshot = open_snapshot(path)
    assert isinstance(snapshot, Snapshot)
    assert snapshot.format == "parquet"
    assert snapshot.path == path
    assert snapshot.total == 5
    refs = list(snapshot)
    assert refs[0] == Reference(url="https://img.example.com/0.jpg", ref_id="0", alt="a cat")
    assert [r.ref_id for r in refs] == ["0", "1", "2", "3", "4"]
    assert [r.url for r in refs] == ["https://img.example.com/0.jpg", "", "", "x", "y"]
    assert [r.alt for r in refs] == ["a cat", None, None, "d", "e"]
    assert all(r.page_url is None and r.recorded_md5 is None for r in refs)


def test_parquet_reads_only_the_columns_it_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "laion.parquet"
    pq.write_table(laion_table(3), path)
    asked: list[list[str] | None] = []
    original = pq.ParquetFile.iter_batches

    def spy(self: pq.ParquetFile, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        asked.append(kwargs.get("columns"))  # type: ignore[arg-type]
        assert kwargs.get("batch_size", 0) <= 8192
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert len(list(open_snapshot(path))) == 3
    assert asked and all(sorted(cols or []) == ["SAMPLE_ID", "TEXT", "URL"] for cols in asked)


def test_parquet_ids_hashes_and_page_url(tmp_path: Path) -> None:
    path = tmp_path / "hashed.parquet"
    pq.write_table(pa.table({
        "url": ["https://a.example/1.png", "https://a.example/2.png", "https://a.example/3.png"],
        "id": pa.array([12.0, None, 7.5]),
        "MD5": [" D41D8CD98F00B204E9800998ECF8427E ", "", None],
        "sha256": pa.array([None, "AB" * 32, "zz-not-hex"]),
        "pHash": ["0x8F373714ACFCF4D0", None, None],
        "page_url": ["https://a.example/page", None, ""],
        "caption": ["c1", "c2", "c3"],
    }), path)
    refs = list(open_snapshot(path))
    assert [r.ref_id for r in refs] == ["12", "hashed.parquet:1", "7.5"]
    assert refs[0].recorded_md5 == "d41d8cd98f00b204e9800998ecf8427e"
    assert refs[1].recorded_md5 is None and refs[2].recorded_md5 is None
    assert refs[1].recorded_sha256 == "ab" * 32
    assert refs[2].recorded_sha256 is None  # not hex: read as absent, never as ""
    assert refs[0].recorded_phash == "8f373714acfcf4d0"
    assert [r.page_url for r in refs] == ["https://a.example/page", None, None]
    assert [r.alt for r in refs] == ["c1", "c2", "c3"]


def test_parquet_without_url_column_lists_columns(tmp_path: Path) -> None:
    path = tmp_path / "nourl.parquet"
    pq.write_table(pa.table({"link": ["x"], "TEXT": ["y"]}), path)
    with pytest.raises(SnapshotError) as info:
        open_snapshot(path)
    message = str(info.value)
    assert str(path) in message and "'link'" in message and "'TEXT'" in message
    assert "\n" not in message


def test_text_named_parquet_fails_at_open(tmp_path: Path) -> None:
    path = write(tmp_path / "x.parquet", "url\nhttps://a.example/1.png\n")
    with pytest.raises(SnapshotError, match="not a readable Parquet file") as info:
        open_snapshot(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def big_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two million LAION-shaped rows in 20 row groups, written column-wise in about half a second."""
    path = tmp_path_factory.mktemp("big") / "big.parquet"
    rows, group = 2_000_000, 100_000
    schema = pa.schema([("SAMPLE_ID", pa.int64()), ("URL", pa.string()), ("TEXT", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, group):
            ids = pa.array(np.arange(start, start + group, dtype=np.int64))
            urls = pc.binary_join_element_wise("https://img.example.com/", pc.cast(ids, pa.string()), ".jpg", "")
            writer.write_table(pa.table([ids, urls, urls], schema=schema), row_group_size=group)
    return path


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc to read RSS")
def test_large_parquet_streams_in_flat_memory(big_parquet: Path) -> None:
    snapshot = open_snapshot(big_parquet)
    assert snapshot.total == 2_000_000
    baseline = peak = _rss_bytes()
    count = 0
    last: Reference | None = None
    for ref in snapshot:
        count += 1
        if count % 50_000 == 0:
            peak = max(peak, _rss_bytes())
        last = ref
    assert count == 2_000_000
    assert last is not None and last.ref_id == "1999999" and last.url.endswith("/1999999.jpg")
    # Holding the rows would take ~400 MB (the URL column alone is ~70 MB decoded); streaming stays flat.
    assert peak - baseline < 100 * 1024 * 1024, f"RSS grew by {(peak - baseline) / 1e6:.0f} MB"


# --- CSV / TSV / JSON Lines -------------------------------------------------------------------------------

CSV_TEXT = (
    "Url,Caption,ID,MD5\r\n"
    "https://a.example/1.jpg,\"a cat, sitting\",1,D41D8CD98F00B204E9800998ECF8427E\r\n"
    "https://a.example/2.jpg,\"two\nlines\",2,\r\n"
    ",,3,\r\n"
)


@pytest.mark.parametrize("gz", [False, True])
def test_csv_case_insensitive_columns(tmp_path: Path, gz: bool) -> None:
    path = write(tmp_path / ("urls.csv.gz" if gz else "urls.csv"), CSV_TEXT, gz=gz)
    snapshot = open_snapshot(path)
    assert snapshot.format == "csv" and snapshot.total is None
    refs = list(snapshot)
    assert [r.url for r in refs] == ["https://a.example/1.jpg", "https://a.example/2.jpg", ""]
    assert [r.alt for r in refs] == ["a cat, sitting", "two\nlines", None]
    assert [r.ref_id for r in refs] == ["1", "2", "3"]
    assert [r.recorded_md5 for r in refs] == ["d41d8cd98f00b204e9800998ecf8427e", None, None]


@pytest.mark.parametrize("gz", [False, True])
def test_tsv_has_no_quoting(tmp_path: Path, gz: bool) -> None:
    text = ('URL\tTEXT\tpage_url\n'
            'https://a.example/1.jpg\t"quoted" start\thttps://a.example/\n'
            'https://a.example/2.jpg\t\t\n')
    path = write(tmp_path / ("urls.tsv.gz" if gz else "urls.tsv"), text, gz=gz)
    refs = list(open_snapshot(path))
    assert [(r.url, r.alt, r.page_url) for r in refs] == [
        ("https://a.example/1.jpg", '"quoted" start', "https://a.example/"),
        ("https://a.example/2.jpg", None, None),
    ]
    assert [r.ref_id for r in refs] == [f"{path.name}:0", f"{path.name}:1"]


@pytest.mark.parametrize(("name", "gz"), [("rows.jsonl", False), ("rows.jsonl.gz", True), ("rows.json", False)])
def test_json_lines(tmp_path: Path, name: str, gz: bool) -> None:
    rows = [
        {"URL": "https://a.example/1.jpg", "SAMPLE_ID": 10, "TEXT": "one", "caption": "ignored"},
        {"url": "https://a.example/2.jpg", "caption": "two", "sha256": "AB" * 32, "phash": "8f373714acfcf4d0"},
        {"Url": None, "id": 3.0},
        {"other": "no url key at all"},
    ]
    text = "\n".join(json.dumps(r) for r in rows) + "\n\n"
    path = write(tmp_path / name, text, gz=gz)
    refs = list(open_snapshot(path))
    assert [r.url for r in refs] == ["https://a.example/1.jpg", "https://a.example/2.jpg", "", ""]
    assert [r.alt for r in refs] == ["one", "two", None, None]  # TEXT before caption
    assert [r.ref_id for r in refs] == ["10", f"{name}:1", "3", f"{name}:3"]
    assert refs[1].recorded_sha256 == "ab" * 32 and refs[1].recorded_phash == "8f373714acfcf4d0"


def test_alt_prefers_text_then_caption_then_alt(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", "alt,url,caption\nA,https://a.example/1.jpg,C\n")
    assert next(iter(open_snapshot(path))).alt == "C"
    path = write(tmp_path / "y.csv", "alt,url\nA,https://a.example/1.jpg\n")
    assert next(iter(open_snapshot(path))).alt == "A"


def test_fallback_ids_are_stable(tmp_path: Path) -> None:
    path = write(tmp_path / "noid.csv", "url\n" + "".join(f"https://a.example/{i}.jpg\n" for i in range(5)))
    snapshot = open_snapshot(path)
    first = [r.ref_id for r in snapshot]
    again = [r.ref_id for r in open_snapshot(path)]
    assert first == [f"noid.csv:{i}" for i in range(5)]
    assert [r.ref_id for r in snapshot] == first == again


def test_table_without_url_column_lists_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", "link,caption\nhttps://a.example/1.jpg,c\n")
    with pytest.raises(SnapshotError, match=r"no URL column.*'link', 'caption'") as info:
        open_snapshot(path)
    assert str(path) in str(info.value)
    path = write(tmp_path / "y.jsonl", json.dumps({"link": "x", "alt": "y"}) + "\n")
    with pytest.raises(SnapshotError, match=r"no URL column.*'link', 'alt'"):
        open_snapshot(path)


def test_tsv_named_csv_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", "url\tcaption\nhttps://a.example/1.jpg\tc\n")
    with pytest.raises(SnapshotError, match=r"tab-separated\? then name it \.tsv"):
        open_snapshot(path)


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("x.csv.gz", b"url\nhttps://a.example/1.jpg\n", "not gzip-compressed"),
    ("x.csv", gzip.compress(b"url\nhttps://a.example/1.jpg\n"), "is gzip-compressed"),
    ("x.csv", b"", "is empty"),
    ("x.csv", b"\xff\xfe\x00binary\x00junk\xff\n", "not UTF-8"),
    ("x.jsonl", b'[{"url": "https://a.example/1.jpg"}]\n', "JSON array, not an object"),
    ("x.jsonl", b"url,caption\nhttps://a.example/1.jpg,c\n", "line 1: not JSON"),
    ("x.jsonl", b"\n\n", "is empty"),
    ("x.jsonl.gz", gzip.compress(b'{"url": "https://a.example/1.jpg"}\n')[:20], "damaged gzip"),
])
def test_bad_files_fail_at_open(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SnapshotError, match=expected) as info:
        open_snapshot(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="no such file") as info:
        open_snapshot(tmp_path / "absent.parquet")
    assert str(tmp_path / "absent.parquet") in str(info.value)
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    with pytest.raises(SnapshotError, match="is a directory"):
        open_snapshot(folder)


def test_bad_json_line_is_reported_and_skipped(tmp_path: Path) -> None:
    lines = [json.dumps({"url": f"https://a.example/{i}.jpg"}) for i in range(60)]
    lines[56] = '{"url": "https://a.example/56.jpg", oops}'  # line 57
    lines[57] = "[1, 2]"  # line 58
    path = write(tmp_path / "rows.jsonl", "\n".join(lines) + "\n")
    bad = Recorder()
    refs = list(open_snapshot(path, on_bad_record=bad))
    assert len(refs) == 58
    assert "https://a.example/56.jpg" not in {r.url for r in refs}
    assert [(p, line) for p, line, _ in bad.calls] == [(str(path), 57), (str(path), 58)]
    assert "invalid JSON" in bad.calls[0][2] and "not an object" in bad.calls[1][2]
    # Row numbers count the bad rows too, so the ids of the rows after them do not shift.
    assert refs[-1].ref_id == "rows.jsonl:59"


def test_bad_csv_records_are_reported_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(
        b"url,caption\n"
        b"https://a.example/0.jpg,ok\n"
        b"https://a.example/1.jpg,too,many\n"  # line 3: columns shifted
        b"https://a.example/2.jpg,caf\xe9\n"  # line 4: Latin-1, not UTF-8
        b"\n"
        b"https://a.example/3.jpg,fine\n"
    )
    bad = Recorder()
    refs = list(open_snapshot(path, on_bad_record=bad))
    assert [(r.url, r.ref_id) for r in refs] == [("https://a.example/0.jpg", "rows.csv:0"),
                                                  ("https://a.example/3.jpg", "rows.csv:3")]
    assert [(line, reason) for _, line, reason in bad.calls] == [
        (3, "3 fields where the header has 2"), (4, "not valid UTF-8")]


def test_bad_records_are_logged_without_handler(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "rows.jsonl", '{"url": "https://a.example/1.jpg"}\nnot json\n')
    with caplog.at_level(logging.WARNING, logger="crawler.readers"):
        refs = list(open_snapshot(path))
    assert len(refs) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "line 2" in warnings[0]


def test_truncated_gzip_table_reports_once_and_stops(tmp_path: Path) -> None:
    text = "url\n" + "".join(f"https://a.example/{i:06d}.jpg\n" for i in range(20_000))
    data = gzip.compress(text.encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    bad = Recorder()
    refs = list(open_snapshot(path, on_bad_record=bad))
    assert 0 < len(refs) < 20_000
    assert refs[-1].url == f"https://a.example/{len(refs) - 1:06d}.jpg"
    assert len(bad.calls) == 1 and "rest of the file is unreadable" in bad.calls[0][2]


# --- several snapshots ------------------------------------------------------------------------------------


def test_iter_references_chains_in_order(tmp_path: Path) -> None:
    a = write(tmp_path / "a.csv", "url\nhttps://a.example/1.jpg\n")
    b = write(tmp_path / "b.jsonl", '{"url": "https://b.example/1.jpg"}\n')
    assert [r.ref_id for r in iter_references([a, str(b)])] == ["a.csv:0", "b.jsonl:0"]


def test_iter_references_validates_all_before_reading(tmp_path: Path) -> None:
    good = write(tmp_path / "a.csv", "url\nhttps://a.example/1.jpg\n")
    with pytest.raises(SnapshotError, match="missing.csv"):
        iter_references([good, tmp_path / "missing.csv"])  # raises at the call, before any next()


def test_readers_import_neither_scrapy_nor_twisted() -> None:
    code = (
        "import sys\n"
        "import crawler.readers as r\n"
        "from crawler.readers import parquet, delimited, jsonlines, wat, warc, html, records\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('scrapy', 'twisted'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


def test_an_overlong_line_is_a_bad_record_never_held_whole(tmp_path: Path) -> None:
    from crawler.readers.base import MAX_LINE_BYTES

    long_caption = "x" * (MAX_LINE_BYTES + 10)
    csv_path = write(tmp_path / "rows.csv", "url,caption\nhttps://a.example/0.jpg,ok\n"
                     f"https://a.example/1.jpg,{long_caption}\nhttps://a.example/2.jpg,ok\n")
    jsonl_path = write(tmp_path / "rows.jsonl", json.dumps({"url": "https://a.example/0.jpg"}) + "\n"
                       + json.dumps({"url": "https://a.example/1.jpg", "caption": long_caption}) + "\n"
                       + json.dumps({"url": "https://a.example/2.jpg"}) + "\n")
    for path, line in ((csv_path, 3), (jsonl_path, 2)):
        bad = Recorder()
        refs = list(open_snapshot(path, on_bad_record=bad))
        assert [r.url for r in refs] == ["https://a.example/0.jpg", "https://a.example/2.jpg"], path
        assert refs[-1].ref_id.endswith(":2")  # the skipped record still counts: later ids do not shift
        assert [(n, reason) for _, n, reason in bad.calls] == [(line, "a line longer than 8 MiB")], path
