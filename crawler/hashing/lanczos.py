"""Pillow's ``convert("L")`` and LANCZOS ``resize`` for 8-bit images, bit for bit, as numba code.

imagehash computes pHash as the DCT of ``image.convert("L").resize((32, 32), LANCZOS)`` and dHash from
``resize((9, 8), LANCZOS)``. Those two resizes from the full image cost more than decoding it (each reads
every pixel through a 6-tap-per-output-pixel filter), so refwatch computes them here in one pass over the
decoded rows that also feeds PDQ (``crawler.hashing.kernels``). To keep the hashes *identical* to
imagehash's (hash lists are made with it), this follows Pillow's ``libImaging/Resample.c`` exactly:

* coefficients from ``precompute_coeffs`` (double precision, the same expression order), normalised and
  turned into 22-bit fixed point by ``normalize_coeffs_8bpc``;
* the horizontal pass first, over the rows the vertical pass will read, each sum started at
  ``1 << 21`` and clipped to 0..255 (``clip8``) into an 8-bit intermediate; then the vertical pass;
* a pass is skipped when its size does not change, as Pillow skips it;
* ``convert("L")`` of RGB is ``(R*19595 + G*38470 + B*7471 + 0x8000) >> 16`` (``Convert.c``).

Integer arithmetic is exact, so any order of the multiply-adds gives Pillow's result; only the double
precision coefficients must match, and they are computed with the same operations (tests/test_hashing_fast.py
compares with Pillow on many sizes).
"""

from __future__ import annotations

import functools
import math
from typing import Final

import numba
import numpy as np

PRECISION_BITS: Final = 32 - 8 - 2
LANCZOS_SUPPORT: Final = 3.0


@numba.njit(cache=True, nogil=True)
def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


@numba.njit(cache=True, nogil=True)
def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3.0)
    return 0.0


@numba.njit(cache=True, nogil=True)
def lanczos_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for LANCZOS over the whole axis: per output pixel,
    the first input pixel, the count, and the 22-bit fixed-point weights (int32, zero padded)."""
    filterscale = scale = np.float64(np.float32(in_size)) / out_size
    if filterscale < 1.0:
        filterscale = 1.0
    support = LANCZOS_SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    starts = np.zeros(out_size, dtype=np.int64)
    counts = np.zeros(out_size, dtype=np.int64)
    weights = np.zeros((out_size, ksize), dtype=np.int32)
    inv_filterscale = 1.0 / filterscale
    k = np.zeros(ksize, dtype=np.float64)
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        ww = 0.0
        xmin = int(center - support + 0.5)
        if xmin < 0:
            xmin = 0
        xmax = int(center + support + 0.5)
        if xmax > in_size:
            xmax = in_size
        xmax -= xmin
        for x in range(xmax):
            w = _lanczos((x + xmin - center + 0.5) * inv_filterscale)
            k[x] = w
            ww += w
        if ww != 0.0:
            for x in range(xmax):
                k[x] /= ww
        for x in range(xmax):
            if k[x] < 0:
                weights[xx, x] = np.int32(-0.5 + k[x] * (1 << PRECISION_BITS))
            else:
                weights[xx, x] = np.int32(0.5 + k[x] * (1 << PRECISION_BITS))
        starts[xx] = xmin
        counts[xx] = xmax
    return starts, counts, weights


#: Coefficient sets remembered, one per axis length and output size. They depend on nothing else, web images
#: come in a few common sizes, and computing one costs two ``sin`` per tap, ~12 taps per input pixel of the
#: axis for the four resizes of an image (pHash and dHash, both axes): 0.1-0.2 ms of an image's hashing. One
#: set holds ~24 bytes per input pixel (25 KB for 1,024 pixels); with axes up to ``CACHED_AXIS_MAX`` kept, the
#: cache holds at most ~25 MB.
COEFFICIENT_CACHE_ENTRIES: Final = 512
CACHED_AXIS_MAX: Final = 2048


@functools.lru_cache(maxsize=COEFFICIENT_CACHE_ENTRIES)
def _remembered(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return lanczos_coefficients(in_size, out_size)


def coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``lanczos_coefficients``, remembered for axes up to ``CACHED_AXIS_MAX`` pixels (the arrays are shared
    between calls and threads: the kernels only read them)."""
    if in_size > CACHED_AXIS_MAX:
        return lanczos_coefficients(in_size, out_size)
    return _remembered(in_size, out_size)


@numba.njit(cache=True, nogil=True, inline="always")
def clip8(total: np.int32) -> np.uint8:
    """Pillow's ``clip8``: the fixed-point sum shifted down to 8 bits and clipped to 0..255."""
    value = total >> PRECISION_BITS
    if value < 0:
        return np.uint8(0)
    if value > 255:
        return np.uint8(255)
    return np.uint8(value)


@numba.njit(cache=True, nogil=True, inline="always")
def resample_row(line: np.ndarray, starts: np.ndarray, counts: np.ndarray, weights: np.ndarray,
                 out: np.ndarray) -> None:
    """One row of ``_ImagingResampleHorizontal_8bpc`` for a single band."""
    for xx in range(out.size):
        total = np.int32(1 << (PRECISION_BITS - 1))
        start = starts[xx]
        for x in range(counts[xx]):
            total += np.int32(line[start + x]) * weights[xx, x]
        out[xx] = clip8(total)


@numba.njit(cache=True, nogil=True)
def resample_columns(rows: np.ndarray, first_row: int, starts: np.ndarray, counts: np.ndarray,
                     weights: np.ndarray) -> np.ndarray:
    """``_ImagingResampleVertical_8bpc`` over an intermediate whose row 0 is input row ``first_row``."""
    out_rows = starts.size
    cols = rows.shape[1]
    out = np.empty((out_rows, cols), dtype=np.uint8)
    for yy in range(out_rows):
        start = starts[yy] - first_row
        for xx in range(cols):
            total = np.int32(1 << (PRECISION_BITS - 1))
            for y in range(counts[yy]):
                total += np.int32(rows[start + y, xx]) * weights[yy, y]
            out[yy, xx] = clip8(total)
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def luma8(r: np.uint8, g: np.uint8, b: np.uint8) -> np.uint8:
    """Pillow's RGB -> L (ITU-R 601-2 in 16-bit fixed point)."""
    return np.uint8((np.int32(r) * 19595 + np.int32(g) * 38470 + np.int32(b) * 7471 + 0x8000) >> 16)
