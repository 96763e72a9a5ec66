"""Common Crawl archives: the real whirlwind WARC/WAT files, WAT/WARC files built with warcio, and damage.

Damaged files are made by writing three records with warcio's ``WARCWriter`` and then breaking the middle
one's bytes; the reader must yield the first and third records' references and report the middle record
once, at its absolute offset.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from warcio.recordloader import ArcWarcRecord
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from crawler.readers import open_snapshot
from crawler.readers.html import page_encoding, page_images, resolve
from crawler.references import Reference, SnapshotError

PAGE = "https://an.wikipedia.org/wiki/Escopete"
RecordMaker = Callable[[WARCWriter], ArcWarcRecord]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []

    def __call__(self, path: str, where: int, reason: str) -> None:
        self.calls.append((path, where, reason))


def build(path: Path, makers: list[RecordMaker], *, gz: bool = True) -> list[tuple[int, int]]:
    """Write the records with warcio; return each record's ``(start, end)`` byte range in the file."""
    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=gz)
    ranges = []
    for make in makers:
        start = buffer.tell()
        writer.write_record(make(writer))
        ranges.append((start, buffer.tell()))
    path.write_bytes(buffer.getvalue())
    return ranges


def warcinfo(writer: WARCWriter) -> ArcWarcRecord:
    return writer.create_warcinfo_record("test.warc.gz", {"software": "refwatch tests"})


def wat_metadata(page_url: str, links: list[dict[str, str]], base: str | None = None) -> RecordMaker:
    """A WAT metadata record shaped like Common Crawl's for an HTML response."""
    head: dict[str, Any] = {"Title": "t"}
    if base is not None:
        head["Base"] = base
    document = {
        "Container": {"Filename": "CC-MAIN-x.warc.gz", "Compressed": True, "Offset": "123"},
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": page_url},
            "Payload-Metadata": {
                "Actual-Content-Type": "application/http; msgtype=response",
                "HTTP-Response-Metadata": {
                    "Response-Message": {"Status": "200", "Version": "HTTP/1.1", "Reason": "OK"},
                    "HTML-Metadata": {"Head": head, "Links": links},
                },
            },
        },
    }
    return raw_metadata(page_url, json.dumps(document).encode())


def raw_metadata(page_url: str, payload: bytes) -> RecordMaker:
    def make(writer: WARCWriter) -> ArcWarcRecord:
        return writer.create_warc_record(page_url, "metadata", payload=io.BytesIO(payload),
                                         warc_content_type="application/json")
    return make


def html_response(page_url: str, body: bytes, content_type: str = "text/html; charset=utf-8") -> RecordMaker:
    def make(writer: WARCWriter) -> ArcWarcRecord:
        headers = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
        return writer.create_warc_record(page_url, "response", payload=io.BytesIO(body), http_headers=headers)
    return make


def img_page(n: int) -> bytes:
    return f'<html><body><img src="/img/{n}.png" alt="image {n}"></body></html>'.encode()


# --- the real Common Crawl files --------------------------------------------------------------------------


def test_real_warc_html_images(realdata: Path) -> None:
    path = realdata / "commoncrawl" / "whirlwind.warc.gz"
    bad = Recorder()
    snapshot = open_snapshot(path, on_bad_record=bad)
    assert snapshot.format == "warc" and snapshot.total is None
    refs = list(snapshot)
    assert bad.calls == []
    urls = [r.url for r in refs]
    assert len(refs) == 13  # every <img> of the page; the response record is at offset 1023
    assert {r.page_url for r in refs} == {PAGE}
    assert refs[0] == Reference(url="https://an.wikipedia.org/static/images/icons/wikipedia.png",
                                ref_id="whirlwind.warc.gz@1023#0", page_url=PAGE, alt="")
    # Protocol-relative sources take the page's scheme; the entity in the alt is decoded.
    escudo = ("https://upload.wikimedia.org/wikipedia/commons/thumb/0/0a/Escudo_de_Escopete_%28Guadalajara%29.svg/"
              "70px-Escudo_de_Escopete_%28Guadalajara%29.svg.png")
    assert Reference(url=escudo, ref_id="whirlwind.warc.gz@1023#4", page_url=PAGE, alt="Escudo d'armas") in refs
    assert "https://an.wikipedia.org/static/images/footer/poweredby_mediawiki_88x31.png" in urls
    assert "https://login.wikimedia.org/wiki/Special:CentralAutoLogin/start?type=1x1" in urls
    # srcset candidates are not references.
    assert not any("53px-Translate_icon" in u or "wikimedia-button-2x" in u for u in urls)
    assert all(u.startswith("https://") for u in urls)
    assert [r.ref_id for r in open_snapshot(path)] == [r.ref_id for r in refs]


