"""The ``<img src>`` references of an HTML page, as a browser's DOM has them, resolved as a browser would.

Used for WARC response records and, for ``resolve`` only, WAT links. Only ``src`` counts: ``srcset``
candidates are alternatives the browser picks from, not references the page makes one by one. ``data:`` and
other odd sources are kept as written; judging them is the crawl's job (``invalid_url``).

The page is parsed by Lexbor (selectolax), an HTML5 parser in C, about ten times faster than the stdlib
``HTMLParser`` used before and closer to a browser: an ``<img>`` is what the DOM holds, so markup inside
``<textarea>``, ``<title>`` or ``<template>`` is text or inert, ``<image>`` is an ``<img>``, images that
tables foster out of place keep the DOM's order, ``&not=`` in a URL stays as written, and attribute values
have their newlines normalised. The charset is still chosen by ``page_encoding`` (byte-order mark, HTTP
header, ``<meta charset>``, UTF-8; the web's labels and decoders, as browsers read them); valid UTF-8 goes to Lexbor as bytes, anything else is decoded here first
(undecodable bytes become U+FFFD). A page is held whole while parsed; more than ``MAX_HTML_BYTES`` is cut.
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urljoin

import webencodings
from selectolax.lexbor import LexborHTMLParser

logger = logging.getLogger(__name__)

MAX_HTML_BYTES: Final = 64 << 20  # a page held in memory to parse it; Common Crawl cuts payloads at 1 MiB
_SNIFF_BYTES: Final = 4096  # where HTML requires a <meta charset> to be
_CHARSET_PARAM = re.compile(r"charset\s*=\s*[\"']?\s*([A-Za-z0-9._:-]+)", re.IGNORECASE)
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([A-Za-z0-9._:-]+)", re.IGNORECASE)
_BOMS: Final = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
#: WHATWG encodings whose decoder is a superset of the Python codec of the same name: what browsers decode such
#: pages with (a page labelled gb2312 is written in GBK or GB18030, one labelled euc-kr in Windows-949...).
_BROWSER_CODECS: Final = {"gbk": "gb18030", "gb18030": "gb18030", "euc-kr": "cp949", "big5": "big5hkscs",
                          "shift_jis": "cp932"}
#: HTML's rule for a <meta> label (the bytes were already read as ASCII to find it): these mean something else.
_META_OVERRIDES: Final = {"utf-16le": "utf-8", "utf-16be": "utf-8", "x-user-defined": "windows-1252"}
X_USER_DEFINED: Final = "x-user-defined"  # a WHATWG encoding Python has no codec for (webencodings has one)
_URL_TRIM = "".join(chr(c) for c in range(0x21))  # the URL standard strips C0 controls and space at both ends
_URL_DROP = str.maketrans("", "", "\t\n\r")  # ... and removes tabs and newlines anywhere


@dataclass(frozen=True, slots=True)
class ImageTag:
    """One ``<img>`` with a ``src``: its position among the page's ``<img>`` elements, resolved URL and alt."""

    index: int
    url: str
    alt: str | None


def resolve(base: str | None, src: str) -> str:
    """``src`` made absolute against ``base``; as written (trimmed) when empty, baseless or unparsable."""
    ref = src.strip(_URL_TRIM).translate(_URL_DROP)
    if not ref or not base:
        return ref  # an empty src would resolve to the page itself, which the page never asked for
    try:
        return urljoin(base, ref)
    except ValueError:  # e.g. a broken IPv6 host in the base or the reference
        return ref


def page_encoding(content_type: str | None, head: bytes) -> str:
    """The page's charset as a Python codec name: a byte-order mark, else the HTTP header's label, else the
    ``<meta charset>`` label, else UTF-8. Labels are the web's (WHATWG Encoding, through ``webencodings``: "latin1"
    and "ascii" mean windows-1252, "x-sjis" Shift_JIS...); a label browsers do not know is ignored, as they
    ignore it, Python-only names included ("rot13", "utf-7", "zlib")."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    found = _CHARSET_PARAM.search(content_type or "")
    meta = _META_CHARSET.search(head[:_SNIFF_BYTES])
    for label, from_meta in ((found.group(1) if found else None, False),
                             (meta.group(1).decode("ascii") if meta else None, True)):
        encoding = webencodings.lookup(label) if label else None
        if encoding is not None:
            name = _META_OVERRIDES.get(encoding.name, encoding.name) if from_meta else encoding.name
            if name == X_USER_DEFINED:
                return name
            return _BROWSER_CODECS.get(name) or webencodings.lookup(name).codec_info.name
    return "utf-8"


def body_images(body: bytes, content_type: str | None, page_url: str | None) -> list[ImageTag]:
    """Every ``<img src>`` of an HTML body in bytes (charset from ``page_encoding``); see ``page_images``."""
    encoding = page_encoding(content_type, body[:_SNIFF_BYTES])
    html: bytes | str = body
    if encoding == X_USER_DEFINED:
        html = webencodings.lookup(encoding).codec_info.decode(body, "replace")[0]
    elif encoding != "utf-8" or not (body.isascii() or _is_utf8(body)):
        html = body.decode(encoding, errors="replace")
    return _dom_images(LexborHTMLParser(html), page_url)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def page_images(chunks: Iterable[str], page_url: str | None) -> list[ImageTag]:
    """Every ``<img src>`` of the page, in DOM order, resolved against its first ``<base href>`` or ``page_url``.

    An ``<img>`` element's index counts every ``<img>`` of the DOM, with or without a ``src``.
    """
    return _dom_images(LexborHTMLParser("".join(chunks)), page_url)


def _dom_images(tree: LexborHTMLParser, page_url: str | None) -> list[ImageTag]:
    base = page_url
    for node in tree.tags("base"):
        href = node.attrs.get("href")
        if href is not None and href.strip():
            base = resolve(page_url, href) or page_url
            break
    images = []
    for index, node in enumerate(tree.tags("img")):
        attrs = node.attrs
        if "src" in attrs:  # a bare ``src`` or ``alt`` (value None) is the empty string, as in the DOM
            alt = attrs.get("alt")
            if alt is None and "alt" in attrs:
                alt = ""
            images.append(ImageTag(index, resolve(base, attrs.get("src") or ""), alt))
    return images
