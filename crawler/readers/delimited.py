"""CSV and TSV URL tables with a header row, optionally gzip'd, read a record at a time.

CSV follows RFC 4180 quoting (a caption may hold commas and newlines). TSV has no quoting at all: a field is
everything between tabs, so a caption starting with ``"`` cannot swallow the lines after it. A record whose
field count differs from the header's is skipped and reported, because its columns have shifted and its "URL"
would be some other cell.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from crawler.readers.base import (
    GZIP_ERRORS,
    MAX_LINE_BYTES,
    BadRecordHandler,
    BadRecords,
    TextLines,
    check_compression,
    check_first_line,
    open_binary,
    snapshot_error,
)
from crawler.readers.columns import Columns, RowMapper, find_columns
from crawler.references import Reference

logger = logging.getLogger(__name__)

_DIALECTS: Final[dict[str, dict[str, Any]]] = {
    "csv": {"delimiter": ",", "quotechar": '"', "doublequote": True},
    "tsv": {"delimiter": "\t", "quoting": csv.QUOTE_NONE},
}


class DelimitedReader:
    """A validated CSV or TSV snapshot: the header is read and the URL column found when it is built."""

    def __init__(self, path: Path, fmt: str, gzipped: bool, on_bad_record: BadRecordHandler | None = None) -> None:
        self.path = path
        self._fmt = fmt
        self._gzipped = gzipped
        self._on_bad_record = on_bad_record
        check_compression(path, gzipped)
        check_first_line(path, gzipped)
        with open_binary(path, gzipped) as stream:
            lines = TextLines(stream)
            try:
                header = next(csv.reader(lines, **_DIALECTS[fmt]), None)
            except GZIP_ERRORS as exc:
                raise snapshot_error(path, f"damaged gzip data: {exc}") from None
            except csv.Error as exc:
                raise snapshot_error(path, f"line 1: malformed header: {exc}") from None
        if not header:
            raise snapshot_error(path, f"is empty: no header row (a {fmt.upper()} snapshot needs one naming "
                                       "a URL column)")
        if lines.undecodable:
            raise snapshot_error(path, "line 1: header is not UTF-8 text; is it really a CSV/TSV file?")
        self._header = [name.strip() for name in header]
        self._columns = self._find_columns()

    def _find_columns(self) -> Columns:
        # A TSV named .csv (or the reverse) reads as one column; say so instead of "no URL column".
        other, other_name, other_suffix = ("\t", "tab", ".tsv") if self._fmt == "csv" else (",", "comma", ".csv")
        if len(self._header) == 1 and other in self._header[0]:
            raise snapshot_error(self.path, f"header has a single column {self._header[0]!r}: "
                                            f"is it {other_name}-separated? then name it {other_suffix}")
        return find_columns(self.path, self._header)

    @property
    def total(self) -> int | None:
        return None  # counting would mean reading the whole file twice

    def __iter__(self) -> Iterator[Reference]:
        bad = BadRecords(self.path, self._on_bad_record, unit="line")
        mapper = RowMapper(self.path)
        width = len(self._header)
        index = {name: i for i, name in reversed(list(enumerate(self._header)))}  # first of duplicate names wins
        cols = self._columns
        positions = [index.get(name) if name is not None else None
                     for name in (cols.url, cols.alt, cols.ref_id, cols.page_url, cols.md5, cols.sha256, cols.phash)]
        with open_binary(self.path, self._gzipped) as stream:
            lines = TextLines(stream)
            records = csv.reader(lines, **_DIALECTS[self._fmt])
            row = 0
            try:
                next(records, None)  # the header, checked when the reader was built
                while True:
                    start = lines.number + 1
                    lines.undecodable = False
                    try:
                        cells = next(records)
                    except StopIteration:
                        break
                    except csv.Error as exc:
                        bad(start, f"malformed {self._fmt.upper()} record: {exc}")
                        row += 1
                        continue
                    if lines.overlong:
                        lines.overlong = False
                        bad(start, f"a line longer than {MAX_LINE_BYTES >> 20} MiB")
                        row += 1
                        continue
                    if not cells:
                        continue  # a blank line is not a record
                    if lines.undecodable:
                        bad(start, "not valid UTF-8")
                    elif len(cells) != width:
                        bad(start, f"{len(cells)} fields where the header has {width}")
                    else:
                        yield mapper.reference(row, *(cells[p] if p is not None else None for p in positions))
                    row += 1
            except GZIP_ERRORS as exc:
                # A single gzip stream cannot be resynchronised: everything after the damage is lost.
                bad(lines.number + 1,
                    f"gzip data damaged after line {lines.number}: {exc}; the rest of the file is unreadable")
