"""The ``<img src>`` references of an HTML page, resolved as a browser would resolve them.

Used for WARC response records and, for ``resolve`` only, WAT links. Only ``src`` counts: ``srcset``
candidates are alternatives the browser picks from, not references the page makes one by one. ``data:`` and
other odd sources are kept as written; judging them is the crawl's job (``invalid_url``). The page is decoded
incrementally and fed to the stdlib parser in chunks, so a large page never needs to sit in memory twice.
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import BinaryIO, Final
from urllib.parse import urljoin

logger = logging.getLogger(__name__)

_CHUNK: Final = 1 << 16
_SNIFF_BYTES: Final = 4096  # where HTML requires a <meta charset> to be
_CHARSET_PARAM = re.compile(r"charset\s*=\s*[\"']?\s*([A-Za-z0-9._:-]+)", re.IGNORECASE)
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([A-Za-z0-9._:-]+)", re.IGNORECASE)
_BOMS: Final = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
#: WHATWG Encoding: these labels mean windows-1252 on the web (a page saying latin-1 uses 0x80-0x9f as cp1252).
_WEB_ALIASES: Final = {"iso8859-1": "cp1252", "ascii": "cp1252"}
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
    """The page's charset: a byte-order mark, else the HTTP header's, else ``<meta charset>``, else UTF-8."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    found = _CHARSET_PARAM.search(content_type or "")
    candidates = [found.group(1) if found else None]
    meta = _META_CHARSET.search(head[:_SNIFF_BYTES])
    candidates.append(meta.group(1).decode("ascii") if meta else None)
    for name in candidates:
        if name:
            try:
                info = codecs.lookup(name)
            except LookupError:
                continue  # an unknown label: browsers ignore it too
            if getattr(info, "_is_text_encoding", True):  # not base64, zlib, rot13 and other transforms
                return _WEB_ALIASES.get(info.name, info.name)
    return "utf-8"


def decoded_chunks(stream: BinaryIO, content_type: str | None) -> Iterator[str]:
    """The body of ``stream`` as text, chunk by chunk; undecodable bytes become U+FFFD, never an error."""
    first = stream.read(_CHUNK)
    decoder = codecs.getincrementaldecoder(page_encoding(content_type, first))(errors="replace")
    chunk = first
    while chunk:
        yield decoder.decode(chunk)
        chunk = stream.read(_CHUNK)
    yield decoder.decode(b"", final=True)


def page_images(chunks: Iterable[str], page_url: str | None) -> list[ImageTag]:
    """Every ``<img src>`` of the page, resolved against its first ``<base href>`` or else ``page_url``."""
    parser = _ImageCollector()
    for chunk in chunks:
        parser.feed(chunk)
    parser.close()
    base = page_url
    if parser.base_href is not None:
        base = resolve(page_url, parser.base_href) or page_url
    return [ImageTag(index, resolve(base, src), alt) for index, src, alt in parser.images]


class _ImageCollector(HTMLParser):
    """Collects raw ``<img>`` sources and the first ``<base href>``; resolution waits for the whole page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[tuple[int, str, str | None]] = []
        self.base_href: str | None = None
        self._img_count = 0

    def parse_marked_section(self, i: int, report: int = 1) -> int:
        # CPython before 3.13 raises AssertionError on "<![" not followed by a known keyword (pages do have
        # such junk); browsers treat it as a bogus comment up to the next ">", and so do we.
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            end = self.rawdata.find(">", i + 3)
            return -1 if end < 0 else end + 1  # -1: wait for more data (close() then treats it as text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            index = self._img_count
            self._img_count += 1
            found = _first_attrs(attrs)
            src = found.get("src")
            if src is not None:
                self.images.append((index, src, found.get("alt")))
        elif tag == "base" and self.base_href is None:
            href = _first_attrs(attrs).get("href")
            if href is not None and href.strip():
                self.base_href = href


def _first_attrs(attrs: list[tuple[str, str | None]]) -> dict[str, str]:
    """Attribute values by name; on a repeated name the first wins, as in browsers. A bare name is ``""``."""
    found: dict[str, str] = {}
    for name, value in attrs:
        found.setdefault(name, value if value is not None else "")
    return found
