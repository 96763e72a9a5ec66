"""Hash lists: load the hash lists kept by child-protection organisations into frozen, validated entries.

A list is either a CSV file with a header naming ``algorithm`` and ``hash`` (plus optional ``id`` and
``label``) or a plain text file of one hex hash a line, whose algorithm the caller names. Loading is
split into reading raw rows (``_csv_rows`` / ``_text_rows``) and turning one row into an entry
(``_entry_from_row``), so a later ``--skip-bad-lines`` only has to catch the per-row error.

Hash-list contents are sensitive: nothing here logs a hash, an id or a label, and error messages
describe a bad value (its length, whether it is hex) instead of repeating it. Counts are fine.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

#: Stable algorithm names (they end up in stored events) and the hex digits a hash of each has.
HEX_DIGITS: Final[dict[str, int]] = {
    "md5": 32,
    "sha1": 40,
    "sha256": 64,
    "phash": 16,
    "dhash": 16,
    "pdq": 64,
}
#: Cryptographic digests: only an identical hash matches.
EXACT_ALGORITHMS: Final = frozenset({"md5", "sha1", "sha256"})
#: Perceptual hashes: a hash within a Hamming radius matches.
PERCEPTUAL_ALGORITHMS: Final = frozenset({"phash", "dhash", "pdq"})

_HEX = re.compile(r"[0-9a-f]+")
_CSV_COLUMNS: Final = ("algorithm", "hash", "id", "label")


class HashListError(Exception):
    """Bad hash-list input the user must fix; the message is one line naming the file (and line)."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, slots=True)
class HashEntry:
    """One hash from a list; ``hash`` is lowercase hex of the algorithm's length."""

    algorithm: str
    hash: str
    entry_id: str
    label: str | None = None


@dataclass(frozen=True)
class HashList:
    """A named, loaded list; ``name`` is what events call the list, ``path`` where it was read."""

    name: str
    path: str
    entries: tuple[HashEntry, ...]

    def count_by_algorithm(self) -> dict[str, int]:
        """Entries per algorithm, sorted by algorithm name (safe to log)."""
        return dict(sorted(Counter(e.algorithm for e in self.entries).items()))


def normalize_algorithm(algorithm: str) -> str:
    """The stable algorithm name for ``algorithm`` (case and surrounding space ignored); ValueError if unknown."""
    name = algorithm.strip().lower()
    if name not in HEX_DIGITS:
        known = ", ".join(sorted(HEX_DIGITS))
        raise ValueError(f"unknown algorithm {algorithm.strip()!r} (known: {known})")
    return name


def normalize_hash(algorithm: str, value: str) -> str:
    """``value`` as lowercase hex, checked against ``algorithm``'s length; ValueError if it is not.

    The message never repeats the value: a malformed entry may still be a real hash of another kind.
    """
    digits = HEX_DIGITS[algorithm]
    text = value.strip().lower()
    if len(text) == digits and _HEX.fullmatch(text):
        return text
    if not text:
        raise ValueError(f"empty value is not a {digits}-hex-digit {algorithm}")
    kind = "hex" if _HEX.fullmatch(text) else "not all hex"
    raise ValueError(f"value of {len(text)} characters ({kind}) is not a {digits}-hex-digit {algorithm}")


def parse_hashlist_spec(spec: str) -> tuple[str, str]:
    """Split ``[NAME=]PATH`` into ``(name, path)``; the name defaults to the file stem (``known.csv`` -> ``known``).

    Text before the first ``=`` is a name only if it holds no path separator, so ``dir/a=b.csv`` is a path.
    """
    head, sep, tail = spec.partition("=")
    if sep and "/" not in head and os.sep not in head:
        name, path = head.strip(), tail.strip()
        if not name:
            raise HashListError(spec, None, "empty list name before '=' (expected NAME=PATH)")
    else:
        path = spec.strip()
        name = Path(path).stem
    if not path:
        raise HashListError(spec, None, "empty path (expected [NAME=]PATH)")
    if not name:
        raise HashListError(spec, None, "cannot derive a list name from the path; use NAME=PATH")
    return name, path


def load_hashlist(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    algorithm: str | None = None,
) -> HashList:
    """Read and validate one hash list; any bad line, unknown algorithm or empty list raises HashListError.

    ``algorithm`` names the algorithm of a plain text list (the CLI's ``--hashlist-algorithm``); CSV rows
    name their own and ignore it.
    """
    where = os.fspath(path)
    list_name = name if name is not None else Path(where).stem
    if not list_name.strip():
        raise HashListError(where, None, "empty list name")
    default_algorithm: str | None = None
    if algorithm is not None:
        try:
            default_algorithm = normalize_algorithm(algorithm)
        except ValueError as exc:
            raise HashListError(where, None, str(exc)) from None

    lines = _read_lines(where)
    header_line = _find_csv_header(lines)
    if header_line is not None:
        rows = _csv_rows(where, lines, header_line)
    else:
        rows = _text_rows(where, lines, default_algorithm)
    entries = tuple(_entry_from_row(where, list_name, row) for row in rows)
    if not entries:
        raise HashListError(where, None, f"no hashes found ({len(lines)} lines read)")

    hashlist = HashList(name=list_name, path=where, entries=entries)
    logger.info(
        "Loaded hash list %s (%s, %s): %d entries %s",
        list_name, where, "csv" if header_line is not None else "text", len(entries),
        hashlist.count_by_algorithm(),
    )
    return hashlist