def test_real_wat_holds_only_request_metadata(realdata: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The tutorial's WAT file has a warcinfo record and the metadata of the *request* record only,
    # so it has no HTML-Metadata and no links: it must read cleanly and yield nothing.
    path = realdata / "commoncrawl" / "whirlwind.warc.wat.gz"
    bad = Recorder()
    with caplog.at_level(logging.WARNING):
        snapshot = open_snapshot(path, on_bad_record=bad)
        assert snapshot.format == "wat"
        assert list(snapshot) == []
    assert bad.calls == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- WAT files built like Common Crawl's ------------------------------------------------------------------


def test_wat_image_links_resolved(tmp_path: Path) -> None:
    path = tmp_path / "CC-MAIN-test.warc.wat.gz"
    page = "https://example.com/dir/page.html"
    links = [
        {"path": "A@/href", "url": "/about", "text": "About"},
        {"path": "IMG@/src", "url": "/template/x/loading.gif"},
        {"path": "IMG@/src", "url": "img/a.png", "alt": "An A"},
        {"path": "LINK@/href", "url": "style.css", "rel": "stylesheet"},
        {"path": "IMG@/src", "url": "//cdn.example.net/b.jpg"},
        {"path": "IMG@/srcset", "url": "img/a-2x.png"},
        {"path": "IMG@/src", "url": "https://other.example/c.gif", "alt": ""},
        {"path": "IMG@/src", "url": "data:image/gif;base64,R0lGODlhAQABAAAAACw="},
    ]
    ranges = build(path, [
        warcinfo,
        wat_metadata(page, links),
        wat_metadata("https://example.org/a/b", [{"path": "IMG@/src", "url": "x.png"}], base="/static/"),
        wat_metadata("https://example.net/", [{"path": "IMG@/src", "url": "y.png"}],
                     base="https://static.example.net/assets/"),
        raw_metadata("https://example.net/", json.dumps({"Envelope": {"Payload-Metadata": {}}}).encode()),
    ])
    bad = Recorder()
    refs = list(open_snapshot(path, on_bad_record=bad))
    assert bad.calls == []
    at1, at2, at3 = ranges[1][0], ranges[2][0], ranges[3][0]
    name = path.name
    assert refs == [
        Reference("https://example.com/template/x/loading.gif", f"{name}@{at1}#1", page),
        Reference("https://example.com/dir/img/a.png", f"{name}@{at1}#2", page, alt="An A"),
        Reference("https://cdn.example.net/b.jpg", f"{name}@{at1}#4", page),
        Reference("https://other.example/c.gif", f"{name}@{at1}#6", page, alt=""),
        Reference("data:image/gif;base64,R0lGODlhAQABAAAAACw=", f"{name}@{at1}#7", page),
        Reference("https://example.org/static/x.png", f"{name}@{at2}#0", "https://example.org/a/b"),
        Reference("https://static.example.net/assets/y.png", f"{name}@{at3}#0", "https://example.net/"),
    ]


def _wat_three(path: Path) -> list[tuple[int, int]]:
    return build(path, [
        wat_metadata(f"https://site{n}.example/", [{"path": "IMG@/src", "url": f"/img/{n}.png"}]) for n in (1, 2, 3)
    ])


def _damage(path: Path, ranges: list[tuple[int, int]], how: str) -> None:
    data = bytearray(path.read_bytes())
    start, end = ranges[1]
    if how == "garbled":  # flip the deflate bytes of the middle member (header and trailer left intact)
        for i in range(start + 12, end - 8):
            data[i] ^= 0x5A
    elif how == "cut":  # bytes missing from inside the member: its stream runs into the next member
        del data[start + 20: start + 40]
    elif how == "header":  # not even a gzip member where one should start
        data[start: start + 10] = b"GARBAGE!!!"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["garbled", "cut", "header"])
def test_wat_damaged_middle_record_is_skipped(tmp_path: Path, how: str) -> None:
    path = tmp_path / "damaged.warc.wat.gz"
    ranges = _wat_three(path)
    _damage(path, ranges, how)
    bad = Recorder()
    refs = list(open_snapshot(path, on_bad_record=bad))
    assert [r.url for r in refs] == ["https://site1.example/img/1.png", "https://site3.example/img/3.png"]
    assert refs[0].ref_id == f"damaged.warc.wat.gz@{ranges[0][0]}#0"
    assert len(bad.calls) == 1
    assert bad.calls[0][:2] == (str(path), ranges[1][0])


