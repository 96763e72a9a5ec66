"""Crashers the fuzzer found (``bench/fuzz.py``), kept as plain tests: each input is built here from a few bytes.

Each test names what the input did before its fix (a traceback) and checks what it does now: a one-line
error naming the file, or the record skipped and counted with the rest of the file still read.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import brotli
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawler.readers import open_snapshot
from crawler.readers.base import one_line
from crawler.references import SnapshotError
from tests.fuzz.tables import Case
from tests.fuzz.targets import check_snapshot

DEEP = 100_000  # nesting that json's C scanner gives up on with RecursionError (its limit is the stack's)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []

    def __call__(self, path: str, where: int, reason: str) -> None:
        self.calls.append((path, where, reason))


def read(path: Path) -> tuple[list[str], list[tuple[str, int, str]]]:
    """The URLs of a snapshot and its bad-record reports (after the fuzz property has been checked on it)."""
    check_snapshot(Case(path.name, path.read_bytes()))
    bad = Recorder()
    return [ref.url for ref in open_snapshot(path, on_bad_record=bad)], bad.calls


def record(record_type: str, block: bytes, *, content_type: str, length: int | None = None,
           target: str = "https://a.example/page") -> bytes:
    """One WARC record written by hand, so that its headers can lie."""
    head = (f"WARC/1.0\r\nWARC-Type: {record_type}\r\nWARC-Target-URI: {target}\r\n"
            f"WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-000000000000>\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(block) if length is None else length}\r\n\r\n")
    return head.encode() + block + b"\r\n\r\n"


def wat_record(links: object, target: str = "https://a.example/page") -> bytes:
    html = {"Head": {}, "Links": links}
    document = {"Envelope": {"Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": html}}}}
    return record("metadata", json.dumps(document).encode(), content_type="application/json", target=target)


def html_response(body: bytes, *headers: str) -> bytes:
    http = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    return record("response", http.encode() + body, content_type="application/http; msgtype=response")


def archive(path: Path, records: list[bytes]) -> Path:
    """``records`` as a WARC-format file: one gzip member each if the name ends in .gz."""
    gz = path.name.endswith(".gz")
    path.write_bytes(b"".join(gzip.compress(r, mtime=0) if gz else r for r in records))
    return path


IMAGE_LINK = [{"path": "IMG@/src", "url": "/a.png"}]


# --- JSON nested deeper than the parser's recursion limit --------------------------------------------------------

def test_jsonl_first_line_nested_too_deep_is_a_clear_error(tmp_path: Path) -> None:
    """Before: RecursionError out of ``open_snapshot``."""
    path = tmp_path / "rows.jsonl"
    path.write_text("[" * DEEP + "\n")
    with pytest.raises(SnapshotError, match=r"rows\.jsonl: line 1: not JSON \(maximum recursion depth"):
        open_snapshot(path)


def test_jsonl_line_nested_too_deep_is_a_counted_bad_record(tmp_path: Path) -> None:
    """Before: RecursionError in the middle of the iteration, ending the crawl."""
    path = tmp_path / "rows.jsonl"
    nested = '{"url": "https://e.com/b.jpg", "text": ' + "[" * DEEP + "]" * DEEP + "}"
    path.write_text('{"url": "https://e.com/a.jpg"}\n' + nested + '\n{"url": "https://e.com/c.jpg"}\n')
    urls, bad = read(path)
    assert urls == ["https://e.com/a.jpg", "https://e.com/c.jpg"]
    assert [(where, reason.split(":")[0]) for _, where, reason in bad] == [(2, "invalid JSON")]


@pytest.mark.parametrize("name", ["x.warc.wat", "x.warc.wat.gz"])
def test_wat_payload_nested_too_deep_is_a_counted_bad_record(tmp_path: Path, name: str) -> None:
    """Before: RecursionError out of the WAT reader's record handler."""
    deep = record("metadata", b'{"Envelope": ' + b"[" * DEEP + b"]" * DEEP + b"}", content_type="application/json")
    path = archive(tmp_path / name, [wat_record(IMAGE_LINK), deep, wat_record(IMAGE_LINK)])
    urls, bad = read(path)
    assert urls == ["https://a.example/a.png"] * 2
    assert len(bad) == 1 and "invalid JSON in WAT metadata record" in bad[0][2]


# --- WARC headers and bodies -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["x.warc", "x.warc.gz"])
def test_brotli_encoded_page_is_decoded(tmp_path: Path, name: str) -> None:
    """Before: AttributeError from warcio's brotli set-up (it sets an attribute brotli >= 1.1 refuses) for any
    ``Content-Encoding: br`` response read by warcio: every record of an uncompressed file, the last of a gzip'd one."""
    page = brotli.compress(b'<html><body><img src="/br.png"></body></html>')
    path = archive(tmp_path / name, [html_response(page, "Content-Encoding: br")])
    assert read(path) == (["https://a.example/br.png"], [])


