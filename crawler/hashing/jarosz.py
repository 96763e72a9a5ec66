"""Meta's PDQ filter steps bit for bit: the exact PDQ of a pixel array, to check refwatch's against.

The crawl computes PDQ with the 512-px thumbnail and the Jarosz filter folded into weights
(``crawler.hashing.pdq``, ``crawler.hashing.kernels``). This module is the literal algorithm of Meta's C++
(``pdq/cpp/downscaling/downscaling.cpp``, ``pdqhashing.cpp`` in facebook/ThreatExchange), in float32 and in
the same order of operations, so ``pdq_exact`` gives ``pdqhash.compute``'s hash bit for bit
(tests/test_hashing_fast.py checks many sizes, and the dihedral hashes), which pins the steps the two paths
share (DCT, quality, median, bits, rotations) and measures what folding costs:

1. luma: ``0.299 R + 0.587 G + 0.114 B`` in float64, rounded to float32 (as pdqhash's binding computes it);
2. a Jarosz filter: two passes of a box filter along rows then along columns, window
   ``(dimension + 127) // 128``, with the reference's running sum and shrinking windows at the edges;
3. decimation to 64x64 by sampling at ``int((i + 0.5) * dimension / 64)``;
4. then ``crawler.hashing.pdq``: quality, the 16x64 DCT on both sides, Torben's median, one bit a coefficient.

The running sums advance for many rows or columns side by side (each one's arithmetic unchanged), and the
last pass computes only the 64x64 points decimation reads, so this is not slow either (a few ms at 512x512).
"""

from __future__ import annotations

import numba
import numpy as np

from crawler.hashing.pdq import DCT_MATRIX, MIN_HASHABLE_DIM, coefficient_bits, dct16, dihedral_coefficients, quality_metric


@numba.njit(cache=True, nogil=True)
def _luma_rgb(rgb: np.ndarray) -> np.ndarray:
    rows, cols = rgb.shape[0], rgb.shape[1]
    out = np.empty((rows, cols), dtype=np.float32)
    for i in range(rows):
        for j in range(cols):
            value = np.float64(rgb[i, j, 0]) * 0.299 + np.float64(rgb[i, j, 1]) * 0.587
            out[i, j] = np.float32(value + np.float64(rgb[i, j, 2]) * 0.114)
    return out


@numba.njit(cache=True, nogil=True)
def _luma_grey(grey: np.ndarray) -> np.ndarray:
    rows, cols = grey.shape[0], grey.shape[1]
    out = np.empty((rows, cols), dtype=np.float32)
    for i in range(rows):
        for j in range(cols):
            out[i, j] = np.float32(grey[i, j])
    return out


_LANES = 8  # rows filtered side by side: independent running sums, so the CPU overlaps them


@numba.njit(cache=True, nogil=True)
def _box_columns(src: np.ndarray, dst: np.ndarray, window: int, out_rows: np.ndarray) -> None:
    """``boxAlongColsFloat``: ``box1DFloat`` down every column, all columns side by side (vectorised).

    Each column's running sum sees the same float32 operations in the same order as the reference's
    column-by-column loop, so the values are identical. Only the rows ``out_rows`` flags are divided and
    written (the last pass needs 64 of them).
    """
    rows, cols = src.shape
    half = (window + 2) // 2
    total = np.zeros(cols, dtype=np.float32)
    size = 0
    right = 0
    left = 0
    out = 0
    for _ in range(half - 1):
        for c in range(cols):
            total[c] += src[right, c]
        size += 1
        right += 1
    for _ in range(window - half + 1):
        for c in range(cols):
            total[c] += src[right, c]
        size += 1
        if out_rows[out]:
            divisor = np.float32(size)
            for c in range(cols):
                dst[out, c] = total[c] / divisor
        right += 1
        out += 1
    for _ in range(rows - window):
        for c in range(cols):
            total[c] += src[right, c]
        for c in range(cols):
            total[c] -= src[left, c]
        if out_rows[out]:
            divisor = np.float32(size)
            for c in range(cols):
                dst[out, c] = total[c] / divisor
        left += 1
        right += 1
        out += 1
    for _ in range(half - 1):
        for c in range(cols):
            total[c] -= src[left, c]
        size -= 1
        if out_rows[out]:
            divisor = np.float32(size)
            for c in range(cols):
                dst[out, c] = total[c] / divisor
        left += 1
        out += 1


