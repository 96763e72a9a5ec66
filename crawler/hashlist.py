"""Hash lists: load the hash lists kept by child-protection organisations into validated, columnar entries.

Formats, told apart by the first line that is not blank or a ``#`` comment:

- refwatch CSV: a header naming ``algorithm`` and ``hash`` (optional ``id``, ``label``; any order and case,
  other columns ignored).
- ThreatExchange CSV: the header ``signal_type,signal_str,collab,category,tags`` that python-threatexchange
  writes with ``threatexchange dataset -P --csv`` (see ``_TX_SIGNAL_TYPES``).
- plain text: one hex hash a line, whose algorithm the caller names.

A list of millions of entries must load in seconds and not hold the list twice, so a ``HashList`` is
columnar: per algorithm, the hashes packed as a ``(n, words)`` uint64 array (the layout ``matching.py``
indexes), the line each came from, and the ids and labels as UTF-8 bytes plus offsets. ``entries`` is a
view that builds ``HashEntry`` objects on demand. ``compile_hashlist`` writes those arrays to ``LIST.rwidx``
beside the list; ``load_hashlist`` reads that cache instead of parsing while the list's size and mtime are
the ones recorded in it.

A malformed line raises ``HashListError`` naming file and line; with ``skip_bad_lines`` it is skipped and
counted instead (``HashList.bad_lines``, the first few line numbers and reasons in ``bad_line_samples``).
Hash-list contents are sensitive: nothing here logs a hash, an id or a label, and error messages describe a
bad value (its length, whether it is hex) instead of repeating it. Counts are fine.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import re
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, overload

import numpy as np

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
#: uint64 words a packed hash takes (sha1's 160 bits are zero-padded to 192).
WORDS: Final[dict[str, int]] = {name: -(-digits // 16) for name, digits in HEX_DIGITS.items()}

#: ThreatExchange signal type names (python-threatexchange ``SignalType.get_name()``) -> refwatch algorithm.
#: ``video_md5`` / ``video_sha256`` are file digests, the same functions refwatch computes of image bodies.
_TX_SIGNAL_TYPES: Final[dict[str, str]] = {"pdq": "pdq", "video_md5": "md5", "video_sha256": "sha256"}
#: Rows of other signal types (url, raw_text, video_tmk_pdqf...) and rows whose aggregate opinion says the
#: signal is a false positive are not hashes refwatch can match: they are counted in ``ignored_lines``.
_TX_FALSE_POSITIVE: Final = "FALSE_POSITIVE"

#: Suffix of the compiled cache ``compile_hashlist`` writes beside a list.
CACHE_SUFFIX: Final = ".rwidx"
_CACHE_FORMAT: Final = "refwatch-hashlist-cache"
_CACHE_VERSION: Final = 1
#: Bad lines whose number and reason are kept for reports (the count is always exact).
BAD_LINE_SAMPLES: Final = 10

_HEX = re.compile(r"[0-9a-f]+")
_CSV_COLUMNS: Final = ("algorithm", "hash", "id", "label")
_TX_COLUMNS: Final = ("signal_type", "signal_str", "collab", "category", "tags")
_ALGORITHM_NAMES: Final[dict[str, str]] = {name: name for name in HEX_DIGITS}


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


class _Strings:
    """Many short strings as UTF-8 bytes plus ``n + 1`` offsets; ``""`` stands for "absent"."""

    __slots__ = ("data", "offsets")

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        self.data = data
        self.offsets = offsets

    def __getitem__(self, index: int) -> str:
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.data[start:end].tobytes().decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class _Column:
    """One algorithm's entries: packed hashes, source lines, ids and labels (``None``: all absent)."""

    hashes: np.ndarray  # (n, WORDS[algorithm]) uint64, read-only
    lines: np.ndarray  # (n,) int64: the line each entry came from (its position for lists built in code)
    ids: _Strings | None
    labels: _Strings | None


