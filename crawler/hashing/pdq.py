"""PDQ as numba kernels: Meta's hash steps, and the 512-px thumbnail with the Jarosz filter as weights.

From the filtered 64x64 block on, the steps are Meta's to the bit (``pdq/cpp/hashing/pdqhashing.cpp`` in
facebook/ThreatExchange; ``crawler.hashing.jarosz`` is the literal filter and tests/test_hashing_fast.py
checks both against ``pdqhash``): the quality metric (clipped gradients, /90, at most 100), the 16x64 DCT
matrix on both sides (rows 1..16: no DC), Torben's median, one bit a coefficient above it, and the 8
rotations/flips from the same DCT.

Why not ``pdqhash``: its binding computes the luma with numpy temporaries and builds the bit vector with a
Python list comprehension, so a hash costs ~6 ms at 512x512 with the GIL held (and Meta's hashers first
build the 512-px thumbnail, ~3 ms more); these kernels take a fraction of that and release the GIL
(``nogil``), so hashing threads overlap. They are compiled on first use and cached beside this file
(``cache=True``), like the Hamming index's.

Bit order: bit ``k = 16 i + j`` is ``DCT[i][j] > median``; Meta's hex (``Hash256::format``) writes bit 255
first, which is what ``pdq_hex`` returns (``pdqhash.compute``'s vector, reversed, packed MSB first).
"""

from __future__ import annotations

import math
from typing import Final

import numba
import numpy as np

#: Images smaller than this on a side get the all-zero hash and quality 0, as in the reference.
MIN_HASHABLE_DIM: Final = 5
_JAROSZ_PASSES: Final = 2


def _dct_matrix() -> np.ndarray:
    """The 16x64 DCT-II rows 1..16, computed in double and stored as float, as the reference does."""
    scale = math.sqrt(2.0 / 64.0)
    matrix = np.empty((16, 64), dtype=np.float32)
    for i in range(16):
        for j in range(64):
            matrix[i, j] = scale * math.cos((math.pi / 2.0 / 64.0) * (i + 1) * (2 * j + 1))
    return matrix


DCT_MATRIX: Final = _dct_matrix()


@numba.njit(cache=True, nogil=True)
def quality_metric(block: np.ndarray) -> int:
    gradient_sum = 0
    for i in range(63):
        for j in range(64):
            d = int(((block[i, j] - block[i + 1, j]) * np.float32(100.0)) / np.float32(255.0))
            gradient_sum += abs(d)
    for i in range(64):
        for j in range(63):
            d = int(((block[i, j] - block[i, j + 1]) * np.float32(100.0)) / np.float32(255.0))
            gradient_sum += abs(d)
    quality = gradient_sum // 90
    return min(quality, 100)


@numba.njit(cache=True, nogil=True)
def dct16(block: np.ndarray, dct: np.ndarray) -> np.ndarray:
    """``dct64To16``: D A D^T with float32 sums in the reference's order."""
    temp = np.empty((16, 64), dtype=np.float32)
    for i in range(16):
        for j in range(64):
            total = np.float32(0.0)
            for k in range(64):
                total += dct[i, k] * block[k, j]
            temp[i, j] = total
    out = np.empty((16, 16), dtype=np.float32)
    for i in range(16):
        for j in range(16):
            total = np.float32(0.0)
            for k in range(64):
                total += temp[i, k] * dct[j, k]
            out[i, j] = total
    return out


@numba.njit(cache=True, nogil=True)
def _torben(values: np.ndarray) -> np.float32:
    """Torben's median, exactly as the reference (``torben.cpp``) picks it."""
    n = values.size
    low = values[0]
    high = values[0]
    for i in range(1, n):
        if values[i] < low:
            low = values[i]
        if values[i] > high:
            high = values[i]
    half = (n + 1) // 2
    while True:
        guess = (low + high) / np.float32(2.0)
        less = 0
        greater = 0
        equal = 0
        max_below = low
        min_above = high
        for i in range(n):
            v = values[i]
            if v < guess:
                less += 1
                if v > max_below:
                    max_below = v
            elif v > guess:
                greater += 1
                if v < min_above:
                    min_above = v
            else:
                equal += 1
        if less <= half and greater <= half:
            break
        if less > greater:
            high = max_below
        else:
            low = min_above
    if less >= half:
        return max_below
    if less + equal >= half:
        return guess
    return min_above


@numba.njit(cache=True, nogil=True)
def coefficient_bits(coefficients: np.ndarray) -> np.ndarray:
    """256 bits, bit ``16 i + j`` = coefficient above the median (all zero when every value is equal)."""
    flat = coefficients.ravel()
    median = _torben(flat)
    out = np.zeros(256, dtype=np.uint8)
    for k in range(256):
        if flat[k] > median:
            out[k] = 1
    return out