def test_wat_invalid_json_payload_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "badjson.wat.gz"
    ranges = build(path, [
        wat_metadata("https://site1.example/", [{"path": "IMG@/src", "url": "/1.png"}]),
        raw_metadata("https://site2.example/", b'{"Envelope": {"Payload-Metadata": '),
        wat_metadata("https://site3.example/", [{"path": "IMG@/src", "url": "/3.png"}]),
    ])
    bad = Recorder()
    refs = list(open_snapshot(path, on_bad_record=bad))
    assert [r.url for r in refs] == ["https://site1.example/1.png", "https://site3.example/3.png"]
    assert [(where, "invalid JSON" in reason) for _, where, reason in bad.calls] == [(ranges[1][0], True)]


def test_damage_is_logged_once_per_record_without_handler(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "damaged.wat.gz"
    ranges = _wat_three(path)
    _damage(path, ranges, "garbled")
    with caplog.at_level(logging.WARNING, logger="crawler.readers"):
        assert len(list(open_snapshot(path))) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0] and f"offset {ranges[1][0]}" in warnings[0]


def test_file_ending_inside_last_record(tmp_path: Path) -> None:
    path = tmp_path / "cut.wat.gz"
    ranges = _wat_three(path)
    data = path.read_bytes()
    path.write_bytes(data[: ranges[2][0] + 30])
    bad = Recorder()
    refs = list(open_snapshot(path, on_bad_record=bad))
    assert [r.url for r in refs] == ["https://site1.example/img/1.png", "https://site2.example/img/2.png"]
    assert [(where, "truncated" in reason) for _, where, reason in bad.calls] == [(ranges[2][0], True)]


# --- WARC files -------------------------------------------------------------------------------------------


def test_warc_only_html_responses(tmp_path: Path) -> None:
    path = tmp_path / "mixed.warc.gz"
    latin = '<html><head><base href="https://cdn.example/base/"></head><img src="é.png" alt="café"></html>'
    ranges = build(path, [
        warcinfo,
        html_response("https://a.example/p", b'<img src="/1.png"><img alt="no src"><img src="">'),
        html_response("https://a.example/i.png", b"\x89PNG...", content_type="image/png"),
        html_response("https://a.example/l", latin.encode("cp1252"), content_type="text/html; charset=ISO-8859-1"),
        html_response("https://a.example/x", b'<img src="x.gif"/>', content_type="application/xhtml+xml"),
    ])
    refs = list(open_snapshot(path))
    name = path.name
    assert refs == [
        Reference("https://a.example/1.png", f"{name}@{ranges[1][0]}#0", "https://a.example/p"),
        Reference("", f"{name}@{ranges[1][0]}#2", "https://a.example/p"),  # src="" is kept, never the page
        Reference("https://cdn.example/base/é.png", f"{name}@{ranges[3][0]}#0", "https://a.example/l", alt="café"),
        Reference("https://a.example/x.gif", f"{name}@{ranges[4][0]}#0", "https://a.example/x"),
    ]


def test_warc_damaged_middle_record_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "damaged.warc.gz"
    ranges = build(path, [html_response(f"https://site{n}.example/", img_page(n)) for n in (1, 2, 3)])
    _damage(path, ranges, "garbled")
    bad = Recorder()
    refs = list(open_snapshot(path, on_bad_record=bad))
    assert [r.url for r in refs] == ["https://site1.example/img/1.png", "https://site3.example/img/3.png"]
    assert refs[1].ref_id == f"damaged.warc.gz@{ranges[2][0]}#0"
    assert [where for _, where, _ in bad.calls] == [ranges[1][0]]


def test_warc_damage_deep_inside_a_large_record(tmp_path: Path) -> None:
    # warcio alone inflates in 16 KiB blocks and, after the first, turns an inflate error into end-of-stream:
    # it would hand over a truncated second page and silently lose the third record.
    rnd = random.Random(7)

    def page(n: int) -> bytes:
        filler = "".join(rnd.choices(string.ascii_lowercase + string.digits, k=100_000))
        return f'<img src="/img/{n}.png"><p>{filler}</p><img src="/img/{n}b.png">'.encode()

    path = tmp_path / "large.warc.gz"
    ranges = build(path, [html_response(f"https://site{n}.example/", page(n)) for n in (1, 2, 3)])
    data = bytearray(path.read_bytes())
    start, end = ranges[1]
    assert end - start > 50_000
    for i in range(end - 2000, end - 1000):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    bad = Recorder()
    refs = list(open_snapshot(path, on_bad_record=bad))
    assert [r.url for r in refs] == ["https://site1.example/img/1.png", "https://site1.example/img/1b.png",
                                     "https://site3.example/img/3.png", "https://site3.example/img/3b.png"]
    assert [where for _, where, _ in bad.calls] == [start]