class HashList:
    """A named, loaded list; ``name`` is what events call the list, ``path`` where it was read.

    ``HashList(name, path, entries)`` builds one from ``HashEntry`` objects (ValueError if one is not a known
    algorithm with lowercase hex of its length); ``load_hashlist`` builds the columns directly.
    """

    __slots__ = ("name", "path", "source_format", "bad_lines", "bad_line_samples", "ignored_lines",
                 "from_cache", "_columns", "_order")

    def __init__(self, name: str, path: str, entries: Iterable[HashEntry] = (), *, bad_lines: int = 0,
                 bad_line_samples: Sequence[tuple[int, str]] = (), ignored_lines: int = 0) -> None:
        builders: dict[str, _ColumnBuilder] = {}
        for position, entry in enumerate(entries, 1):
            if entry.algorithm not in HEX_DIGITS:
                raise ValueError(f"list {name!r} has an entry of unknown algorithm {_describe_name(entry.algorithm)}")
            if len(entry.hash) != HEX_DIGITS[entry.algorithm] or not _HEX.fullmatch(entry.hash):
                raise ValueError(f"list {name!r} has a {entry.algorithm} entry not in lowercase hex of its length")
            raw = bytes.fromhex(entry.hash)
            builder = builders.get(entry.algorithm) or builders.setdefault(
                entry.algorithm, _ColumnBuilder(entry.algorithm))
            builder.add(raw, position, entry.entry_id, entry.label or "")
        self._init(name, path, {a: b.finish() for a, b in builders.items()}, "entries",
                   bad_lines, bad_line_samples, ignored_lines, False)

    def _init(self, name: str, path: str, columns: dict[str, _Column], source_format: str, bad_lines: int,
              bad_line_samples: Sequence[tuple[int, str]], ignored_lines: int, from_cache: bool) -> None:
        self.name = name
        self.path = path
        self.source_format = source_format  # "csv", "threatexchange", "text" or "entries"
        self.bad_lines = bad_lines
        self.bad_line_samples = tuple(bad_line_samples)
        self.ignored_lines = ignored_lines
        self.from_cache = from_cache
        self._columns = dict(sorted(columns.items()))
        self._order: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def _from_columns(cls, name: str, path: str, columns: dict[str, _Column], source_format: str,
                      bad_lines: int = 0, bad_line_samples: Sequence[tuple[int, str]] = (),
                      ignored_lines: int = 0, from_cache: bool = False) -> HashList:
        self = cls.__new__(cls)
        self._init(name, path, columns, source_format, bad_lines, bad_line_samples, ignored_lines, from_cache)
        return self

    # --- the columnar surface: what an index builds from -------------------------------------------------
    @property
    def algorithms(self) -> tuple[str, ...]:
        """Algorithms with at least one entry, sorted."""
        return tuple(self._columns)

    def __len__(self) -> int:
        return sum(len(c.lines) for c in self._columns.values())

    def packed(self, algorithm: str) -> np.ndarray:
        """``algorithm``'s hashes as a read-only ``(n, words)`` uint64 array, words most significant first.

        Row i is ``int(hex[16k:16k+16], 16)`` for word k (sha1 is zero-padded to 3 words): the layout of
        ``matching._pack``. No copy is made; ``(0, words)`` when the list holds none.
        """
        column = self._columns.get(algorithm)
        if column is None:
            return np.zeros((0, WORDS[algorithm]), dtype=np.uint64)
        return column.hashes

    def lines(self, algorithm: str) -> np.ndarray:
        """The line each of ``algorithm``'s entries came from, in ``packed`` order (read-only int64)."""
        column = self._columns.get(algorithm)
        return column.lines if column is not None else np.zeros(0, dtype=np.int64)

    def hash_hex(self, algorithm: str, index: int) -> str:
        """The lowercase hex of ``packed(algorithm)[index]``."""
        text = self._columns[algorithm].hashes[index].astype(">u8").tobytes().hex()
        return text[: HEX_DIGITS[algorithm]]

    def entry_id(self, algorithm: str, index: int) -> str:
        """The id of ``algorithm``'s entry ``index``; ``NAME:LINE`` when the list gave none."""
        column = self._columns[algorithm]
        given = column.ids[index] if column.ids is not None else ""
        return given or f"{self.name}:{int(column.lines[index])}"

    def label(self, algorithm: str, index: int) -> str | None:
        """The label of ``algorithm``'s entry ``index``, ``None`` if it has none."""
        column = self._columns[algorithm]
        return (column.labels[index] if column.labels is not None else "") or None

    def entry(self, algorithm: str, index: int) -> HashEntry:
        """``algorithm``'s entry ``index`` as a ``HashEntry`` (built on demand)."""
        return HashEntry(algorithm, self.hash_hex(algorithm, index), self.entry_id(algorithm, index),
                         self.label(algorithm, index))

    @property
    def entries(self) -> HashEntries:
        """Every entry in file order, as a lazy sequence of ``HashEntry`` (none is held in memory)."""
        return HashEntries(self)

    def count_by_algorithm(self) -> dict[str, int]:
        """Entries per algorithm, sorted by algorithm name (safe to log)."""
        return {algorithm: len(column.lines) for algorithm, column in self._columns.items()}

    def duplicate_counts(self) -> dict[str, int]:
        """Per algorithm, entries whose hash an earlier entry of this list already has (safe to log)."""
        counts = {}
        for algorithm, column in self._columns.items():
            hashes = np.ascontiguousarray(column.hashes)
            keys = hashes[:, 0] if hashes.shape[1] == 1 else hashes.view(
                np.dtype((np.void, 8 * hashes.shape[1]))).ravel()
            counts[algorithm] = len(keys) - len(np.unique(keys))
        return counts

    def nbytes(self) -> int:
        """Bytes the columns hold (what a list costs in memory, give or take Python objects)."""
        total = 0
        for c in self._columns.values():
            total += c.hashes.nbytes + c.lines.nbytes
            for strings in (c.ids, c.labels):
                if strings is not None:
                    total += strings.data.nbytes + strings.offsets.nbytes
        return total

    def _global_order(self) -> tuple[np.ndarray, np.ndarray]:
        """(algorithm index, row) of every entry in file order, built once on first use."""
        if self._order is None:
            columns = list(self._columns.values())
            which = np.concatenate([np.full(len(c.lines), k, dtype=np.uint8) for k, c in enumerate(columns)]
                                   or [np.zeros(0, np.uint8)])
            rows = np.concatenate([np.arange(len(c.lines), dtype=np.int64) for c in columns]
                                  or [np.zeros(0, np.int64)])
            lines = np.concatenate([c.lines for c in columns] or [np.zeros(0, np.int64)])
            order = np.argsort(lines, kind="stable")
            self._order = (which[order], rows[order])
        return self._order

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HashList):
            return NotImplemented
        return (self.name, self.path, self.bad_lines, self.ignored_lines) == (
            other.name, other.path, other.bad_lines, other.ignored_lines) and self.entries == other.entries

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:  # counts only: a repr can end up in a log
        return (f"HashList(name={self.name!r}, path={self.path!r}, entries={self.count_by_algorithm()}, "
                f"bad_lines={self.bad_lines}, ignored_lines={self.ignored_lines})")