@numba.njit(cache=True, nogil=True)
def dihedral_coefficients(a: np.ndarray) -> np.ndarray:
    """The 16x16 DCTs of the 8 rotations/flips from the original's (``dct16OriginalTo*`` in the reference).

    Flipping an axis negates the coefficients of even index along it (DCT rows 1..16 start at the odd
    cosine); a transposition swaps the indices. Negation is exact in float, so the bits match the reference.
    """
    out = np.empty((8, 16, 16), dtype=np.float32)
    for p in range(16):
        for q in range(16):
            even_p = p % 2 == 0
            even_q = q % 2 == 0
            same = a[p, q]
            swapped = a[q, p]
            out[0, p, q] = same
            out[1, p, q] = -swapped if even_p else swapped  # rotate 90
            out[2, p, q] = -same if even_p != even_q else same  # rotate 180
            out[3, p, q] = -swapped if even_q else swapped  # rotate 270
            out[4, p, q] = -same if even_p else same  # flip x
            out[5, p, q] = -same if even_q else same  # flip y
            out[6, p, q] = swapped  # flip along the main diagonal
            out[7, p, q] = -swapped if even_p != even_q else swapped  # flip along the other diagonal
    return out


# --- the fast path: the 512-px thumbnail and the Jarosz filter folded into two weight matrices ----------------
#
# Meta's reference hashers shrink an image to fit 512x512 (bicubic) before PDQ, and PDQ then box-filters and
# samples 64x64 values. Every step is linear and separable, so each of the 64x64 values is ``wr . L . wc``
# for one weight vector per sampled row and one per sampled column, over the *original* pixels. Computing
# those 2 x 64 short vectors (a few thousand multiplications) and applying them reads the image once and
# never builds the thumbnail: about 5 multiply-adds a pixel, against a bicubic resize plus four filter
# passes. The thumbnail's own rounding to 8 bits is not reproduced, so hashes may differ from the
# reference's by a bit or two (tests/test_hashing_fast.py holds the measured bound; ``crawler.hashing.kernels`` applies the weights).

THUMBNAIL_SIDE: Final = 512


@numba.njit(cache=True, nogil=True)
def _bicubic(x: float) -> float:
    """Pillow's bicubic kernel (a = -0.5)."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


@numba.njit(cache=True, nogil=True)
def axis_weights(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of the 64 samples along an axis of ``n`` pixels shown at ``m`` (thumbnail) pixels: the first
    original pixel it reads, how many, and their weights (float32, padded with zeros)."""
    window = (m + 127) // 128
    half = (window + 2) // 2
    scale = n / m
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    starts = np.zeros(64, dtype=np.int64)
    lengths = np.zeros(64, dtype=np.int64)
    spans = []
    longest = 0
    v = np.zeros(m, dtype=np.float64)
    nxt = np.zeros(m, dtype=np.float64)
    u = np.zeros(n, dtype=np.float64)
    for i in range(64):
        v[:] = 0.0
        s = int(((i + 0.5) * m) / 64)
        v[s] = 1.0
        lo, hi = s, s
        for _ in range(_JAROSZ_PASSES):  # the box filter along this axis, once per Jarosz pass
            nxt[:] = 0.0
            new_lo, new_hi = m, -1
            for o in range(lo, hi + 1):
                if v[o] == 0.0:
                    continue
                k_lo = max(0, o + half - window)
                k_hi = min(m - 1, o + half - 1)
                share = v[o] / (k_hi - k_lo + 1)
                for k in range(k_lo, k_hi + 1):
                    nxt[k] += share
                new_lo = min(new_lo, k_lo)
                new_hi = max(new_hi, k_hi)
            v[:] = nxt
            lo, hi = new_lo, new_hi
        if m == n:
            first, last = lo, hi
            weights = v[lo:hi + 1].copy()
        else:
            u[:] = 0.0
            first, last = n, -1
            for o in range(lo, hi + 1):
                if v[o] == 0.0:
                    continue
                center = (o + 0.5) * scale
                xmin = max(int(center - support + 0.5), 0)
                xmax = min(int(center + support + 0.5), n)
                total = 0.0
                for x in range(xmin, xmax):
                    total += _bicubic((x - center + 0.5) / filterscale)
                for x in range(xmin, xmax):
                    u[x] += v[o] * _bicubic((x - center + 0.5) / filterscale) / total
                first = min(first, xmin)
                last = max(last, xmax - 1)
            weights = u[first:last + 1].copy()
        starts[i] = first
        lengths[i] = last - first + 1
        longest = max(longest, last - first + 1)
        spans.append(weights)
    table = np.zeros((64, longest), dtype=np.float32)
    for i in range(64):
        table[i, : lengths[i]] = spans[i]
    return starts, lengths, table


def thumbnail_size(width: int, height: int) -> tuple[int, int]:
    """The size Meta's hashers (and refwatch's earlier PDQ) shrink an image to: fit 512x512, rounded."""
    if width <= THUMBNAIL_SIDE and height <= THUMBNAIL_SIDE:
        return width, height
    scale = THUMBNAIL_SIDE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def pdq_from_block(block: np.ndarray, dihedral: bool = False) -> tuple[list[np.ndarray], int]:
    """Bits and quality from the filtered 64x64 block: one bit vector, or the 8 of ``PDQ_DIHEDRAL_ORDER``."""
    coefficients = dct16(block, DCT_MATRIX)
    quality = quality_metric(block)
    if not dihedral:
        return [coefficient_bits(coefficients)], quality
    return [coefficient_bits(c) for c in dihedral_coefficients(coefficients)], quality


def pdq_hex(bits: np.ndarray) -> str:
    """Meta's hex of 256 bits in kernel order (bit ``16 i + j``): bit 255 is written first."""
    return np.packbits(np.asarray(bits, dtype=np.uint8)[::-1]).tobytes().hex()