@pytest.mark.parametrize("name", ["x.warc.wat", "x.warc.wat.gz"])
def test_content_length_past_any_file_is_a_counted_bad_record(tmp_path: Path, name: str) -> None:
    """Before: OverflowError from warcio reading a block of 2**64 bytes."""
    huge = record("metadata", b"{}", content_type="application/json", length=2**64)
    path = archive(tmp_path / name, [wat_record(IMAGE_LINK), huge, wat_record(IMAGE_LINK)])
    urls, bad = read(path)
    assert urls == ["https://a.example/a.png"] * 2
    assert len(bad) == 1 and "Content-Length of 20 digits is not a byte count" in bad[0][2]


def test_bytes_quoted_from_a_damaged_record_are_escaped(tmp_path: Path) -> None:
    """Before: warcio's message quoted the record's first line raw, ESC and NUL included, into the reason."""
    path = archive(tmp_path / "x.warc.wat", [wat_record(IMAGE_LINK), b"\x1b[2J\x00 not a record\r\n\r\n",
                                             wat_record(IMAGE_LINK)])
    urls, bad = read(path)
    assert urls == ["https://a.example/a.png"] * 2
    assert len(bad) == 1
    assert "\\x1b[2J\\x00 not a record" in bad[0][2] and "\x1b" not in bad[0][2] and "\x00" not in bad[0][2]


# --- Parquet ------------------------------------------------------------------------------------------------------

def test_parquet_url_column_twice_is_a_clear_error(tmp_path: Path) -> None:
    """Before: KeyError ('Field "url" exists 2 times in schema') in the middle of the iteration."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["url", "url"]), path)
    with pytest.raises(SnapshotError, match=r"t\.parquet: column 'url' appears 2 times; rename all but one"):
        open_snapshot(path)


@pytest.mark.parametrize("column", [pa.array([0, 2**40], pa.timestamp("s")), pa.array([0, 1], pa.time64("ns"))],
                         ids=["past-year-9999", "nanoseconds"])
def test_parquet_cells_python_cannot_hold_are_counted(tmp_path: Path, column: pa.Array) -> None:
    """Before: OverflowError / ValueError out of the iteration for an id column whose cells have no Python value
    (a timestamp past year 9999, a time with nanoseconds); the row groups before it are read."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"url": ["https://e.com/a.jpg", "https://e.com/b.jpg"], "id": column}), path,
                   row_group_size=1)
    urls, bad = read(path)
    assert urls == ["https://e.com/a.jpg"]
    assert [(where, reason.split(":")[0]) for _, where, reason in bad] == [(1, "row group 1")]


def test_parquet_column_name_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    """Before: UnicodeDecodeError out of ``open_snapshot`` (pyarrow decodes the footer's column paths)."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"url": ["https://e.com/a.jpg"], "zzz": ["b"]}), sink, store_schema=False)
    path = tmp_path / "t.parquet"
    path.write_bytes(sink.getvalue().to_pybytes().replace(b"zzz", b"\xf5zz"))  # same length: offsets hold
    with pytest.raises(SnapshotError, match=r"t\.parquet: is not a readable Parquet file: 'utf-8' codec can't"):
        open_snapshot(path)


def test_parquet_footer_bytes_are_escaped_in_the_error(tmp_path: Path) -> None:
    """A pyarrow-written empty table with one byte of its footer changed: Arrow's message quotes the byte it
    could not decode. Before: the raw control byte was in the one-line error."""
    path = tmp_path / "laion.parquet"
    path.write_bytes(bytes.fromhex(
        "504152311502191c35001806736368656d611500001600191c190c160016002600160000191c180c4152524f573a736368656d61"
        "184c2f2f2f2f2f7a414141414151414141414141414b4141774142674146414167414367004141414141424241414d41414141"
        "4341414941414141424141494141414142414141414141414141413d001820706172717565742d6370702d6172726f77207665"
        "7273696f6e2032362e302e31190c00a400000050415231"))
    with pytest.raises(SnapshotError) as caught:
        open_snapshot(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: is not a readable Parquet file: ")
    assert one_line(message) == message


def test_one_line() -> None:
    assert one_line("a\n  b\tc\r\n") == "a b c"
    assert one_line("\x1b[31mred\x00\x7f\x9b") == "\\x1b[31mred\\x00\\x7f\\x9b"
    assert one_line("é 日本 \u200b") == "é 日本 \u200b"


@pytest.mark.parametrize("name", ["x.warc", "x.warc.gz"])
def test_brotli_bomb_in_a_page_is_cut_not_inflated(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: warcio keeps each decompress call's whole output, and brotli's had no bound: a few kilobytes of a
    ``Content-Encoding: br`` page could inflate to gigabytes. Now a page yields what a reader keeps (the cap,
    lowered here so the test stays small) and the rest is cut, images before the cut still found."""
    from crawler.readers import records

    cap = 1 << 20
    monkeypatch.setattr(records, "MAX_HTML_BYTES", cap)
    page = brotli.compress(b'<html><body><img src="/first.png">' + b" " * (64 << 20), quality=1)
    assert len(page) < 64 << 10  # 64 MiB of page in a few kilobytes
    decompressor = records._Brotli()
    out = b"".join(decompressor.decompress(page[i:i + 16384]) for i in range(0, len(page), 16384))
    assert out.startswith(b"<html><body><img") and len(out) == cap + 1
    path = archive(tmp_path / name, [html_response(page, "Content-Encoding: br")])
    assert read(path)[0] == ["https://a.example/first.png"]
