"""Match observed image hashes against loaded hash lists.

Each algorithm's entries from every list go into one ``crawler.hashindex.HammingIndex``, built once when the
Matcher is made: perceptual hashes (phash, dhash: 64 bit; pdq: 256 bit) at the largest radius any list uses
for them, digests (md5, sha1, sha256) at radius 0, which makes the same index an exact lookup. The index is
exact (multi-index hashing, checked against brute force in the tests) and answers in tens of microseconds
against 10M entries; see its module for the design and ``bench/match_bench.py`` for the figures.

An index entry maps back to its list and row through where each list's rows start in the concatenated
array, and the row's id and label are read from the ``HashList`` only when it matched, so no Python object
is kept per entry. Each list may have its own radius per algorithm (``list_radii``); the index is queried at
the largest and every hit is held to its own list's radius. ``pdq_dihedral`` matches the PDQ hashes of an
image's rotations and flips like its own PDQ hash.

Nothing here logs a hash, id or label from a list.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np

from crawler.hashindex import HammingIndex, pack_hex
from crawler.hashlist import EXACT_ALGORITHMS, HEX_DIGITS, HashEntry, HashList, normalize_hash

logger = logging.getLogger(__name__)

#: Default Hamming radii (inclusive); exact algorithms are always radius 0. 31 is PDQ's published threshold.
DEFAULT_RADII: Final[Mapping[str, int]] = MappingProxyType({"phash": 8, "dhash": 6, "pdq": 31})  # docs/matching.md
#: PDQ hashes of images below this quality (0-100) are too unreliable to match.
PDQ_MIN_QUALITY: Final = 50


@dataclass(frozen=True, slots=True)
class Match:
    """One list entry the observed hash matched; ``distance`` is 0 for exact algorithms."""

    list_name: str
    algorithm: str
    entry_id: str
    label: str | None
    distance: int
    observed_hash: str
    matched_hash: str


class _AlgorithmIndex:
    """One algorithm's entries from every list that has some: the index, where each list's rows start in it,
    and each list's radius."""

    __slots__ = ("index", "lists", "starts", "radii")

    def __init__(self, algorithm: str, lists: list[HashList], radii: list[int]) -> None:
        self.lists = lists
        self.radii = radii
        parts = [hashlist.packed(algorithm) for hashlist in lists]
        self.starts = [0, *np.cumsum([len(part) for part in parts[:-1]], dtype=np.int64).tolist()]
        codes = parts[0] if len(parts) == 1 else np.concatenate(parts)  # one list: indexed without a copy
        self.index = HammingIndex.build(codes, max(radii))

    def hits(self, observed: np.ndarray) -> dict[tuple[int, int], tuple[int, int]]:
        """``(list number, row) -> (distance, observed form)`` of every entry within its list's radius of any
        form; the closest form wins, the first on a tie."""
        best: dict[tuple[int, int], tuple[int, int]] = {}
        query_idx, entry_idx, distance = self.index.query(observed)
        for form, entry, d in zip(query_idx.tolist(), entry_idx.tolist(), distance.tolist()):
            number = bisect_right(self.starts, entry) - 1
            if d > self.radii[number]:
                continue
            key = (number, entry - self.starts[number])
            if key not in best or (d, form) < best[key]:
                best[key] = (d, form)
        return best