def test_uncompressed_warc_damaged_middle_record(tmp_path: Path) -> None:
    path = tmp_path / "plain.warc"
    ranges = build(path, [html_response(f"https://site{n}.example/", img_page(n)) for n in (1, 2, 3)], gz=False)
    data = bytearray(path.read_bytes())
    assert data[ranges[1][0]: ranges[1][0] + 5] == b"WARC/"
    data[ranges[1][0]: ranges[1][0] + 5] = b"XARC/"
    path.write_bytes(bytes(data))
    bad = Recorder()
    refs = list(open_snapshot(path, on_bad_record=bad))
    assert [r.url for r in refs] == ["https://site1.example/img/1.png", "https://site3.example/img/3.png"]
    assert refs[0].ref_id == "plain.warc@0#0"
    assert refs[1].ref_id == f"plain.warc@{ranges[2][0]}#0"
    assert [where for _, where, _ in bad.calls] == [ranges[1][0]]


def test_uncompressed_warc_wrong_content_length(tmp_path: Path) -> None:
    # Without gzip members or CRCs, a Content-Length that is too long swallows the next record; the missing
    # blank lines after the record give it away, and reading resumes at the next "WARC/1." line.
    path = tmp_path / "plain.warc"
    ranges = build(path, [html_response(f"https://site{n}.example/", img_page(n)) for n in (1, 2, 3)], gz=False)
    data = path.read_bytes()
    start, end = ranges[1]
    head = data[start:end]
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    path.write_bytes(data[:start] + head.replace(f"Content-Length: {length}".encode(),
                                                 f"Content-Length: {length + 100}".encode()) + data[end:])
    bad = Recorder()
    refs = list(open_snapshot(path, on_bad_record=bad))
    assert [r.url for r in refs] == ["https://site1.example/img/1.png", "https://site3.example/img/3.png"]
    assert [where for _, where, _ in bad.calls] == [start]


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("into", [10, 120, -30])
def test_file_cut_inside_the_last_record(tmp_path: Path, gz: bool, into: int) -> None:
    # Into its first line, its headers, or its body: warcio alone would end quietly in the first two cases.
    path = tmp_path / ("cut.warc.gz" if gz else "cut.warc")
    ranges = build(path, [html_response(f"https://site{n}.example/", img_page(n)) for n in (1, 2, 3)], gz=gz)
    start, end = ranges[2]
    path.write_bytes(path.read_bytes()[: (start if into > 0 else end) + into])
    bad = Recorder()
    refs = list(open_snapshot(path, on_bad_record=bad))
    assert [r.url for r in refs] == ["https://site1.example/img/1.png", "https://site2.example/img/2.png"]
    assert [where for _, where, _ in bad.calls] == [start]
    assert "truncated" in bad.calls[0][2] or "incomplete WARC record headers" in bad.calls[0][2]


def test_gzip_member_with_headers_cut_short(tmp_path: Path) -> None:
    # An intact gzip member (good CRC) whose WARC record stops after two header lines.
    path = tmp_path / "short.warc.gz"
    ranges = build(path, [html_response(f"https://site{n}.example/", img_page(n)) for n in (1, 2, 3)])
    data = path.read_bytes()
    short = gzip.compress(b"WARC/1.0\r\nWARC-Type: response\r\n")
    path.write_bytes(data[: ranges[1][0]] + short + data[ranges[1][1]:])
    bad = Recorder()
    refs = list(open_snapshot(path, on_bad_record=bad))
    assert [r.url for r in refs] == ["https://site1.example/img/1.png", "https://site3.example/img/3.png"]
    assert [where for _, where, _ in bad.calls] == [ranges[1][0]]


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("x.warc.gz", b"WARC/1.0\r\nnot really\r\n", "not gzip-compressed"),
    ("x.warc.gz", gzip.compress(b"hello, this is text\n"), "not a readable WARC file"),
    ("x.warc", b"hello, this is text\n", "not a readable WARC file"),
    ("x.warc.wat.gz", b"", "is empty|not gzip"),
])
def test_bad_archives_fail_at_open(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SnapshotError, match=expected) as info:
        open_snapshot(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_whole_file_gzip_warc_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.warc"
    build(plain, [warcinfo, html_response("https://a.example/", img_page(1))], gz=False)
    path = tmp_path / "whole.warc.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(SnapshotError, match="warcio recompress"):
        open_snapshot(path)


# --- HTML ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("base", "src", "expected"), [
    (PAGE, "//upload.wikimedia.org/a.png", "https://upload.wikimedia.org/a.png"),
    (PAGE, "/static/a.png", "https://an.wikipedia.org/static/a.png"),
    (PAGE, "a.png", "https://an.wikipedia.org/wiki/a.png"),
    (PAGE, "  a b.png\n", "https://an.wikipedia.org/wiki/a b.png"),
    (PAGE, "data:image/png;base64,AAAA", "data:image/png;base64,AAAA"),
    (PAGE, "", ""),
    (None, "a.png", "a.png"),
    ("http://[::1", "x.png", "x.png"),
])
def test_resolve(base: str | None, src: str, expected: str) -> None:
    assert resolve(base, src) == expected