class HashEntries(Sequence[HashEntry]):
    """A list's entries in file order, each ``HashEntry`` built when asked for; compares equal to a tuple."""

    __slots__ = ("_list",)

    def __init__(self, hashlist: HashList) -> None:
        self._list = hashlist

    def __len__(self) -> int:
        return len(self._list)

    @overload
    def __getitem__(self, index: int) -> HashEntry: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[HashEntry, ...]: ...
    def __getitem__(self, index: int | slice) -> HashEntry | tuple[HashEntry, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        count = len(self)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError("hash list entry index out of range")
        algorithms = self._list.algorithms
        if len(algorithms) == 1:
            return self._list.entry(algorithms[0], index)
        which, rows = self._list._global_order()
        return self._list.entry(algorithms[int(which[index])], int(rows[index]))

    def __iter__(self) -> Iterator[HashEntry]:
        algorithms = self._list.algorithms
        if len(algorithms) == 1:
            algorithm = algorithms[0]
            return (self._list.entry(algorithm, i) for i in range(len(self)))
        which, rows = self._list._global_order()
        return (self._list.entry(algorithms[k], int(i)) for k, i in zip(which.tolist(), rows))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HashEntries | tuple | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self)} hash-list entries>"


def normalize_algorithm(algorithm: str) -> str:
    """The stable algorithm name for ``algorithm`` (case and surrounding space ignored); ValueError if unknown."""
    name = algorithm.strip().lower()
    if name not in HEX_DIGITS:
        known = ", ".join(sorted(HEX_DIGITS))
        raise ValueError(f"unknown algorithm {_describe_name(algorithm.strip())} (known: {known})")
    return name


