"""Common Crawl WAT files: the ``IMG@/src`` links its HTML metadata recorded for each crawled page.

A WAT file is a WARC file of ``metadata`` records, each a JSON document about one record of the matching
WARC file. Only HTTP responses that were parsed as HTML carry links, under ``Envelope > Payload-Metadata >
HTTP-Response-Metadata > HTML-Metadata > Links``; the page's ``<base href>``, if it had one, is recorded
beside them as ``HTML-Metadata > Head > Base``. Link URLs are stored as the page wrote them, so relative ones
are resolved here; their HTML character references are already decoded by Common Crawl's extractor (since
2019, commoncrawl/ia-web-commons#14; older WAT files keep ``&amp;`` in URLs and are read as they are). A
reference's id is ``{file name}@{record offset}#{link index}``, the index being the link's position in the
record's ``Links`` list.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Final

from crawler.readers.archive import ArchiveReader
from crawler.readers.base import json_kind
from crawler.readers.html import ImageTag, resolve
from crawler.readers.records import BadRecord, PageImages, Record
from crawler.readers.warc import target_uri

logger = logging.getLogger(__name__)

IMAGE_LINK_PATH: Final = "IMG@/src"
_HTML_METADATA: Final = ("Envelope", "Payload-Metadata", "HTTP-Response-Metadata", "HTML-Metadata")


#: A metadata record's JSON larger than this is a bad record, read no further: Common Crawl's are a few KiB to a
#: few MiB (a page with many links), and one record of a damaged or hostile file could otherwise be its size.
MAX_WAT_JSON_BYTES: Final = 64 << 20


class WatReader(ArchiveReader):
    """A validated WAT snapshot: the ``IMG@/src`` links of its metadata records."""

    def _extractor(self) -> _LinkExtractor:
        return _LinkExtractor()

    def _finished(self, extractor: Callable[[Record], PageImages | None]) -> None:
        if isinstance(extractor, _LinkExtractor) and extractor.json_records == 0:
            # A WARC file named .wat reads "fine" and yields nothing; say why instead of staying silent.
            logger.warning("%s: no JSON metadata records found; is it really a WAT file?", self.path)


class _LinkExtractor:
    """Record handler: the page URL and image links of one WAT metadata record (``None`` if it has none)."""

    def __init__(self) -> None:
        self.json_records = 0

    def __call__(self, record: Record) -> tuple[str | None, list[ImageTag]] | None:
        if record.type != "metadata":
            return None
        if "json" not in (record.header("Content-Type") or "").lower():
            return None
        self.json_records += 1
        payload = record.body(MAX_WAT_JSON_BYTES + 1)
        if len(payload) > MAX_WAT_JSON_BYTES:
            raise BadRecord(f"WAT metadata record larger than {MAX_WAT_JSON_BYTES >> 20} MiB")
        try:
            document = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # undecodable bytes too; RecursionError: nested too deep
            raise BadRecord(f"invalid JSON in WAT metadata record: {exc}") from None
        if not isinstance(document, dict):
            raise BadRecord(f"WAT metadata payload is a JSON {json_kind(document)}, not an object")
        html = _walk(document, _HTML_METADATA)
        if not isinstance(html, dict):
            return None  # a request, a non-HTML response, warcinfo: no links
        page_url = target_uri(record)
        if page_url is None:
            uri = _walk(document, ("Envelope", "WARC-Header-Metadata", "WARC-Target-URI"))
            page_url = uri if isinstance(uri, str) and uri else None
        links = html.get("Links", [])
        if not isinstance(links, list):
            raise BadRecord(f"HTML-Metadata.Links is a JSON {json_kind(links)}, not an array")
        base = page_url
        base_href = _walk(html, ("Head", "Base"))
        if isinstance(base_href, str) and base_href.strip():
            base = resolve(page_url, base_href) or page_url
        images = [
            ImageTag(index, resolve(base, link["url"]), _alt(link))
            for index, link in enumerate(links)
            if isinstance(link, dict) and link.get("path") == IMAGE_LINK_PATH and isinstance(link.get("url"), str)
        ]
        return page_url, images


def _walk(document: Any, keys: tuple[str, ...]) -> Any:
    """``document[k1][k2]...``, or ``None`` where a key is missing or a level is not an object."""
    for key in keys:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _alt(link: dict[str, Any]) -> str | None:
    alt = link.get("alt")
    return alt if isinstance(alt, str) else None
