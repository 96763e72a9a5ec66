"""Hash lists: the hash lists kept by child-protection organisations, as validated, columnar entries.

A list of millions of entries must load in seconds and never be held twice, so a ``HashList`` is columnar:
per algorithm, the entries' source lines and their ids and labels as UTF-8 bytes plus offsets, and the
hashes either as a ``(n, words)`` uint64 array (just parsed) or inside the list's ``HammingIndex`` (once
``index`` has been asked for, or when loaded from a compiled file): building the index drops the array,
whose codes the index holds. ``entries`` is a view that builds ``HashEntry`` objects on demand.

Where the rest lives: file formats and parsing in ``crawler.matching.formats``; the compiled file
(``refwatch hashlist compile``: the built indexes plus ids and labels, memory-mapped on load) in
``crawler.matching.compiled``. ``load_hashlist`` picks the compiled file while it is current, else parses.

Hash-list contents are sensitive: nothing here logs a hash, an id or a label, and error messages describe a
bad value (its length, whether it is hex) instead of repeating it. Counts are fine.
"""

from __future__ import annotations

import logging
import os
import re
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final, overload

import numpy as np

from crawler.matching.index import HammingIndex

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

#: Default Hamming radii (inclusive); exact algorithms are always radius 0. 31 is PDQ's published threshold.
#: Chosen from the accuracy study in docs/matching.md.
DEFAULT_RADII: Final[Mapping[str, int]] = MappingProxyType({"phash": 8, "dhash": 6, "pdq": 31})

_HEX = re.compile(r"[0-9a-f]+")


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


@dataclass(slots=True)
class _Column:
    """One algorithm's entries: their hashes (packed, or in the index), source lines, ids and labels
    (``None``: all absent). Exactly one of ``hashes`` and ``index`` is set."""

    hashes: np.ndarray | None  # (n, WORDS[algorithm]) uint64, read-only, until the index is built
    lines: np.ndarray  # (n,) int64: the line each entry came from (its position for lists built in code)
    ids: _Strings | None
    labels: _Strings | None
    index: HammingIndex | None = None

    def packed(self) -> np.ndarray:
        return self.hashes if self.hashes is not None else self.index.codes_in_entry_order()  # type: ignore[union-attr]

    def stored_codes(self) -> np.ndarray:
        """The hashes in whatever order they are held (for order-free counts)."""
        return self.hashes if self.hashes is not None else self.index._codes  # type: ignore[union-attr]


# --- building columns ------------------------------------------------------------------------------------------------

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
        """``algorithm``'s hashes as a ``(n, words)`` uint64 array in entry order, words most significant first.

        Row i is ``int(hex[16k:16k+16], 16)`` for word k (sha1 is zero-padded to 3 words): the layout of
        ``hashindex.pack_hex``. No copy before the index is built; a new array after (for reports and
        tests: matching reads the index). ``(0, words)`` when the list holds none.
        """
        column = self._columns.get(algorithm)
        if column is None:
            return np.zeros((0, WORDS[algorithm]), dtype=np.uint64)
        return column.packed()

    def index(self, algorithm: str, radius_max: int) -> HammingIndex:
        """``algorithm``'s entries indexed for searches up to ``radius_max`` (entry i is row i).

        Built on first use, after which the packed array is dropped: the index holds every code. A list
        loaded from its compiled file already has it (built for the radius given at compile time; any
        radius is exact, a larger one only probes more).
        """
        column = self._columns[algorithm]
        if column.index is None:
            assert column.hashes is not None
            column.index = HammingIndex.build(column.hashes, radius_max)
            column.hashes = None
        elif radius_max > column.index.radius_max:
            logger.info("list %s: %s index compiled for radius %d, matching at %d (exact, slower); "
                        "recompile with --radius %s=%d", self.name, algorithm, column.index.radius_max,
                        radius_max, algorithm, radius_max)
        return column.index

    def lines(self, algorithm: str) -> np.ndarray:
        """The line each of ``algorithm``'s entries came from, in ``packed`` order (read-only int64)."""
        column = self._columns.get(algorithm)
        return column.lines if column is not None else np.zeros(0, dtype=np.int64)

    def hash_hex(self, algorithm: str, index: int) -> str:
        """The lowercase hex of ``packed(algorithm)[index]``."""
        column = self._columns[algorithm]
        if column.hashes is not None:
            row = column.hashes[index]
        else:  # find the entry's row in the index (a scan: for single look-ups, not for matching)
            assert column.index is not None
            row = column.index._codes[int(np.flatnonzero(column.index._ids == index)[0])]
        return hex_of(row, algorithm)

    def entry_id(self, algorithm: str, index: int) -> str:
        """The id of ``algorithm``'s entry ``index``; ``NAME:LINE`` when the list gave none."""
        column = self._columns[algorithm]
        given = column.ids[index] if column.ids is not None else ""
        return given or f"{self.name}:{int(column.lines[index])}"

    def label(self, algorithm: str, index: int) -> str | None:
        """The label of ``algorithm``'s entry ``index``, ``None`` if it has none."""
        column = self._columns[algorithm]
        return (column.labels[index] if column.labels is not None else "") or None

    def entry(self, algorithm: str, index: int, hash_hex: str | None = None) -> HashEntry:
        """``algorithm``'s entry ``index`` as a ``HashEntry`` (built on demand; ``hash_hex`` if known)."""
        return HashEntry(algorithm, hash_hex or self.hash_hex(algorithm, index), self.entry_id(algorithm, index),
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
            hashes = np.ascontiguousarray(column.stored_codes())
            keys = hashes[:, 0] if hashes.shape[1] == 1 else hashes.view(
                np.dtype((np.void, 8 * hashes.shape[1]))).ravel()
            counts[algorithm] = len(keys) - len(np.unique(keys))
        return counts

    def nbytes(self) -> int:
        """Bytes the columns hold (what a list costs in memory, give or take Python objects)."""
        total = 0
        for c in self._columns.values():
            total += c.lines.nbytes + (c.hashes.nbytes if c.hashes is not None else 0)
            total += c.index.nbytes if c.index is not None else 0
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
        hashlist = self._list
        algorithms = hashlist.algorithms
        packed = {algorithm: hashlist.packed(algorithm) for algorithm in algorithms}  # once, not per entry
        if len(algorithms) == 1:
            algorithm = algorithms[0]
            return (hashlist.entry(algorithm, i, hex_of(packed[algorithm][i], algorithm)) for i in range(len(self)))
        which, rows = hashlist._global_order()
        return (hashlist.entry(algorithms[k], int(i), hex_of(packed[algorithms[k]][i], algorithms[k]))
                for k, i in zip(which.tolist(), rows))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HashEntries | tuple | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self)} hash-list entries>"


def hex_of(row: np.ndarray, algorithm: str) -> str:
    """Lowercase hex of one packed row of ``algorithm`` (the inverse of the packing, padding dropped)."""
    return row.astype(">u8").tobytes().hex()[: HEX_DIGITS[algorithm]]


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


def check_algorithm(where: str, algorithm: str | None) -> str | None:
    """The normalised ``--hashlist-algorithm`` (None stays None); HashListError naming ``where`` if unknown."""
    if algorithm is None:
        return None
    try:
        return normalize_algorithm(algorithm)
    except ValueError as exc:
        raise HashListError(where, None, str(exc)) from None