def test_page_images_base_and_srcset() -> None:
    html = ('<head><base href="/cdn/"><base href="/ignored/"></head>'
            '<img src="a.png" srcset="a-2x.png 2x" alt="A &amp; B"><IMG SRC="b.png" src="c.png">'
            '<script>var s = "<img src=in-script.png>";</script><img src="https://x.example/d.png">')
    images = page_images([html[:30], html[30:]], "https://site.example/p/q")
    assert [(i.index, i.url, i.alt) for i in images] == [
        (0, "https://site.example/cdn/a.png", "A & B"),
        (1, "https://site.example/cdn/b.png", None),
        (2, "https://x.example/d.png", None),
    ]


def test_page_images_survive_junk_markup() -> None:
    # CPython < 3.13 raises AssertionError on "<![" without a keyword; browsers skip it as a bogus comment.
    html = '<![ junk ]><img src="a.png"><![if !IE]><img src="b.png"><![endif]><p>x <![ unterminated'
    images = page_images([html], "https://site.example/")
    assert [i.url for i in images] == ["https://site.example/a.png", "https://site.example/b.png"]


@pytest.mark.parametrize(("content_type", "head", "expected"), [
    ("text/html; charset=UTF-8", b"", "utf-8"),
    ("text/html; charset=ISO-8859-1", b"", "cp1252"),
    ("text/html", b'<meta charset="windows-1251">', "cp1251"),
    ("text/html; charset=bogus", b"", "utf-8"),
    ("text/html; charset=zlib", b"", "utf-8"),
    (None, b"\xef\xbb\xbf<html>", "utf-8-sig"),
    # labels of the web (WHATWG), not Python's: ignored when browsers do not know them, decoded as browsers do
    ("text/html; charset=utf-7", b"", "utf-8"),
    ("text/html; charset=rot13", b'<meta charset="x-sjis">', "cp932"),
    ("text/html; charset=unicode-1-1-utf-8", b"", "utf-8"),
    ("text/html; charset=ks_c_5601-1987", b"", "cp949"),
    ("text/html", b'<meta charset="gb2312">', "gb18030"),
    ("text/html", b'<meta charset="x-mac-roman">', "mac-roman"),
    ("text/html", b'<meta charset="dos-874">', "cp874"),
    ("text/html", b'<meta charset="utf-16">', "utf-8"),  # HTML: a <meta> read as ASCII cannot mean UTF-16
    ("text/html", b'<meta charset="x-user-defined">', "cp1252"),
    ("text/html; charset=x-user-defined", b"", "x-user-defined"),
])
def test_page_encoding(content_type: str | None, head: bytes, expected: str) -> None:
    assert page_encoding(content_type, head) == expected


def test_wat_record_over_the_json_limit_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crawler.readers import wat

    monkeypatch.setattr(wat, "MAX_WAT_JSON_BYTES", 2000)
    path = tmp_path / "big.wat.gz"
    many = [{"path": "IMG@/src", "url": f"/{i}.png"} for i in range(200)]  # ~6 KB of JSON
    ranges = build(path, [
        wat_metadata("https://site1.example/", [{"path": "IMG@/src", "url": "/1.png"}]),
        wat_metadata("https://site2.example/", many),
        wat_metadata("https://site3.example/", [{"path": "IMG@/src", "url": "/3.png"}]),
    ])
    bad = Recorder()
    refs = list(open_snapshot(path, on_bad_record=bad))
    assert [r.url for r in refs] == ["https://site1.example/1.png", "https://site3.example/3.png"]
    assert [(where, reason) for _, where, reason in bad.calls] == [
        (ranges[1][0], "WAT metadata record larger than 0 MiB")]
