"""Match observed image hashes against loaded hash lists.

Exact digests (md5, sha1, sha256) are a dict lookup. Perceptual hashes (phash, dhash: 64 bit; pdq: 256 bit)
match within a Hamming radius: each algorithm's entries from all lists are packed once into a ``(n, words)``
uint64 array, and one observation is an XOR plus ``np.bitwise_count`` summed across words - a linear scan,
simple and exactly right. A later index can replace ``_PackedHashes`` without changing ``Matcher``'s surface.

Nothing here logs a hash, id or label from a list.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np

from crawler.hashlist import (
    EXACT_ALGORITHMS,
    HEX_DIGITS,
    HashEntry,
    HashList,
    normalize_hash,
)

logger = logging.getLogger(__name__)

#: Default Hamming radii (inclusive); exact algorithms are always radius 0. 31 is PDQ's published threshold.
DEFAULT_RADII: Final[Mapping[str, int]] = MappingProxyType({"phash": 8, "dhash": 8, "pdq": 31})
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


class _PackedHashes:
    """One perceptual algorithm's entries (from every list) as a ``(n, words)`` uint64 array."""

    __slots__ = ("words", "owners")

    def __init__(self, owners: list[tuple[str, HashEntry]]) -> None:
        self.owners = tuple(owners)
        self.words = _pack([entry.hash for _, entry in owners])

    def within(self, observed: str, radius: int) -> list[tuple[int, int]]:
        """``(index, distance)`` of every entry within ``radius`` bits of ``observed``."""
        query = _pack([observed])[0]
        distances = np.bitwise_count(self.words ^ query).sum(axis=1, dtype=np.int64)
        hits = np.flatnonzero(distances <= radius)
        return [(int(i), int(distances[i])) for i in hits]


def _pack(hashes: list[str]) -> np.ndarray:
    """Hex hashes of equal length (a multiple of 16 digits) as a ``(n, digits // 16)`` uint64 array."""
    words = len(hashes[0]) // 16 if hashes else 1
    packed = np.frombuffer(bytes.fromhex("".join(hashes)), dtype=">u8").astype(np.uint64)
    return packed.reshape(len(hashes), words)


class Matcher:
    """Finds every entry of every list that an image's hashes match; built once, used for many images."""

    def __init__(
        self,
        lists: Sequence[HashList],
        radii: Mapping[str, int] | None = None,
        pdq_min_quality: int = PDQ_MIN_QUALITY,
    ) -> None:
        self._radii = _check_radii(radii)
        self._pdq_min_quality = pdq_min_quality
        self._counts: dict[tuple[str, str], int] = {}
        self._exact: dict[str, dict[str, list[tuple[str, HashEntry]]]] = {}
        perceptual: dict[str, list[tuple[str, HashEntry]]] = {}

        seen_names: set[str] = set()
        for hashlist in lists:
            if hashlist.name in seen_names:
                raise ValueError(f"two hash lists are named {hashlist.name!r}; give each a distinct NAME=")
            seen_names.add(hashlist.name)
            for entry in hashlist.entries:
                if entry.algorithm not in HEX_DIGITS:
                    raise ValueError(f"list {hashlist.name!r} has an entry of unknown algorithm {entry.algorithm!r}")
                if normalize_hash(entry.algorithm, entry.hash) != entry.hash:
                    raise ValueError(f"list {hashlist.name!r} has a {entry.algorithm} entry not in lowercase hex")
                key = (hashlist.name, entry.algorithm)
                self._counts[key] = self._counts.get(key, 0) + 1
                owner = (hashlist.name, entry)
                if entry.algorithm in EXACT_ALGORITHMS:
                    self._exact.setdefault(entry.algorithm, {}).setdefault(entry.hash, []).append(owner)
                else:
                    perceptual.setdefault(entry.algorithm, []).append(owner)

        self._perceptual = {algorithm: _PackedHashes(owners) for algorithm, owners in perceptual.items()}
        logger.info(
            "Matcher ready: %d lists, %d entries, radii %s, pdq min quality %d",
            len(seen_names), sum(self._counts.values()), self._radii, pdq_min_quality,
        )

    @property
    def empty(self) -> bool:
        """No entries at all: matching can be skipped."""
        return not self._counts

    def counts(self) -> dict[tuple[str, str], int]:
        """Entries per ``(list name, algorithm)`` (safe to log or export as metrics)."""
        return dict(sorted(self._counts.items()))

    def match(self, hashes: Mapping[str, str | None], pdq_quality: int | None = None) -> list[Match]:
        """Every entry matched by ``hashes`` (algorithm -> observed hex; ``None`` = not computed).

        One Match per list entry, sorted by (list_name, algorithm, distance, entry_id). Algorithms no list
        holds are ignored; a malformed observed hash is a bug upstream and raises ValueError. A PDQ hash
        with ``pdq_quality`` below the minimum is not matched (unknown quality is matched).
        """
        matches: list[Match] = []
        for algorithm, value in hashes.items():
            if value is None or algorithm not in HEX_DIGITS:
                continue
            observed = normalize_hash(algorithm, value)
            if algorithm in EXACT_ALGORITHMS:
                for list_name, entry in self._exact.get(algorithm, {}).get(observed, ()):
                    matches.append(_match(list_name, entry, 0, observed))
                continue
            packed = self._perceptual.get(algorithm)
            if packed is None:
                continue
            if algorithm == "pdq" and pdq_quality is not None and pdq_quality < self._pdq_min_quality:
                logger.debug("PDQ hash of quality %d below %d: not matched", pdq_quality, self._pdq_min_quality)
                continue
            for index, distance in packed.within(observed, self._radii[algorithm]):
                list_name, entry = packed.owners[index]
                matches.append(_match(list_name, entry, distance, observed))
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


def _check_radii(radii: Mapping[str, int] | None) -> dict[str, int]:
    """Defaults overlaid with ``radii``; exact algorithms accept only 0, perceptual ones 0..bits."""
    merged = dict(DEFAULT_RADII)
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
