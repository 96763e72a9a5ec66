"""Common Crawl (or any) WARC files: the ``<img src>`` references of every archived HTML response.

Each ``response`` record whose HTTP ``Content-Type`` is HTML or XHTML is parsed; the page URL is the record's
``WARC-Target-URI``. Records of other types and non-HTML bodies are passed over without reading their
payload. A reference's id is ``{file name}@{record offset}#{img index}``: the record's absolute byte offset
(what CDX indexes use to find it again) and the ``<img>`` element's position in the page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from selectolax.lexbor import SelectolaxError

from crawler.readers.archive import ArchiveReader
from crawler.readers.html import MAX_HTML_BYTES, ImageTag, body_images
from crawler.readers.records import BadRecord, PageImages, Record

logger = logging.getLogger(__name__)

HTML_TYPES: Final = frozenset({"text/html", "application/xhtml+xml"})


class WarcReader(ArchiveReader):
    """A validated WARC snapshot: the ``<img>`` tags of its HTML responses."""

    def _extractor(self) -> Callable[[Record], PageImages | None]:
        return _html_images


def target_uri(record: Record) -> str | None:
    """The record's ``WARC-Target-URI``, without the angle brackets some early WARC writers put around it."""
    uri = record.header("WARC-Target-URI")
    if uri is None:
        return None
    uri = uri.strip()
    if uri.startswith("<") and uri.endswith(">"):
        uri = uri[1:-1]
    return uri or None


def _html_images(record: Record) -> tuple[str | None, list[ImageTag]] | None:
    """The page URL and images of an HTML response record; ``None`` for any other record."""
    if record.type != "response" or not record.is_http:
        return None
    content_type = record.http_content_type
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime not in HTML_TYPES:
        return None
    page_url = target_uri(record)
    # The body comes with chunking and Content-Encoding undone (Common Crawl renames those headers, so its
    # bodies are stored decoded).
    body = record.body(MAX_HTML_BYTES)
    try:
        return page_url, body_images(body, content_type, page_url)
    except SelectolaxError as exc:  # Lexbor could not build the document (out of memory, in practice)
        raise BadRecord(f"HTML parser gave up on the page: {exc}") from None