@dataclass(frozen=True, slots=True)
class _Row:
    """One data line before validation; ``line`` is the 1-based line number in the file."""

    line: int
    algorithm: str
    hash: str
    entry_id: str | None
    label: str | None


def _entry_from_row(where: str, list_name: str, row: _Row) -> HashEntry:
    """Validate one raw row; the single place a future ``--skip-bad-lines`` needs to catch."""
    try:
        algorithm = normalize_algorithm(row.algorithm)
        value = normalize_hash(algorithm, row.hash)
    except ValueError as exc:
        raise HashListError(where, row.line, str(exc)) from None
    entry_id = row.entry_id.strip() if row.entry_id else ""
    label = row.label.strip() if row.label else ""
    return HashEntry(
        algorithm=algorithm,
        hash=value,
        entry_id=entry_id or f"{list_name}:{row.line}",
        label=label or None,
    )


def _read_lines(where: str) -> list[str]:
    """The file's lines, decoded as UTF-8 (a BOM is dropped); unreadable or undecodable -> HashListError."""
    try:
        data = Path(where).read_bytes()
    except FileNotFoundError:
        raise HashListError(where, None, "no such file") from None
    except OSError as exc:
        raise HashListError(where, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise HashListError(where, line, "not valid UTF-8 text") from None
    # Split on \n, \r and \r\n only (what csv counts as line ends) and keep the endings, so a quoted field
    # spanning lines still parses and a list index + 1 is the line number an editor shows.
    return io.StringIO(text, newline="").readlines()


def _is_skippable(text: str) -> bool:
    stripped = text.strip()
    return not stripped or stripped.startswith("#")


def _find_csv_header(lines: list[str]) -> int | None:
    """Index of the CSV header if the first non-comment line is one naming ``algorithm`` and ``hash``."""
    for index, text in enumerate(lines):
        if _is_skippable(text):
            continue
        try:
            cells = next(csv.reader([text]))
        except (csv.Error, StopIteration):
            return None
        names = {c.strip().lower() for c in cells}
        return index if {"algorithm", "hash"} <= names else None
    return None


def _csv_rows(where: str, lines: list[str], header_index: int) -> Iterator[_Row]:
    """Rows of a CSV list; the header picks columns by name (any order, case-insensitive, extras ignored)."""
    header_lineno = header_index + 1
    header = [c.strip().lower() for c in next(csv.reader([lines[header_index]]))]
    columns: dict[str, int] = {}
    for position, column in enumerate(header):
        if column in _CSV_COLUMNS:
            if column in columns:
                raise HashListError(where, header_lineno, f"column {column!r} appears twice in the header")
            columns[column] = position

    # Fed one physical line per item, so reader.line_num counts physical lines after the header.
    reader = csv.reader(iter(lines[header_index + 1 :]))
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise HashListError(where, header_lineno + reader.line_num, f"bad CSV: {exc}") from None
        lineno = header_lineno + reader.line_num
        if not any(c.strip() for c in cells) or cells[0].strip().startswith("#"):
            continue
        yield _Row(
            line=lineno,
            algorithm=_cell(cells, columns, "algorithm") or "",
            hash=_cell(cells, columns, "hash") or "",
            entry_id=_cell(cells, columns, "id"),
            label=_cell(cells, columns, "label"),
        )


def _cell(cells: list[str], columns: dict[str, int], column: str) -> str | None:
    """The named column of a row, ``None`` if the header lacks it or the row is short."""
    position = columns.get(column)
    return cells[position] if position is not None and position < len(cells) else None


def _text_rows(where: str, lines: list[str], algorithm: str | None) -> Iterator[_Row]:
    """Rows of a plain list: one hash a line, blank lines and ``#`` comments skipped."""
    for index, text in enumerate(lines):
        if _is_skippable(text):
            continue
        if algorithm is None:
            raise HashListError(
                where, index + 1,
                "plain-text hash list needs an algorithm (--hashlist-algorithm), "
                "or use a CSV with an 'algorithm,hash' header",
            )
        yield _Row(line=index + 1, algorithm=algorithm, hash=text, entry_id=None, label=None)