def _describe_name(text: str) -> str:
    """A name as given, unless it could be a hash (long, or all hex): then only its length."""
    if len(text) <= 12 and (not text or not _HEX.fullmatch(text.lower()) or len(text) < 8):
        return repr(text)
    kind = "hex" if _HEX.fullmatch(text.lower()) else "not all hex"
    return f"(a value of {len(text)} characters, {kind})"


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


def load_hashlists(specs: Iterable[str], algorithm: str | None = None, *,
                   skip_bad_lines: bool = False) -> list[HashList]:
    """Load every ``[NAME=]PATH`` list; two lists of one name, or any bad list, raise ``HashListError``."""
    lists: list[HashList] = []
    for spec in specs:
        name, path = parse_hashlist_spec(spec)
        if any(hl.name == name for hl in lists):
            raise HashListError(spec, None, f"a second list named {name!r}; give each a distinct NAME=")
        lists.append(load_hashlist(path, name=name, algorithm=algorithm, skip_bad_lines=skip_bad_lines))
    return lists


def load_hashlist(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    algorithm: str | None = None,
    skip_bad_lines: bool = False,
    use_cache: bool = True,
) -> HashList:
    """Read and validate one hash list; a bad line, unknown algorithm or empty list raises HashListError.

    ``algorithm`` names the algorithm of a plain text list (the CLI's ``--hashlist-algorithm``); CSV rows
    name their own and ignore it. With ``skip_bad_lines`` malformed lines are counted instead. A compiled
    cache (``PATH.rwidx``) is used when it records the list's current size and mtime and the same options.
    """
    where = os.fspath(path)
    list_name = name if name is not None else Path(where).stem
    if not list_name.strip():
        raise HashListError(where, None, "empty list name")
    default_algorithm = _check_algorithm(where, algorithm)
    started = time.perf_counter()
    hashlist = _load_cache(where, list_name, default_algorithm, skip_bad_lines) if use_cache else None
    if hashlist is None:
        hashlist = _parse(where, list_name, default_algorithm, skip_bad_lines)
    logger.info(
        "Loaded hash list %s (%s, %s%s) in %.2f s: %d entries %s, %d bad lines skipped, %d lines ignored",
        list_name, where, hashlist.source_format, ", from cache" if hashlist.from_cache else "",
        time.perf_counter() - started, len(hashlist), hashlist.count_by_algorithm(), hashlist.bad_lines,
        hashlist.ignored_lines,
    )
    return hashlist


def _check_algorithm(where: str, algorithm: str | None) -> str | None:
    if algorithm is None:
        return None
    try:
        return normalize_algorithm(algorithm)
    except ValueError as exc:
        raise HashListError(where, None, str(exc)) from None


# --- parsing ------------------------------------------------------------------------------------------------

