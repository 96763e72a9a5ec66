"""Strategies for Common Crawl archives (WARC and WAT): records written by hand so every header can lie.

A record is drawn as its parts: the version line, WARC headers (any may be missing, doubled, without a colon,
huge, or with a ``Content-Length`` that is off by a little, a lot, negative or not a number), and a block:
an HTTP response (status line, ``Content-Type`` with odd charsets, chunking and ``Content-Encoding`` done
right or wrong, an HTML page with ``<img>``, ``<base>``, ``<meta charset>`` and deep nesting) or a WAT
metadata JSON document shaped like Common Crawl's with any level replaced by another JSON value. Records are
gzip'd one member each (as Common Crawl writes them), left plain, or gzip'd as one stream, and the file is
then mutated byte by byte.
"""

from __future__ import annotations

import gzip
import json
import zlib

import brotli
from hypothesis import strategies as st

from tests.fuzz.mutations import gzip_member, mutated
from tests.fuzz.tables import URLS, Case, cell_text, json_value

VERSIONS = ("WARC/1.0", "WARC/1.0", "WARC/1.0", "WARC/1.1", "WARC/0.17", "warc/1.0", "WARC/1.0 ", "HTTP/1.1 200 OK",
            "WARC/", "ARC/1.0", "")
LENGTH_ERRORS = ("exact", "exact", "exact", "exact", "off", "far", "negative", "text", "empty", "huge", "spaces")
CHARSETS = ("utf-8", "UTF-8", "iso-8859-1", "windows-1252", "utf-16", "utf-16be", "utf-32", "utf-7", "idna",
            "punycode", "undefined", "base64", "rot13", "hz", "iso-2022-jp", "x-user-defined", "bogus", "",
            "unicode_escape", "raw_unicode_escape", "uu", "zlib")
HTML_TYPES = ("text/html", "text/html", "application/xhtml+xml", "image/png", "TEXT/HTML", "text/html ", "")
ENCODINGS = ("none", "none", "gzip", "br", "deflate", "gzip-garbage", "br-garbage", "identity", "x-unknown")


@st.composite
def html_page(draw: st.DrawFn) -> str:
    parts = ["<!doctype html><html><head>"]
    if draw(st.booleans()):
        parts.append(f'<meta charset="{draw(st.sampled_from(CHARSETS))}">')
    if draw(st.booleans()):
        parts.append(f'<base href="{draw(st.sampled_from(URLS + ("", "http://[::1")))}">')
    parts.append("</head><body>")
    depth = draw(st.sampled_from([0, 0, 10, 600, 20_000]))
    parts.append("<div>" * depth)
    for _ in range(draw(st.integers(0, 5))):
        src = draw(st.one_of(st.sampled_from(URLS), cell_text))
        alt = draw(st.one_of(st.none(), cell_text))
        quote = draw(st.sampled_from(['"', "'", ""]))
        parts.append(f"<img src={quote}{src}{quote}" + (f" alt={quote}{alt}{quote}" if alt is not None else "") + ">")
    parts.append(draw(st.sampled_from(["", "<textarea><img src=x>", "<img src", "<!--", "<template><img src=t>",
                                       "<svg><image href=s.png>", "\x00", "&#0;&#xD800;"])))
    return "".join(parts)


def _chunked(body: bytes, broken: bool) -> bytes:
    if broken:
        return b"ZZZ\r\n" + body + b"\r\n"
    half = len(body) // 2
    chunks = [body[:half], body[half:]]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"


@st.composite
def http_response_block(draw: st.DrawFn) -> bytes:
    charset = draw(st.sampled_from(CHARSETS))
    page = draw(html_page())
    try:
        body = page.encode(charset or "utf-8", "replace")
    except (LookupError, UnicodeError, TypeError):
        body = page.encode("utf-8")
    mime = draw(st.sampled_from(HTML_TYPES))
    headers = [f"Content-Type: {mime}" + (f"; charset={charset}" if draw(st.booleans()) else "")]
    encoding = draw(st.sampled_from(ENCODINGS))
    if encoding != "none":
        headers.append(f"Content-Encoding: {encoding.removesuffix('-garbage')}")
        if encoding == "gzip":
            body = gzip_member(body)
        elif encoding == "br":
            body = brotli.compress(body)
        elif encoding == "deflate":
            body = zlib.compress(body)
        elif encoding.endswith("-garbage"):
            body = draw(st.binary(max_size=40))
    if draw(st.integers(0, 4)) == 0:
        headers.append("Transfer-Encoding: chunked")
        body = _chunked(body, draw(st.booleans()))
    status = draw(st.sampled_from(["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.0 404 Not Found", "HTTP/2 200",
                                   "HTTP/1.1 999999999999 X", "garbage", ""]))
    head = status + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    return head.encode("latin-1", "replace") + body