@numba.njit(cache=True, nogil=True)
def _box_rows(src: np.ndarray, dst: np.ndarray, window: int, out_cols: np.ndarray) -> None:
    """``boxAlongRowsFloat``: ``box1DFloat`` along every row, ``_LANES`` rows at a time.

    The rows of a block are copied side by side (column-major), filtered like columns, and copied back, so
    the running sums of several rows advance together; the arithmetic per row is the reference's.
    """
    rows, cols = src.shape
    block = np.empty((cols, _LANES), dtype=np.float32)
    filtered = np.empty((cols, _LANES), dtype=np.float32)
    for start in range(0, rows, _LANES):
        lanes = min(_LANES, rows - start)
        for r in range(lanes):
            for c in range(cols):
                block[c, r] = src[start + r, c]
        for r in range(lanes, _LANES):
            for c in range(cols):
                block[c, r] = np.float32(0.0)
        _box_columns(block, filtered, window, out_cols)
        for r in range(lanes):
            for c in range(cols):
                if out_cols[c]:
                    dst[start + r, c] = filtered[c, r]


@numba.njit(cache=True, nogil=True)
def _sample_flags(length: int) -> np.ndarray:
    flags = np.zeros(length, dtype=np.bool_)
    for i in range(64):
        flags[int(((i + 0.5) * length) / 64)] = True
    return flags


@numba.njit(cache=True, nogil=True)
def _jarosz(buffer1: np.ndarray, window_rows: int, window_cols: int) -> None:
    """``jaroszFilterFloat`` (two passes) on ``buffer1``, exact at the 64x64 points ``_decimate`` reads.

    The last pass computes only what decimation samples: along rows, only the 64 sampled columns; down
    the columns, only the 64 sampled rows. Every sampled value equals the full filter's.
    """
    rows, cols = buffer1.shape
    buffer2 = np.empty_like(buffer1)
    every_col = np.ones(cols, dtype=np.bool_)
    every_row = np.ones(rows, dtype=np.bool_)
    _box_rows(buffer1, buffer2, window_rows, every_col)
    _box_columns(buffer2, buffer1, window_cols, every_row)
    _box_rows(buffer1, buffer2, window_rows, _sample_flags(cols))
    _box_columns(buffer2, buffer1, window_cols, _sample_flags(rows))


@numba.njit(cache=True, nogil=True)
def _decimate(buffer: np.ndarray) -> np.ndarray:
    rows, cols = buffer.shape
    out = np.empty((64, 64), dtype=np.float32)
    for i in range(64):
        source_row = int(((i + 0.5) * rows) / 64)
        for j in range(64):
            out[i, j] = buffer[source_row, int(((j + 0.5) * cols) / 64)]
    return out


@numba.njit(cache=True, nogil=True)
def _dct_of_luma(luma: np.ndarray, dct: np.ndarray) -> tuple[np.ndarray, int]:
    rows, cols = luma.shape
    if rows == 64 and cols == 64:
        block = luma.copy()
    else:
        _jarosz(luma, (cols + 127) // 128, (rows + 127) // 128)
        block = _decimate(luma)
    return dct16(block, dct), quality_metric(block)


@numba.njit(cache=True, nogil=True)
def _pdq_luma(luma: np.ndarray, dct: np.ndarray) -> tuple[np.ndarray, int]:
    rows, cols = luma.shape
    if rows < MIN_HASHABLE_DIM or cols < MIN_HASHABLE_DIM:
        return np.zeros(256, dtype=np.uint8), 0
    coefficients, quality = _dct_of_luma(luma, dct)
    return coefficient_bits(coefficients), quality


def pdq_exact_rgb(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """PDQ of an (rows, cols, 3) uint8 array: 256 bits (uint8 0/1, bit 16 i + j) and the quality."""
    pixels = np.ascontiguousarray(rgb, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an RGB array of shape (rows, cols, 3), got {pixels.shape}")
    return _pdq_luma(_luma_rgb(pixels), DCT_MATRIX)


def pdq_exact_grey(grey: np.ndarray) -> tuple[np.ndarray, int]:
    """PDQ of a (rows, cols) uint8 luma array (e.g. Pillow's "L"): the reference's ``fillFloatLumaFromGrey``."""
    pixels = np.ascontiguousarray(grey, dtype=np.uint8)
    if pixels.ndim != 2:
        raise ValueError(f"expected a greyscale array of shape (rows, cols), got {pixels.shape}")
    return _pdq_luma(_luma_grey(pixels), DCT_MATRIX)


def pdq_exact_dihedral_rgb(rgb: np.ndarray) -> tuple[list[np.ndarray], int]:
    """The 8 dihedral PDQ hashes of an RGB array (``pdqDihedralHash256esFromFloatLuma``) and the quality."""
    pixels = np.ascontiguousarray(rgb, dtype=np.uint8)
    luma = _luma_rgb(pixels)
    if luma.shape[0] < MIN_HASHABLE_DIM or luma.shape[1] < MIN_HASHABLE_DIM:
        return [np.zeros(256, dtype=np.uint8) for _ in range(8)], 0
    coefficients, quality = _dct_of_luma(luma, DCT_MATRIX)
    return [coefficient_bits(c) for c in dihedral_coefficients(coefficients)], quality