class _ColumnBuilder:
    """Accumulates one algorithm's rows in compact buffers (no per-row Python objects are kept)."""

    __slots__ = ("algorithm", "pad", "hashes", "lines", "ids", "id_offsets", "labels", "label_offsets")

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.pad = bytes(WORDS[algorithm] * 8 - HEX_DIGITS[algorithm] // 2)
        self.hashes = bytearray()
        self.lines = array("q")
        self.ids, self.id_offsets = bytearray(), array("q", [0])
        self.labels, self.label_offsets = bytearray(), array("q", [0])

    def add(self, raw: bytes, line: int, entry_id: str, label: str) -> None:
        self.hashes += raw
        if self.pad:
            self.hashes += self.pad
        self.lines.append(line)
        if entry_id:
            self.ids += entry_id.encode("utf-8", "surrogateescape")
        self.id_offsets.append(len(self.ids))
        if label:
            self.labels += label.encode("utf-8", "surrogateescape")
        self.label_offsets.append(len(self.labels))

    def finish(self) -> _Column:
        words = WORDS[self.algorithm]
        hashes = np.frombuffer(self.hashes, dtype=">u8").astype(np.uint64).reshape(-1, words)
        return _Column(
            hashes=_readonly(hashes),
            lines=_readonly(np.array(self.lines, dtype=np.int64)),
            ids=_strings(self.ids, self.id_offsets),
            labels=_strings(self.labels, self.label_offsets),
        )


def _strings(data: bytearray, offsets: array) -> _Strings | None:
    if not data:
        return None
    return _Strings(_readonly(np.frombuffer(data, dtype=np.uint8)),  # no copy: the builder is done with it
                    _readonly(np.array(offsets, dtype=np.int64)))


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


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

    def physical_lines(self, handle: Iterable[str]) -> Iterator[str]:
        """Every physical line; ``line`` is its number, and lines that are not UTF-8 go to ``undecodable``."""
        for self.line, text in enumerate(handle, 1):
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

    def _csv(self, kind: str, columns: dict[str, int], lines: Iterator[str]) -> None:
        """CSV rows after the header; the header picked the columns by name."""
        undecodable = self.undecodable
        checked = len(undecodable)  # undecodable[:checked] belong to lines already handled
        if kind == "csv":
            a, h, i, la = (columns.get(c) for c in _CSV_COLUMNS)
            cat = None
        else:
            a, h, cat, la = (columns.get(c) for c in ("signal_type", "signal_str", "category", "tags"))
            i = None
        assert a is not None and h is not None  # _header guarantees both
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
                    self.add(lineno, cells[a] if a < n else "", cells[h] if h < n else "",
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


def _parse(where: str, list_name: str, default_algorithm: str | None, skip_bad_lines: bool) -> HashList:
    parser = _Parser(where, skip_bad_lines)
    kind = parser.run(default_algorithm)
    if not parser.builders:
        skipped = f", {parser.bad_lines} bad lines skipped" if parser.bad_lines else ""
        ignored = f", {parser.ignored_lines} rows of other signal types ignored" if parser.ignored_lines else ""
        raise HashListError(where, None, f"no hashes found ({parser.line} lines read{skipped}{ignored})")
    columns = {algorithm: builder.finish() for algorithm, builder in parser.builders.items()}
    return HashList._from_columns(list_name, where, columns, kind, parser.bad_lines, parser.bad_line_samples,
                                  parser.ignored_lines)


# --- the compiled cache -------------------------------------------------------------------------------------

def cache_path(path: str | os.PathLike[str]) -> Path:
    """Where ``compile_hashlist`` writes the cache of the list at ``path``: ``PATH.rwidx``."""
    source = Path(path)
    return source.with_name(source.name + CACHE_SUFFIX)


def compile_hashlist(
    path: str | os.PathLike[str],
    *,
    algorithm: str | None = None,
    skip_bad_lines: bool = False,
) -> tuple[HashList, Path]:
    """Parse the list at ``path`` and write its columns to ``PATH.rwidx`` (atomically); returns both.

    The cache is an uncompressed ``.npz`` (plain arrays, no pickles) recording the list's size and mtime
    and the options it was parsed with; ``load_hashlist`` uses it only while those still hold.
    """
    where = os.fspath(path)
    default_algorithm = _check_algorithm(where, algorithm)
    stat_before = _stat(where)
    hashlist = _parse(where, Path(where).stem, default_algorithm, skip_bad_lines)
    if _stat(where) != stat_before:
        raise HashListError(where, None, "the list changed while it was being compiled; compile it again")
    meta = {
        "format": _CACHE_FORMAT, "version": _CACHE_VERSION, "source_size": stat_before[0],
        "source_mtime_ns": stat_before[1], "source_format": hashlist.source_format,
        "text_algorithm": default_algorithm if hashlist.source_format == "text" else None,
        "bad_lines": hashlist.bad_lines, "bad_line_samples": hashlist.bad_line_samples,
        "ignored_lines": hashlist.ignored_lines, "algorithms": list(hashlist.algorithms),
    }
    arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for name, column in hashlist._columns.items():
        arrays[f"{name}.hashes"] = column.hashes
        arrays[f"{name}.lines"] = column.lines
        for part, strings in (("ids", column.ids), ("labels", column.labels)):
            if strings is not None:
                arrays[f"{name}.{part}.data"] = strings.data
                arrays[f"{name}.{part}.offsets"] = strings.offsets
    target = cache_path(where)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise HashListError(os.fspath(target), None, f"cannot write the cache: {exc.strerror or exc}") from None
    return hashlist, target


def _stat(where: str) -> tuple[int, int]:
    try:
        st = os.stat(where)
    except FileNotFoundError:
        raise HashListError(where, None, "no such file") from None
    except OSError as exc:
        raise HashListError(where, None, f"cannot read: {exc.strerror or exc}") from None
    return st.st_size, st.st_mtime_ns


def _load_cache(where: str, list_name: str, default_algorithm: str | None, skip_bad_lines: bool) -> HashList | None:
    """The list from its cache if the cache is current and was made with compatible options, else None."""
    target = cache_path(where)
    try:
        source = os.stat(where)
        if not target.is_file():
            return None
        with np.load(target, allow_pickle=False) as archive:
            meta = json.loads(archive["meta"].tobytes())
            if not _cache_fits(meta, source, default_algorithm, skip_bad_lines):
                logger.info("Cache %s does not fit %s (list changed, or other options); parsing the list",
                            target, where)
                return None
            columns = {name: _cached_column(archive, name) for name in meta["algorithms"]}
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any damage to a cache only costs a parse
        logger.warning("Cache %s is unusable (%s); parsing the list", target, type(exc).__name__)
        return None
    return HashList._from_columns(
        list_name, where, columns, meta["source_format"], meta["bad_lines"],
        [tuple(sample) for sample in meta["bad_line_samples"]], meta["ignored_lines"], from_cache=True,
    )


def _cache_fits(meta: dict[str, Any], source: os.stat_result, default_algorithm: str | None,
                skip_bad_lines: bool) -> bool:
    return (
        meta.get("format") == _CACHE_FORMAT
        and meta.get("version") == _CACHE_VERSION
        and meta["source_size"] == source.st_size
        and meta["source_mtime_ns"] == source.st_mtime_ns
        # A text list's algorithm comes from the caller; a list with bad lines needs skip_bad_lines (without
        # it, parsing reports the first bad line, as it would without a cache).
        and (meta["source_format"] != "text" or meta["text_algorithm"] == default_algorithm)
        and (skip_bad_lines or meta["bad_lines"] == 0)
    )


def _cached_column(archive: Any, name: str) -> _Column:
    """One algorithm's arrays from the cache, checked for shape and type (ValueError if damaged)."""
    if name not in HEX_DIGITS:
        raise ValueError("unknown algorithm in cache")
    hashes, lines = archive[f"{name}.hashes"], archive[f"{name}.lines"]
    n = len(lines)
    if hashes.dtype != np.uint64 or hashes.shape != (n, WORDS[name]) or lines.dtype != np.int64:
        raise ValueError("bad hash or line array")
    strings: list[_Strings | None] = []
    for part in ("ids", "labels"):
        if f"{name}.{part}.data" not in archive.files:
            strings.append(None)
            continue
        data, offsets = archive[f"{name}.{part}.data"], archive[f"{name}.{part}.offsets"]
        if (data.dtype != np.uint8 or offsets.dtype != np.int64 or offsets.shape != (n + 1,)
                or offsets[0] != 0 or offsets[-1] != len(data) or np.any(np.diff(offsets) < 0)):
            raise ValueError(f"bad {part} arrays")
        strings.append(_Strings(_readonly(data), _readonly(offsets)))
    return _Column(_readonly(hashes), _readonly(lines), strings[0], strings[1])