@st.composite
def wat_document(draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from(["doc", "doc", "doc", "doc", "value", "deep", "garbage"]))
    if how == "value":
        return json.dumps(draw(json_value)).encode()
    if how == "deep":
        depth = draw(st.sampled_from([999, 5_000, 100_000]))
        inner = "[" * depth + "]" * depth
        return ('{"Envelope": {"Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Links": '
                + inner + "}}}}}").encode()
    if how == "garbage":
        return draw(st.binary(max_size=60))
    link = st.fixed_dictionaries(
        {"path": st.sampled_from(["IMG@/src", "IMG@/src", "A@/href", "IMG@/srcset", "img@/src"]),
         "url": st.one_of(st.sampled_from(URLS), cell_text, json_value)},
        optional={"alt": json_value},
    )
    links = draw(st.one_of(st.lists(st.one_of(link, json_value), max_size=5), json_value))
    head: object = {"Title": "t"}
    if draw(st.booleans()):
        head = {"Base": draw(st.one_of(st.sampled_from(URLS + ("http://[::1", "  ")), json_value))}
    html: object = {"Head": head, "Links": links}
    target: object = draw(st.one_of(st.sampled_from(URLS), json_value))
    document: object = {"Envelope": {
        "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": target},
        "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": html}},
    }}
    if draw(st.integers(0, 5)) == 0:  # some level is not an object
        level = draw(st.integers(0, 3))
        node = document
        for key in ("Envelope", "Payload-Metadata", "HTTP-Response-Metadata")[:level]:
            node = node[key]  # type: ignore[index]
        key = next(iter(node))  # type: ignore[call-overload]
        node[key] = draw(json_value)  # type: ignore[index]
    return json.dumps(document, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


@st.composite
def warc_record(draw: st.DrawFn, wat: bool) -> bytes:
    kinds = ["metadata"] * 4 + ["response", "warcinfo", "request"] if wat else \
        ["response"] * 4 + ["metadata", "warcinfo", "request", "resource", "revisit"]
    record_type = draw(st.sampled_from(kinds + ["", "RESPONSE", "conversion"]))
    if record_type == "metadata" or (wat and draw(st.integers(0, 5)) == 0):
        block, content_type = draw(wat_document()), "application/json"
    elif record_type in ("response", "RESPONSE"):
        block, content_type = draw(http_response_block()), "application/http; msgtype=response"
    else:
        block, content_type = draw(st.binary(max_size=40)), "application/warc-fields"
    content_type = draw(st.sampled_from([content_type, content_type, content_type, "text/plain", "", "json"]))
    target = draw(st.one_of(st.sampled_from(URLS), st.sampled_from(["<https://a.example/>", "<>", "  "])))
    length = len(block)
    error = draw(st.sampled_from(LENGTH_ERRORS))
    length_text = {
        "exact": str(length), "off": str(length + draw(st.integers(-4, 4))), "far": str(length * 3 + 1000),
        "negative": "-1", "text": "abc", "empty": "", "huge": str(2**64), "spaces": f" {length} ",
    }[error]
    headers = [
        ("WARC-Type", record_type), ("WARC-Record-ID", "<urn:uuid:12345678-1234-1234-1234-123456789abc>"),
        ("WARC-Date", "2024-01-01T00:00:00Z"), ("WARC-Target-URI", target), ("Content-Type", content_type),
        ("Content-Length", length_text),
    ]
    dropped = draw(st.sets(st.integers(0, len(headers) - 1), max_size=2)) if draw(st.integers(0, 5)) == 0 else set()
    lines = [f"{k}: {v}" for i, (k, v) in enumerate(headers) if i not in dropped]
    oddity = draw(st.sampled_from(["none"] * 6 + ["no-colon", "twice", "huge", "latin1", "folded"]))
    if oddity == "no-colon":
        lines.insert(1, "WARC-Broken header line")
    elif oddity == "twice":
        lines.append(f"Content-Length: {length + 7}")
    elif oddity == "huge":
        lines.insert(1, "X-Huge: " + "h" * draw(st.sampled_from([70_000, 300_000])))
    elif oddity == "latin1":
        lines.insert(1, "X-Odd: caf\xe9 \xff")
    elif oddity == "folded":
        lines.insert(1, "X-Folded: a\r\n continued")
    version = draw(st.sampled_from(VERSIONS))
    head = (version + "\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n").encode("latin-1", "replace")
    return head + block + draw(st.sampled_from([b"\r\n\r\n", b"\r\n\r\n", b"\r\n", b"", b"\n\n"]))


_INFO = b"software: refwatch fuzz\r\nformat: WARC File Format 1.0\r\n"
WARCINFO = (b"WARC/1.0\r\nWARC-Type: warcinfo\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-000000000001>\r\n"
            b"WARC-Date: 2024-01-01T00:00:00Z\r\nContent-Type: application/warc-fields\r\n"
            b"Content-Length: %d\r\n\r\n%s\r\n\r\n" % (len(_INFO), _INFO))


@st.composite
def archive_case(draw: st.DrawFn, wat: bool) -> Case:
    if draw(st.integers(0, 19)) == 0:
        data = draw(st.binary(max_size=200))
        packing = draw(st.sampled_from(["plain", "members"]))
        if packing == "members":
            data = gzip_member(data)
    else:
        records = draw(st.lists(warc_record(wat), min_size=1, max_size=5))
        if draw(st.integers(0, 2)):  # a sound warcinfo record first, as real files have: damage comes later
            records.insert(0, WARCINFO)
        packing = draw(st.sampled_from(["members", "members", "members", "plain", "stream"]))
        if packing == "members":
            parts = [gzip_member(r) if draw(st.integers(0, 9)) else draw(st.sampled_from([r, gzip_member(b"")]))
                     for r in records]
        elif packing == "stream":
            parts = [gzip.compress(b"".join(records), mtime=0)]
        else:
            parts = records
        data = draw(mutated(st.just(b"".join(parts)), max_mutations=2, keep=len(parts[0])))
    gzipped = packing != "plain"
    if draw(st.integers(0, 14)) == 0:
        gzipped = not gzipped  # a name that lies
    suffixes = (".warc.wat", ".wat") if wat else (".warc",)
    name = "CC-MAIN-x" + draw(st.sampled_from(suffixes)) + (".gz" if gzipped else "")
    return Case(name, data)
