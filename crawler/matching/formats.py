"""Hash-list file formats: one pass over a file into ``HashList`` columns, malformed lines named or counted.

Formats, told apart by the file name and then by the first line that is not blank or a ``#`` comment:

- refwatch CSV: a header naming ``algorithm`` and ``hash`` (optional ``id``, ``label``; any order and case,
  other columns ignored).
- ThreatExchange CSV: the header ``signal_type,signal_str,collab,category,tags`` that python-threatexchange
  writes with ``threatexchange dataset -P --csv`` (see ``_TX_SIGNAL_TYPES``).
- Hasher-Matcher-Actioner 1.x data files, named ``<privacy group>.hash_pdq.te`` (or ``.hash_video_md5.te``,
  ``.hash_md5.te``): headerless CSV rows ``hash,indicator_id,descriptor_id,timestamp,tags`` (tags
  space-separated), as HMA's ``ThreatExchangeS3Adapter`` reads them. The indicator id becomes the entry
  id, the tags the label.
- plain text: one hex hash a line, whose algorithm the caller names.

Lists have millions of rows, so rows go straight into compact per-algorithm buffers (no object per row)
and the hot loop is kept flat. A malformed line raises ``HashListError`` naming file and line; with
``skip_bad_lines`` it is skipped and counted (the first few line numbers and reasons are kept). Messages
describe a bad value (its length, whether it is hex) instead of repeating it: it may still be a real hash.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Final, TextIO

from crawler.matching.hashlist import (
    HEX_DIGITS,
    HashList,
    HashListError,
    _ColumnBuilder,
    normalize_algorithm,
    normalize_hash,
)

#: Bad lines whose number and reason are kept for reports (the count is always exact).
BAD_LINE_SAMPLES: Final = 10
#: A hash-list line longer than this is a bad line, never held whole (a list row is a hash and a few short cells).
MAX_LINE_CHARS: Final = 1 << 20

#: ThreatExchange signal type names (python-threatexchange ``SignalType.get_name()``) -> refwatch algorithm.
#: ``video_md5`` / ``video_sha256`` are file digests, the same functions refwatch computes of image bodies.
_TX_SIGNAL_TYPES: Final[dict[str, str]] = {"pdq": "pdq", "video_md5": "md5", "video_sha256": "sha256"}
#: Rows of other signal types (url, raw_text, video_tmk_pdqf...) and rows whose aggregate opinion says the
#: signal is a false positive are not hashes refwatch can match: they are counted in ``ignored_lines``.
_TX_FALSE_POSITIVE: Final = "FALSE_POSITIVE"
#: HMA 1.x data file suffixes (``<indicator type>.te``, lowercased) -> refwatch algorithm.
_HMA_SUFFIXES: Final[dict[str, str]] = {".hash_pdq.te": "pdq", ".hash_video_md5.te": "md5", ".hash_md5.te": "md5"}
#: HMA 1.x columns: hash, indicator_id, descriptor_id, timestamp, tags.
_HMA_COLUMNS: Final[dict[str, int]] = {"hash": 0, "id": 1, "label": 4}

_CSV_COLUMNS: Final = ("algorithm", "hash", "id", "label")
_TX_COLUMNS: Final = ("signal_type", "signal_str", "collab", "category", "tags")
_ALGORITHM_NAMES: Final[dict[str, str]] = {name: name for name in HEX_DIGITS}


def hma_file_algorithm(path: str) -> str | None:
    """The algorithm an HMA 1.x data file holds, by its name (``x.hash_pdq.te`` -> pdq), else None."""
    name = Path(path).name.lower()
    return next((algorithm for suffix, algorithm in _HMA_SUFFIXES.items() if name.endswith(suffix)), None)


def _hash_bytes(digits: int, value: str) -> bytes | None:
    """The bytes of a ``digits``-hex-digit hash (surrounding space and case ignored), ``None`` if it is not one."""
    text = value.strip()
    if len(text) != digits:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if len(raw) * 2 == digits else None  # fromhex skips inner spaces: "ab cd" is not a hash


class _Rejected(Exception):
    """A malformed line: its reason, which never repeats a value."""


class _Parser:
    """One pass over a list file; per-row work is kept small because lists have millions of rows."""

    def __init__(self, where: str, skip_bad_lines: bool) -> None:
        self.where = where
        self.skip_bad_lines = skip_bad_lines
        self.builders: dict[str, _ColumnBuilder] = {}
        self.bad_lines = 0
        self.bad_line_samples: list[tuple[int, str]] = []
        self.ignored_lines = 0
        self.undecodable: list[int] = []  # lines that are not UTF-8, in order
        self.line = 0  # the physical line read last (so also the number of lines read)

    def bad(self, line: int, reason: str) -> None:
        if not self.skip_bad_lines:
            raise HashListError(self.where, line, reason)
        self.bad_lines += 1
        if len(self.bad_line_samples) < BAD_LINE_SAMPLES:
            self.bad_line_samples.append((line, reason))

    def add(self, line: int, algorithm_text: str, value: str, entry_id: str | None, label: str | None) -> None:
        """Validate one row and append it to its algorithm's column (the hot path: kept flat on purpose)."""
        algorithm = _ALGORITHM_NAMES.get(algorithm_text)
        if algorithm is None:
            try:
                algorithm = normalize_algorithm(algorithm_text)
            except ValueError as exc:
                raise _Rejected(str(exc)) from None
        raw = _hash_bytes(HEX_DIGITS[algorithm], value)
        if raw is None:
            try:
                normalize_hash(algorithm, value)
            except ValueError as exc:
                raise _Rejected(str(exc)) from None
            raise _Rejected(f"not a {algorithm} hash")  # unreachable: both checks agree
        b = self.builders.get(algorithm)
        if b is None:
            b = self.builders[algorithm] = _ColumnBuilder(algorithm)
        # _ColumnBuilder.add, inlined: a function call per row is a tenth of the parse time.
        b.hashes += raw
        if b.pad:
            b.hashes += b.pad
        b.lines.append(line)
        if entry_id and (entry_id := entry_id.strip()):
            b.ids += entry_id.encode("utf-8", "surrogateescape")
        b.id_offsets.append(len(b.ids))
        if label and (label := label.strip()):
            b.labels += label.encode("utf-8", "surrogateescape")
        b.label_offsets.append(len(b.labels))

    def physical_lines(self, handle: TextIO) -> Iterator[str]:
        """Every physical line; ``line`` is its number, and lines that are not UTF-8 go to ``undecodable``. A
        line longer than ``MAX_LINE_CHARS`` is a bad line: read in pieces, dropped, and a blank line given in
        its place."""
        read_line = handle.readline
        limit = MAX_LINE_CHARS + 1
        self.line = 0
        while text := read_line(limit):
            self.line += 1
            if len(text) == limit and not text.endswith(("\n", "\r")):
                while (rest := read_line(1 << 20)) and not rest.endswith(("\n", "\r")):
                    pass  # the rest of the line, dropped
                self.bad(self.line, f"a line longer than {MAX_LINE_CHARS} characters")
                yield "\n"
                continue
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:  # surrogate-escaped bytes: the line was not UTF-8
                    self.undecodable.append(self.line)
            yield text

    def run(self, default_algorithm: str | None) -> str:
        """Parse the whole file; returns its format name."""
        try:
            # surrogateescape keeps undecodable bytes so the line holding them can be named (or skipped).
            # newline="": split on \n, \r and \r\n only and keep the endings (what csv counts as line
            # ends), so a quoted field spanning lines still parses and line numbers match an editor's.
            with open(self.where, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
                lines = self.physical_lines(handle)
                for text in lines:
                    if self.undecodable and self.undecodable[-1] == self.line:
                        self.bad(self.line, "not valid UTF-8 text")
                        continue
                    if _is_skippable(text):
                        continue
                    hma_algorithm = hma_file_algorithm(self.where)
                    if hma_algorithm is not None:  # no header: the first row is data
                        self._csv("hma", _HMA_COLUMNS, itertools.chain((text,), lines), hma_algorithm)
                        return "hma"
                    kind, columns = _header(self.where, self.line, text)
                    if kind == "text":
                        self._text(default_algorithm, text, lines)
                    else:
                        self._csv(kind, columns, lines)
                    return kind
        except FileNotFoundError:
            raise HashListError(self.where, None, "no such file") from None
        except IsADirectoryError:
            raise HashListError(self.where, None, "is a directory, not a hash list") from None
        except OSError as exc:
            raise HashListError(self.where, None, f"cannot read: {exc.strerror or exc}") from None
        return "text"

    def _text(self, algorithm: str | None, first: str, rest: Iterator[str]) -> None:
        """Plain text: one hash a line, blank lines and ``#`` comments skipped."""
        undecodable = self.undecodable
        for text in itertools.chain((first,), rest):
            lineno = self.line
            if undecodable and undecodable[-1] == lineno:
                self.bad(lineno, "not valid UTF-8 text")
                continue
            value = text.strip()
            if not value or value[0] == "#":
                continue
            if algorithm is None:
                raise HashListError(
                    self.where, lineno,
                    "plain-text hash list needs an algorithm (--hashlist-algorithm), "
                    "or use a CSV with an 'algorithm,hash' header",
                )
            try:
                self.add(lineno, algorithm, value, None, None)
            except _Rejected as exc:
                self.bad(lineno, str(exc))

    def _csv(self, kind: str, columns: dict[str, int], lines: Iterator[str], algorithm: str | None = None) -> None:
        """CSV rows after the header, whose names picked the columns (``hma``: fixed columns, one ``algorithm``)."""
        undecodable = self.undecodable
        checked = len(undecodable)  # undecodable[:checked] belong to lines already handled
        if kind in ("csv", "hma"):
            a, h, i, la = (columns.get(c) for c in _CSV_COLUMNS)
            cat = None
        else:
            a, h, cat, la = (columns.get(c) for c in ("signal_type", "signal_str", "category", "tags"))
            i = None
        assert (a is not None or algorithm is not None) and h is not None  # _header guarantees both
        for text in lines:
            error = None
            if '"' in text:
                # Quoted fields may hold commas or span lines: let csv read this one record, pulling as
                # many lines as it needs from the same iterator (self.line follows).
                try:
                    cells = next(csv.reader(itertools.chain((text,), lines)))
                except csv.Error as exc:
                    error = f"bad CSV: {exc}"
            else:
                # Without quotes a CSV line is its cells joined by commas: split is ~3x faster than csv.
                cells = text.rstrip("\r\n").split(",")
            lineno = self.line  # a record spanning lines is numbered by its last, as csv.reader counts
            if checked < len(undecodable):  # one of this record's lines was not UTF-8
                checked = len(undecodable)
                error = "not valid UTF-8 text"
            if error is not None:
                self.bad(lineno, error)
                continue
            if cells[0].lstrip().startswith("#"):
                continue
            if not (any(c.strip() for c in cells) if '"' in text else text.replace(",", "").strip()):
                continue  # a blank row
            n = len(cells)
            try:
                if cat is None:
                    self.add(lineno, algorithm or (cells[a] if a is not None and a < n else ""),
                             cells[h] if h < n else "",
                             cells[i] if i is not None and i < n else None,
                             cells[la] if la is not None and la < n else None)
                    continue
                signal_type = (cells[a] if a < n else "").strip().lower()
                algorithm = _TX_SIGNAL_TYPES.get(signal_type)
                category = (cells[cat] if cat < n else "").strip().upper()
                if (algorithm is None and signal_type) or category == _TX_FALSE_POSITIVE:
                    self.ignored_lines += 1
                    continue
                if algorithm is None:
                    raise _Rejected("empty signal_type")
                self.add(lineno, algorithm, cells[h] if h < n else "", None,
                         cells[la] if la is not None and la < n else None)
            except _Rejected as exc:
                self.bad(lineno, str(exc))


def _is_skippable(text: str) -> bool:
    stripped = text.strip()
    return not stripped or stripped.startswith("#")


def _header(where: str, lineno: int, text: str) -> tuple[str, dict[str, int]]:
    """Which format the first non-comment line announces: ("csv" | "threatexchange" | "text", columns)."""
    try:
        cells = next(csv.reader([text]))
    except (csv.Error, StopIteration):
        return "text", {}
    names = [c.strip().lower() for c in cells]
    if {"algorithm", "hash"} <= set(names):
        kind, wanted = "csv", _CSV_COLUMNS
    elif {"signal_type", "signal_str"} <= set(names):
        kind, wanted = "threatexchange", _TX_COLUMNS
    else:
        return "text", {}
    columns: dict[str, int] = {}
    for position, column in enumerate(names):
        if column in wanted:
            if column in columns:
                raise HashListError(where, lineno, f"column {column!r} appears twice in the header")
            columns[column] = position
    return kind, columns


def parse_hashlist(where: str, list_name: str, default_algorithm: str | None, skip_bad_lines: bool) -> HashList:
    """Parse the list file at ``where`` (any format above); ``HashListError`` names the file and line."""
    parser = _Parser(where, skip_bad_lines)
    kind = parser.run(default_algorithm)
    if not parser.builders:
        skipped = f", {parser.bad_lines} bad lines skipped" if parser.bad_lines else ""
        ignored = f", {parser.ignored_lines} rows of other signal types ignored" if parser.ignored_lines else ""
        raise HashListError(where, None, f"no hashes found ({parser.line} lines read{skipped}{ignored})")
    columns = {algorithm: builder.finish() for algorithm, builder in parser.builders.items()}
    return HashList._from_columns(list_name, where, columns, kind, parser.bad_lines, parser.bad_line_samples,
                                  parser.ignored_lines)