class Matcher:
    """Finds every entry of every list that an image's hashes match; built once, used for many images."""

    def __init__(
        self,
        lists: Sequence[HashList],
        radii: Mapping[str, int] | None = None,
        pdq_min_quality: int = PDQ_MIN_QUALITY,
        *,
        list_radii: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        """``radii`` overlays ``DEFAULT_RADII`` for every list; ``list_radii`` (list name -> algorithm -> radius)
        overlays those for one list. A bad radius, an unknown list name or two lists of one name: ValueError."""
        self._radii = _check_radii(radii, DEFAULT_RADII)
        self._pdq_min_quality = pdq_min_quality
        names = [hashlist.name for hashlist in lists]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"two hash lists are named {duplicated[0]!r}; give each a distinct NAME=")
        own_radii = {}
        for name, overrides in (list_radii or {}).items():
            if name not in names:
                raise ValueError(f"radius given for list {name!r}, which is not loaded")
            own_radii[name] = _check_radii(overrides, self._radii)
        self._list_radii = own_radii
        self._counts = {(hashlist.name, algorithm): count for hashlist in lists
                        for algorithm, count in hashlist.count_by_algorithm().items()}

        started = time.perf_counter()
        self._indexes: dict[str, _AlgorithmIndex] = {}
        for algorithm in HEX_DIGITS:
            holders = [hashlist for hashlist in lists if self._counts.get((hashlist.name, algorithm))]
            if holders:
                radii_used = [self.radius(h.name, algorithm) for h in holders]
                table = self._indexes[algorithm] = _AlgorithmIndex(algorithm, holders, radii_used)
                logger.info("%s index: %d entries from %d lists, radius up to %d, %d tables of %d-bit keys, %.1f MiB",
                            algorithm, len(table.index), len(holders), table.index.radius_max, table.index.tables,
                            table.index.key_bits, table.index.nbytes / 2**20)
        logger.info(
            "Matcher ready in %.1f s: %d lists, %d entries, radii %s%s, pdq min quality %d",
            time.perf_counter() - started, len(names), sum(self._counts.values()), self._radii,
            f" (per list: {self._list_radii})" if self._list_radii else "", pdq_min_quality,
        )

    @property
    def empty(self) -> bool:
        """No entries at all: matching can be skipped."""
        return not self._counts

    def counts(self) -> dict[tuple[str, str], int]:
        """Entries per ``(list name, algorithm)`` (safe to log or export as metrics)."""
        return dict(sorted(self._counts.items()))

    def radius(self, list_name: str, algorithm: str) -> int:
        """The radius ``list_name``'s ``algorithm`` entries match within (0 for digests)."""
        if algorithm in EXACT_ALGORITHMS:
            return 0
        return self._list_radii.get(list_name, self._radii)[algorithm]

    def match(
        self,
        hashes: Mapping[str, str | None],
        pdq_quality: int | None = None,
        *,
        pdq_dihedral: Sequence[str] = (),
    ) -> list[Match]:
        """Every entry matched by ``hashes`` (algorithm -> observed hex; ``None`` = not computed).

        ``pdq_dihedral`` are the PDQ hashes of the image's rotations and flips (``hashing.pdq_dihedral_hashes``
        without or with the first, the plain one), matched like ``hashes["pdq"]``; a Match found through one
        carries it as ``observed_hash``. One Match per list entry (the closest observed form, the plain hash
        on a tie), sorted by (list_name, algorithm, distance, entry_id). Algorithms no list holds are
        ignored; a malformed observed hash is a bug upstream and raises ValueError. PDQ hashes with
        ``pdq_quality`` below the minimum are not matched (unknown quality is matched).
        """
        observed: dict[str, list[str]] = {}
        for algorithm, value in hashes.items():
            if value is not None and algorithm in HEX_DIGITS:
                observed[algorithm] = [normalize_hash(algorithm, value)]
        for value in pdq_dihedral:
            forms = observed.setdefault("pdq", [])
            form = normalize_hash("pdq", value)
            if form not in forms:
                forms.append(form)

        matches: list[Match] = []
        for algorithm, forms in observed.items():
            table = self._indexes.get(algorithm)
            if table is None:
                continue
            if algorithm == "pdq" and pdq_quality is not None and pdq_quality < self._pdq_min_quality:
                logger.debug("PDQ hash of quality %d below %d: not matched", pdq_quality, self._pdq_min_quality)
                continue
            hits = table.hits(pack_hex(forms, HEX_DIGITS[algorithm] * 4))
            for (number, row), (distance, form) in hits.items():
                hashlist = table.lists[number]
                matches.append(_match(hashlist.name, hashlist.entry(algorithm, row), distance, forms[form]))
        matches.sort(key=lambda m: (m.list_name, m.algorithm, m.distance, m.entry_id))
        return matches


def _match(list_name: str, entry: HashEntry, distance: int, observed: str) -> Match:
    return Match(
        list_name=list_name,
        algorithm=entry.algorithm,
        entry_id=entry.entry_id,
        label=entry.label,
        distance=distance,
        observed_hash=observed,
        matched_hash=entry.hash,
    )


def _check_radii(radii: Mapping[str, int] | None, base: Mapping[str, int]) -> dict[str, int]:
    """``base`` overlaid with ``radii``; exact algorithms accept only 0, perceptual ones 0..bits."""
    merged = dict(base)
    for algorithm, radius in (radii or {}).items():
        if algorithm not in HEX_DIGITS:
            raise ValueError(f"radius given for unknown algorithm {algorithm!r}")
        if isinstance(radius, bool) or not isinstance(radius, int):
            raise ValueError(f"{algorithm} radius must be an int, not {type(radius).__name__}")
        bits = HEX_DIGITS[algorithm] * 4
        if algorithm in EXACT_ALGORITHMS:
            if radius != 0:
                raise ValueError(f"{algorithm} is an exact algorithm; its radius can only be 0")
            continue
        if not 0 <= radius <= bits:
            raise ValueError(f"{algorithm} radius must be between 0 and {bits}, not {radius}")
        merged[algorithm] = radius
    return merged
