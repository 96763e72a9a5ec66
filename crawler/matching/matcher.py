"""Match observed image hashes against loaded hash lists.

Each list's entries of each algorithm are searched through the list's own ``crawler.matching.index.HammingIndex``
(``HashList.index``): perceptual hashes (phash, dhash: 64 bit; pdq: 256 bit) at the list's radius, digests
(md5, sha1, sha256) at radius 0, which makes the same index an exact lookup. A compiled list
(``refwatch hashlist compile``) brings its indexes memory-mapped, so the Matcher builds nothing; otherwise
each is built once here. The index is exact (multi-index hashing, checked against brute force in the
tests) and answers in tens of microseconds against 10M entries; see its module for the design and
``bench/match_bench.py`` for the figures.

One index per list (not one over all lists) keeps each list's compiled file usable as is and gives each list
its own radius per algorithm (``list_radii``); a handful of lists costs a handful of look-ups. A hit's id and
label are read from the ``HashList`` only when it matched, and its hash from the index, so no Python object
and no second copy of the hashes is kept. ``pdq_dihedral`` matches the PDQ hashes of an image's rotations
and flips like its own PDQ hash.

Nothing here logs a hash, id or label from a list.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from crawler.matching.index import HammingIndex, pack_hex
from crawler.matching.hashlist import DEFAULT_RADII, EXACT_ALGORITHMS, HEX_DIGITS, HashList, hex_of, normalize_hash

logger = logging.getLogger(__name__)

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
        # algorithm -> (list, its index, its radius) for every list holding that algorithm
        self._indexes: dict[str, list[tuple[HashList, HammingIndex, int]]] = {}
        for hashlist in lists:
            for algorithm in hashlist.algorithms:
                radius = self.radius(hashlist.name, algorithm)
                index = hashlist.index(algorithm, radius)
                self._indexes.setdefault(algorithm, []).append((hashlist, index, radius))
                logger.info("list %s: %s index of %d entries, radius %d (laid out for %d), %d tables of %d-bit "
                            "keys, %.1f MiB%s", hashlist.name, algorithm, len(index), radius, index.radius_max,
                            index.tables, index.key_bits, index.nbytes / 2**20,
                            ", memory-mapped" if hashlist.from_cache else "")
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
            indexes = self._indexes.get(algorithm)
            if indexes is None:
                continue
            if algorithm == "pdq" and pdq_quality is not None and pdq_quality < self._pdq_min_quality:
                logger.debug("PDQ hash of quality %d below %d: not matched", pdq_quality, self._pdq_min_quality)
                continue
            queries = pack_hex(forms, HEX_DIGITS[algorithm] * 4)
            for hashlist, index, radius in indexes:
                matches.extend(_closest_per_entry(hashlist, algorithm, index, radius, queries, forms))
        matches.sort(key=lambda m: (m.list_name, m.algorithm, m.distance, m.entry_id))
        return matches


def _closest_per_entry(hashlist: HashList, algorithm: str, index: HammingIndex, radius: int,
                       queries: np.ndarray, forms: Sequence[str]) -> list[Match]:
    """One Match per entry of ``hashlist`` within ``radius`` of any form: the closest form, the first on a tie."""
    best: dict[int, tuple[int, int, np.ndarray]] = {}
    query_idx, entry_idx, distance, codes = index.query_codes(queries, radius)
    for k, (form, entry, d) in enumerate(zip(query_idx.tolist(), entry_idx.tolist(), distance.tolist())):
        if entry not in best or (d, form) < best[entry][:2]:
            best[entry] = (d, form, codes[k])
    return [
        Match(list_name=hashlist.name, algorithm=algorithm, entry_id=hashlist.entry_id(algorithm, entry),
              label=hashlist.label(algorithm, entry), distance=d, observed_hash=forms[form],
              matched_hash=hex_of(code, algorithm))
        for entry, (d, form, code) in best.items()
    ]


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
