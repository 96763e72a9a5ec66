"""JSON Lines URL tables (``.jsonl``, ``.ndjson`` and ``.json`` holding one object a line), optionally gzip'd.

Keys are matched per row, case-insensitively, because JSON writers often drop null keys: the first object
may lack a caption that later objects have. The first object must exist and name a URL key, so a file that is
not JSON Lines (a pretty-printed JSON array, say) fails before the crawl starts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crawler.readers.base import (
    GZIP_ERRORS,
    MAX_LINE_BYTES,
    BadRecordHandler,
    BadRecords,
    TextLines,
    check_compression,
    check_first_line,
    json_kind,
    open_binary,
    snapshot_error,
)
from crawler.readers.columns import ALT_NAMES, ID_NAMES, PAGE_URL_NAMES, RowMapper, find_columns
from crawler.references import Reference

logger = logging.getLogger(__name__)


class JsonLinesReader:
    """A validated JSON Lines snapshot: its first object is parsed and must name a URL key."""

    def __init__(self, path: Path, gzipped: bool, on_bad_record: BadRecordHandler | None = None) -> None:
        self.path = path
        self._gzipped = gzipped
        self._on_bad_record = on_bad_record
        check_compression(path, gzipped)
        check_first_line(path, gzipped)
        find_columns(path, list(self._first_object()))  # SnapshotError naming the keys when none is a URL

    def _first_object(self) -> dict[str, Any]:
        with open_binary(self.path, self._gzipped) as stream:
            lines = TextLines(stream)
            try:
                for text in lines:
                    if text.strip():
                        break
                else:
                    raise snapshot_error(self.path, "is empty: no JSON object in it")
            except GZIP_ERRORS as exc:
                raise snapshot_error(self.path, f"damaged gzip data: {exc}") from None
        where = f"line {lines.number}"
        if lines.undecodable:
            raise snapshot_error(self.path, f"{where}: not UTF-8 text; is it really a JSON Lines file?")
        try:
            first = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: arrays or objects nested too deep
            raise snapshot_error(self.path, f"{where}: not JSON ({exc}); JSON Lines holds one object a line") from None
        if not isinstance(first, dict):
            hint = " (a single JSON array is not supported: write one object a line)" if isinstance(first, list) else ""
            raise snapshot_error(self.path, f"{where}: a JSON {json_kind(first)}, not an object{hint}")
        return first

    @property
    def total(self) -> int | None:
        return None

    def __iter__(self) -> Iterator[Reference]:
        bad = BadRecords(self.path, self._on_bad_record, unit="line")
        mapper = RowMapper(self.path)
        with open_binary(self.path, self._gzipped) as stream:
            lines = TextLines(stream)
            row = 0
            try:
                for text in lines:
                    if lines.overlong:
                        lines.overlong = False
                        bad(lines.number, f"a line longer than {MAX_LINE_BYTES >> 20} MiB")
                        row += 1
                        continue
                    if not text.strip():
                        continue
                    number = lines.number
                    obj = _parse(text, lines.undecodable)
                    lines.undecodable = False
                    if isinstance(obj, str):
                        bad(number, obj)
                    else:
                        yield _reference(mapper, row, obj)
                    row += 1
            except GZIP_ERRORS as exc:
                bad(lines.number + 1,
                    f"gzip data damaged after line {lines.number}: {exc}; the rest of the file is unreadable")


def _parse(text: str, undecodable: bool) -> dict[str, Any] | str:
    """The line's object, or why it is a bad record."""
    if undecodable:
        return "not valid UTF-8"
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays or objects nested too deep
        return f"invalid JSON: {exc}"
    if not isinstance(obj, dict):
        return f"a JSON {json_kind(obj)}, not an object"
    return obj


def _reference(mapper: RowMapper, row: int, obj: dict[str, Any]) -> Reference:
    lower = {key.lower(): value for key, value in obj.items()}

    def first(aliases: tuple[str, ...]) -> Any:
        return next((lower[a] for a in aliases if a in lower), None)

    return mapper.reference(
        row,
        lower.get("url"),
        alt=first(ALT_NAMES),
        ref_id=first(ID_NAMES),
        page_url=first(PAGE_URL_NAMES),
        md5=lower.get("md5"),
        sha256=lower.get("sha256"),
        phash=lower.get("phash"),
    )
