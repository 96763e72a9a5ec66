"""The fast archive path: Lexbor's view of a page, and fastwarc reading with ``records.py`` judging damage.

HTML cases pin what the DOM holds where the stdlib parser used before saw something else (each of them is what
a browser does). Archive cases check that reading a gzip'd file through fastwarc gives exactly what the careful
warcio path alone gives — references and bad-record reports — on intact and damaged files alike.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from crawler.readers import open_snapshot
from crawler.readers.archive import scan_fast
from crawler.readers.base import BadRecords
from crawler.readers.html import body_images, page_images
from crawler.readers.records import RECOVERY_RECORDS, scan_records
from crawler.readers.warc import WarcReader
from tests.test_readers_archives import Recorder, build, html_response, img_page

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGE = "https://site.example/p/q"


def urls(html: str) -> list[tuple[int, str]]:
    return [(i.index, i.url) for i in page_images([html], PAGE)]


# --- HTML as the DOM has it ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("html", "expected"), [
    # a legacy entity name without ";" is not decoded before "=" in an attribute (the old parser made "¬=2")
    ('<img src="a.png?x=1&not=2&copy=3&AMP=4">', [(0, "https://site.example/p/a.png?x=1&not=2&copy=3&AMP=4")]),
    ('<img src="a.png?x=1&amp;y=2">', [(0, "https://site.example/p/a.png?x=1&y=2")]),
    # text-only and inert elements hold no <img>
    ('<textarea><img src="t.png"></textarea><title><img src="u.png"></title><img src="b.png">',
     [(0, "https://site.example/p/b.png")]),
    ('<template><img src="t.png"></template><img src="b.png">', [(0, "https://site.example/p/b.png")]),
    ('<xmp><img src="x.png"></xmp><iframe><img src="f.png"></iframe><img src="b.png">',
     [(0, "https://site.example/p/b.png")]),
    # <image> is an <img> to the parser; <noscript> content is markup (scripting is off)
    ('<image src="i.png"><noscript><img src="n.png"></noscript>',
     [(0, "https://site.example/p/i.png"), (1, "https://site.example/p/n.png")]),
    # an <img> a table cannot hold is fostered out before the table: DOM order
    ('<table><tr><td><img src="a.png"></td></tr><img src="b.png"></table>',
     [(0, "https://site.example/p/b.png"), (1, "https://site.example/p/a.png")]),
    # comments, CDATA junk, script and style text hide nothing
    ('<!-- <img src="c.png"> --><![CDATA[<img src="d.png">]]><script>w("<img src=s.png>")</script>'
     '<style><img src="y.png"></style><img src="b.png">', [(0, "https://site.example/p/b.png")]),
    # attributes run together, unquoted values, a tag cut off by the end of the page
    ('<img src="a.png"alt="x"><img src=b.png/><img src="c.png" alt="never closed',
     [(0, "https://site.example/p/a.png"), (1, "https://site.example/p/b.png/")]),
])
def test_dom_images(html: str, expected: list[tuple[int, str]]) -> None:
    assert urls(html) == expected


def test_attribute_values_as_the_dom_has_them() -> None:
    images = page_images(['<img src alt><img src="a\x00b.png" alt="x\r\ny"><img src="c.png" alt>'], PAGE)
    assert [(i.url, i.alt) for i in images] == [("", ""), ("https://site.example/p/a\ufffdb.png", "x\ny"),
                                                ("https://site.example/p/c.png", "")]


def test_base_href_first_non_blank_anywhere() -> None:
    html = '<img src="a.png"><base href=" "><base href="//cdn.example/x/"><base href="/ignored/"><img src="b.png">'
    assert urls(html) == [(0, "https://cdn.example/x/a.png"), (1, "https://cdn.example/x/b.png")]


def test_huge_attribute_and_many_images() -> None:
    html = '<img src="a.png" data-x="' + "x" * 3_000_000 + '">' + "".join(f'<img src="{n}.png">' for n in range(5000))
    found = urls(html)
    assert len(found) == 5001 and found[0] == (0, "https://site.example/p/a.png")
    assert found[-1] == (5000, "https://site.example/p/4999.png")


@pytest.mark.parametrize(("body", "content_type", "expected_alt"), [
    ('<img src="x.png" alt="café">'.encode("cp1252"), "text/html; charset=ISO-8859-1", "café"),
    ('<meta charset="windows-1251"><img src="x.png" alt="Привет">'.encode("cp1251"), "text/html", "Привет"),
    # a page labelled gb2312 written in GBK (browsers decode GB18030): 镕 is GBK, not GB2312
    ('<meta charset="gb2312"><img src="x.png" alt="镕">'.encode("gbk"), "text/html", "镕"),
    (b'<img src="x.png" alt="\xe9">', "text/html; charset=x-user-defined", "\uf7e9"),
    ('<img src="x.png" alt="日本">'.encode(), "text/html", "日本"),  # valid UTF-8: parsed as bytes
    (b"\xef\xbb\xbf" + '<img src="x.png" alt="ü">'.encode(), None, "ü"),  # byte-order mark
    ('<img src="x.png" alt="ü">'.encode("utf-16"), "text/html", "ü"),
    ('<img src="x.png" alt="a\udcffb">'.encode("utf-8", "surrogateescape"), "text/html", "a\ufffdb"),  # bad UTF-8
])
def test_body_images_charset(body: bytes, content_type: str | None, expected_alt: str) -> None:
    images = body_images(body, content_type, PAGE)
    assert len(images) == 1
    assert images[0].alt == expected_alt
    assert images[0].url == "https://site.example/p/x.png"


# --- fastwarc reading, records.py judging -------------------------------------------------------------------


def careful_and_fast(path: Path) -> tuple[list, list, list, list]:
    """(results, bad calls) of the careful path alone and of the fast path, for the same WARC file."""
    reader = WarcReader(path, True)
    careful_bad, fast_bad = Recorder(), Recorder()
    careful = list(scan_records(path, True, reader._extractor(), BadRecords(path, careful_bad, "offset")))
    fast = list(scan_fast(path, reader._extractor(), BadRecords(path, fast_bad, "offset")))
    return careful, careful_bad.calls, fast, fast_bad.calls


def pages(n: int) -> list:
    return [html_response(f"https://site{k}.example/", img_page(k)) for k in range(n)]


def test_fast_path_equals_careful_path_on_an_intact_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.warc.gz"
    build(path, pages(10))
    careful, careful_bad, fast, fast_bad = careful_and_fast(path)
    assert len(fast) == 10 and fast == careful and fast_bad == careful_bad == []


def test_crc_damage_only(tmp_path: Path) -> None:
    # The deflate data inflates fine; only the stored CRC-32 is wrong: still a damaged record.
    path = tmp_path / "crc.warc.gz"
    ranges = build(path, pages(3))
    data = bytearray(path.read_bytes())
    data[ranges[1][1] - 6] ^= 0xFF
    path.write_bytes(bytes(data))
    careful, careful_bad, fast, fast_bad = careful_and_fast(path)
    assert [offset for offset, _ in fast] == [ranges[0][0], ranges[2][0]]
    assert [where for _, where, _ in fast_bad] == [ranges[1][0]]
    assert (fast, fast_bad) == (careful, careful_bad)


def test_two_records_in_one_member(tmp_path: Path) -> None:
    path = tmp_path / "two.warc.gz"
    ranges = build(path, pages(4))
    data = path.read_bytes()
    joined = gzip.compress(gzip.decompress(data[ranges[1][0]:ranges[2][1]]))  # records 1 and 2, one member
    path.write_bytes(data[:ranges[1][0]] + joined + data[ranges[2][1]:])
    careful, careful_bad, fast, fast_bad = careful_and_fast(path)
    assert len(fast) == 3  # the first record of the joined member is read, the second is not
    assert [(where, "more than one WARC record" in why) for _, where, why in fast_bad] == [(ranges[1][0], True)]
    assert (fast, fast_bad) == (careful, careful_bad)


def test_empty_member_does_not_end_the_file(tmp_path: Path) -> None:
    # fastwarc stops quietly at an empty gzip member; the careful path reads on.
    path = tmp_path / "empty.warc.gz"
    ranges = build(path, pages(3))
    data = path.read_bytes()
    path.write_bytes(data[:ranges[1][0]] + gzip.compress(b"") + data[ranges[1][0]:])
    careful, careful_bad, fast, fast_bad = careful_and_fast(path)
    assert len(fast) == 3 and fast_bad == []
    assert (fast, fast_bad) == (careful, careful_bad)


@pytest.mark.parametrize("how", ["garbled", "cut", "header", "false-magic"])
def test_damage_in_a_long_file(tmp_path: Path, how: str) -> None:
    # Damage early, in the middle and near the end, with more than RECOVERY_RECORDS records between:
    # every stretch after a damaged record is read (and the fast path resumes, unseen here but timed).
    n = 2 * RECOVERY_RECORDS + 20
    path = tmp_path / "long.warc.gz"
    ranges = build(path, pages(n))
    data = bytearray(path.read_bytes())
    damaged = [3, RECOVERY_RECORDS + 10, n - 2]
    for k in reversed(damaged):
        start, end = ranges[k]
        if how == "garbled":
            for i in range(start + 12, end - 8):
                data[i] ^= 0x5A
        elif how == "cut":
            del data[start + 20:start + 40]
        elif how == "header":
            data[start:start + 10] = b"GARBAGE!!!"
        else:  # a gzip header inside the damage must not be taken for the next record
            data[start + 12:end - 8] = b"\x1f\x8b\x08" + bytes(end - start - 23)
    path.write_bytes(bytes(data))
    careful, careful_bad, fast, fast_bad = careful_and_fast(path)
    assert len(fast) == n - 3
    assert (fast, fast_bad) == (careful, careful_bad)
    assert len(fast_bad) == 3


def test_file_cut_inside_the_last_record_is_caught_by_the_careful_tail(tmp_path: Path) -> None:
    path = tmp_path / "cut.warc.gz"
    ranges = build(path, pages(5))
    path.write_bytes(path.read_bytes()[:ranges[4][1] - 30])
    careful, careful_bad, fast, fast_bad = careful_and_fast(path)
    assert len(fast) == 4 and [where for _, where, _ in fast_bad] == [ranges[4][0]]
    assert (fast, fast_bad) == (careful, careful_bad)


def test_chunked_and_gzip_encoded_body_is_decoded(tmp_path: Path) -> None:
    def encoded(writer: WARCWriter):
        body = gzip.compress(b'<img src="/enc.png" alt="e">')
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html"), ("Transfer-Encoding", "chunked"),
                                              ("Content-Encoding", "gzip")], protocol="HTTP/1.1")
        return writer.create_warc_record("https://e.example/p", "response", payload=io.BytesIO(chunked),
                                         http_headers=headers)

    path = tmp_path / "enc.warc.gz"
    build(path, [encoded, html_response("https://f.example/", img_page(1))])
    careful, _, fast, _ = careful_and_fast(path)
    assert fast == careful
    assert [(r.url, r.alt) for r in open_snapshot(path)] == [("https://e.example/enc.png", "e"),
                                                             ("https://f.example/img/1.png", "image 1")]


def test_reading_a_csv_imports_no_archive_library(tmp_path: Path) -> None:
    table = tmp_path / "a.csv"
    table.write_text("url\nhttps://a.example/1.jpg\n")
    code = (
        "import sys\n"
        "from crawler.readers import open_snapshot\n"
        f"assert len(list(open_snapshot({str(table)!r}))) == 1\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('fastwarc', 'selectolax', 'warcio', 'pyarrow'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)
