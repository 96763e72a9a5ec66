"""Drift: has the image a reference serves changed since it was last known, and how much?

Per alive reference (outcome ``ok``), against a *baseline*: the hashes the snapshot recorded when it was made
(LAION's md5 sidecars, a ``phash`` column) if it has any, else the hashes of the latest earlier run of the
same series in which the reference was alive:

- ``same``: identical bytes (md5 equal);
- ``near``: bytes differ but the pHashes are within the radius (re-encoded, resized);
- ``changed``: the pHashes are farther apart (another image);
- ``new``: no baseline, but earlier runs saw the reference (never alive before);
- ``unknown``: nothing to compare (the first run of a snapshot without recorded hashes), or the md5s differ
  and one side has no pHash (a recorded md5 alone cannot tell a re-encode from another image).

References that are not alive get no drift (null). Whole columns at a time: pure pyarrow/numpy, no row loop.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class Drift(StrEnum):
    SAME = "same"
    NEAR = "near"
    CHANGED = "changed"
    NEW = "new"
    UNKNOWN = "unknown"


_NIBBLE = np.zeros(256, dtype=np.uint64)
for _digit, _char in enumerate("0123456789abcdef"):
    _NIBBLE[ord(_char)] = _NIBBLE[ord(_char.upper())] = _digit


def hex64(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """16-hex-digit strings as uint64, and a mask of the valid ones (null or malformed -> invalid).

    Straight from the Arrow string buffer (offsets + bytes), sixteen nibbles at a time: no Python string
    per row.
    """
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    array = array.cast(pa.string())
    valid = pc.match_substring_regex(array, r"^[0-9a-fA-F]{16}$").fill_null(False)
    filled = pc.if_else(valid, array, "0000000000000000")
    if isinstance(filled, pa.ChunkedArray):
        filled = filled.combine_chunks()
    n = len(filled)
    offsets = np.frombuffer(filled.buffers()[1], dtype=np.int32)[filled.offset : filled.offset + n + 1]
    data = np.frombuffer(filled.buffers()[2], dtype=np.uint8) if n else np.zeros(0, np.uint8)
    chars = data[offsets[:-1, None] + np.arange(16)] if n else np.zeros((0, 16), np.uint8)
    codes = np.zeros(n, dtype=np.uint64)
    for k in range(16):
        codes |= _NIBBLE[chars[:, k]] << np.uint64(4 * (15 - k))
    return codes, np.asarray(valid.to_numpy(zero_copy_only=False), dtype=bool)


def classify(
    alive: np.ndarray,
    md5: pa.Array,
    phash: pa.Array,
    base_md5: pa.Array,
    base_phash: pa.Array,
    seen_before: np.ndarray,
    radius: int,
) -> pa.Array:
    """The drift word of each row (null where not ``alive``), all arrays aligned row by row.

    ``base_*`` are each row's baseline hashes (null: none); ``seen_before`` says an earlier run of the series
    had the reference (so an alive row without a baseline is ``new``, not ``unknown``).
    """
    n = len(alive)
    md5_same = np.asarray(pc.equal(pc.utf8_lower(md5), pc.utf8_lower(base_md5)).fill_null(False)
                          .to_numpy(zero_copy_only=False), dtype=bool)
    have_base = np.asarray(pc.or_(pc.is_valid(base_md5), pc.is_valid(base_phash)).to_numpy(zero_copy_only=False),
                           dtype=bool)
    codes, codes_ok = hex64(phash)
    base_codes, base_ok = hex64(base_phash)
    both_phash = codes_ok & base_ok
    distance = np.bitwise_count(codes ^ base_codes)
    words = np.full(n, None, dtype=object)
    words[alive & ~have_base] = np.where(seen_before[alive & ~have_base], Drift.NEW.value, Drift.UNKNOWN.value)
    compared = alive & have_base
    words[compared] = Drift.UNKNOWN.value
    words[compared & both_phash & (distance > radius)] = Drift.CHANGED.value
    words[compared & both_phash & (distance <= radius)] = Drift.NEAR.value
    words[compared & md5_same] = Drift.SAME.value
    return pa.array(words, type=pa.string())
