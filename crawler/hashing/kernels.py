"""One pass over decoded pixels that feeds every perceptual hash: the hot loop of refwatch's hashing.

Each row of the 8-bit luma image (Pillow's ``convert("L")``, the image imagehash hashes) is read once. From
it come its LANCZOS resamples for pHash (32x32) and dHash (9x8), exactly as imagehash gets them
(``crawler.hashing.lanczos``), and the weighted sums that give PDQ's 64x64 block (``crawler.hashing.pdq``:
the 512-px thumbnail and the Jarosz filter folded into weights). The caller turns the three small arrays
into hashes. PDQ reads the same 8-bit luma rather than Meta's float luma of the RGB pixels: Pillow's luma is
the same weighted sum rounded to an integer, which moves a PDQ hash by a fraction of a bit on average
(tests/test_hashing_fast.py bounds it) and saves converting the image twice.

Compiled by numba on first use (cached beside this file) and run without the GIL, so the crawl's hashing
threads overlap each other and the reactor.
"""

from __future__ import annotations

import numba
import numpy as np

from crawler.hashing.lanczos import PRECISION_BITS, clip8, coefficients, resample_columns, resample_row
from crawler.hashing.pdq import axis_weights

PHASH_SIDE = 32  # imagehash.phash: hash_size 8 x highfreq_factor 4
DHASH_SIZE = (9, 8)  # imagehash.dhash: (hash_size + 1) wide, hash_size high


@numba.njit(cache=True, nogil=True)
def _resample_plan(in_cols: int, in_rows: int, out_cols: int, out_rows: int, h: tuple, v: tuple) -> tuple:
    """What Pillow 13's ``ImagingResampleInner`` does for a LANCZOS resize of an 8-bit image: which passes
    run and in which order (the vertical pass first when the height shrinks by more than twice as many
    pixels as the width), their coefficients, and the input rows the first pass reads."""
    need_h = out_cols != in_cols
    need_v = out_rows != in_rows
    horizontal_first = not ((in_rows - out_rows) > 0 and (in_rows - out_rows) > (in_cols - out_cols) * 2)
    h_starts, h_counts, h_weights = h  # lanczos.coefficients(in_cols, out_cols)
    v_starts, v_counts, v_weights = v  # lanczos.coefficients(in_rows, out_rows)
    first = v_starts[0]
    last = v_starts[out_rows - 1] + v_counts[out_rows - 1]
    if horizontal_first:
        mid = np.zeros((last - first, out_cols if need_h else in_cols), dtype=np.uint8)
        sums = np.zeros((0, 0), dtype=np.int32)
    else:
        mid = np.zeros((0, 0), dtype=np.uint8)
        sums = np.full((out_rows, in_cols), 1 << (PRECISION_BITS - 1), dtype=np.int32)
    return (need_h, need_v, horizontal_first, h_starts, h_counts, h_weights, v_starts, v_counts, v_weights,
            first, last, mid, sums)


@numba.njit(cache=True, nogil=True, inline="always")
def _take_row(plan: tuple, r: int, luma: np.ndarray) -> None:
    """Feed input row ``r`` (8-bit luma) to a vertical-first resize: every output row whose window holds
    ``r`` takes its share (exact integer sums, so the order of accumulation does not matter)."""
    (need_h, need_v, horizontal_first, h_starts, h_counts, h_weights, v_starts, v_counts, v_weights,
     first, last, mid, sums) = plan
    for yy in range(v_starts.size):
        offset = r - v_starts[yy]
        if offset < 0:
            break
        if offset < v_counts[yy]:
            weight = v_weights[yy, offset]
            row = sums[yy]
            for c in range(luma.size):
                row[c] += np.int32(luma[c]) * weight


@numba.njit(cache=True, nogil=True)
def _horizontal_first(transposed: np.ndarray, plan: tuple) -> np.ndarray:
    """A horizontal-first resize computed from the *transposed* luma (cols x rows): each output column's
    taps are whole rows of the transposed image, so every multiply-add runs down a contiguous vector of
    image rows. Integer sums in Pillow's fixed point, so the 8-bit intermediate and the result are
    Pillow's, bit for bit; the vertical pass follows as ``_ImagingResampleVertical_8bpc`` does it."""
    (need_h, need_v, horizontal_first, h_starts, h_counts, h_weights, v_starts, v_counts, v_weights,
     first, last, mid, sums) = plan
    if need_h:
        _horizontal_strip(plan, transposed, 0, transposed.shape[1])  # the whole transposed image: one strip
    else:
        for r in range(last - first):
            for c in range(mid.shape[1]):
                mid[r, c] = transposed[c, first + r]
    return resample_columns(mid, first, v_starts, v_counts, v_weights) if need_v else mid


@numba.njit(cache=True, nogil=True)
def _finish(plan: tuple) -> np.ndarray:
    """A vertical-first resize once every row was fed: clip to 8 bits, then the horizontal pass."""
    (need_h, need_v, horizontal_first, h_starts, h_counts, h_weights, v_starts, v_counts, v_weights,
     first, last, mid, sums) = plan
    rows, cols = sums.shape
    vertical = np.empty((rows, cols), dtype=np.uint8)
    for y in range(rows):
        for c in range(cols):
            vertical[y, c] = clip8(sums[y, c])
    if not need_h:
        return vertical
    out = np.empty((rows, h_starts.size), dtype=np.uint8)
    for y in range(rows):
        resample_row(vertical[y], h_starts, h_counts, h_weights, out[y])
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _grey_row(flat: np.ndarray, bands: int, start: int, out: np.ndarray) -> None:
    """One row of Pillow's ``convert("L")`` (``rgb_grey``'s formula) from ``flat`` at ``start``, or the row
    itself for a 1-band image."""
    cols = out.size
    row = flat[start:start + cols * bands]
    if bands == 4:
        for c in range(cols):
            out[c] = np.uint8((np.int32(row[4 * c]) * 19595 + np.int32(row[4 * c + 1]) * 38470
                               + np.int32(row[4 * c + 2]) * 7471 + 0x8000) >> 16)
    elif bands == 3:
        for c in range(cols):
            out[c] = np.uint8((np.int32(row[3 * c]) * 19595 + np.int32(row[3 * c + 1]) * 38470
                               + np.int32(row[3 * c + 2]) * 7471 + 0x8000) >> 16)
    else:
        for c in range(cols):
            out[c] = row[c]


@numba.njit(cache=True, nogil=True)
def _grey_image(flat: np.ndarray, bands: int, rows: int, cols: int) -> np.ndarray:
    grey = np.empty((rows, cols), dtype=np.uint8)
    for r in range(rows):
        _grey_row(flat, bands, r * cols * bands, grey[r])
    return grey


def rgb_grey(flat: np.ndarray, bands: int, rows: int, cols: int) -> np.ndarray:
    """Pillow's ``convert("L")`` of RGB pixels, bit for bit: ``flat`` holds ``rows * cols`` pixels of
    ``bands`` bytes (3: RGB; 4: Pillow's own RGBX layout). The stride is a constant in each compiled loop,
    which lets the compiler vectorise it."""
    grey = _grey_image(flat, bands, rows, cols)
    grey.flags.writeable = False  # one numba type with np.asarray's read-only arrays
    return grey


def transposed(grey: np.ndarray) -> np.ndarray:
    """``grey`` transposed (cols x rows), read-only, for ``imagehash_arrays``. NumPy's strided copy (which
    releases the GIL) beats a numba loop here: 0.23 against 0.41 ms at 640x450, and 9% of the whole hashing
    over the benchmark corpus, measured interleaved (docs/performance.md)."""
    out = np.ascontiguousarray(grey.T)
    out.flags.writeable = False
    return out


def imagehash_coefficients(cols: int, rows: int) -> tuple:
    """The LANCZOS coefficients of pHash's and dHash's resizes of a (rows, cols) image, remembered by size."""
    return (coefficients(cols, PHASH_SIDE), coefficients(rows, PHASH_SIDE), coefficients(cols, DHASH_SIZE[0]),
            coefficients(rows, DHASH_SIZE[1]))


def imagehash_arrays(grey: np.ndarray, transposed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 32x32 pHash image and the 8x9 dHash image of (rows, cols) uint8 luma (Pillow's ``convert("L")``),
    exactly as Pillow's LANCZOS resize makes them; ``transposed`` is the same luma transposed when
    ``needs_transposed`` says a resize runs horizontal-first (else unused)."""
    rows, cols = grey.shape
    return _imagehash_arrays(grey, transposed, imagehash_coefficients(cols, rows))


@numba.njit(cache=True, nogil=True)
def _imagehash_arrays(grey: np.ndarray, transposed: np.ndarray, coeffs: tuple) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = grey.shape
    phash_plan = _resample_plan(cols, rows, PHASH_SIDE, PHASH_SIDE, coeffs[0], coeffs[1])
    dhash_plan = _resample_plan(cols, rows, DHASH_SIZE[0], DHASH_SIZE[1], coeffs[2], coeffs[3])
    stream_phash = not phash_plan[2]
    stream_dhash = not dhash_plan[2]
    if stream_phash or stream_dhash:
        for r in range(rows):
            if stream_phash:
                _take_row(phash_plan, r, grey[r])
            if stream_dhash:
                _take_row(dhash_plan, r, grey[r])
    phash_image = _finish(phash_plan) if stream_phash else _horizontal_first(transposed, phash_plan)
    dhash_image = _finish(dhash_plan) if stream_dhash else _horizontal_first(transposed, dhash_plan)
    return phash_image, dhash_image


_STRIP_ROWS = 64  # rows transposed at a time for a horizontal-first pass (64 x cols bytes)


@numba.njit(cache=True, nogil=True)
def _horizontal_strip(plan: tuple, strip: np.ndarray, strip_first: int, strip_rows: int) -> None:
    """The horizontal pass of a horizontal-first resize for the rows of a strip that its vertical pass reads,
    into the plan's 8-bit intermediate. ``strip`` is (cols x at least ``strip_rows``): the luma of rows
    ``strip_first ...`` transposed, so each tap runs down a contiguous vector of rows. A strip of 64 rows
    here (``imagehash_arrays_by_rows``), the whole transposed image in ``_horizontal_first``."""
    (need_h, need_v, horizontal_first, h_starts, h_counts, h_weights, v_starts, v_counts, v_weights,
     first, last, mid, sums) = plan
    lo = max(first, strip_first)
    hi = min(last, strip_first + strip_rows)
    if lo >= hi:
        return
    n = hi - lo
    skip = lo - strip_first
    acc = np.empty(n, dtype=np.int32)
    for xx in range(h_starts.size):
        for i in range(n):
            acc[i] = 1 << (PRECISION_BITS - 1)
        for x in range(h_counts[xx]):
            weight = h_weights[xx, x]
            column = strip[h_starts[xx] + x, skip:skip + n]
            for i in range(n):
                acc[i] += np.int32(column[i]) * weight
        for i in range(n):
            mid[lo - first + i, xx] = clip8(acc[i])


@numba.njit(cache=True, nogil=True, inline="always")
def _feed_row(plan: tuple, r: int, luma: np.ndarray) -> None:
    """Feed input row ``r`` to a resize that does not need the strip: a vertical-first one takes its share
    of every row (``_take_row``); a horizontal-first one without a horizontal pass copies the rows it reads."""
    (need_h, need_v, horizontal_first, h_starts, h_counts, h_weights, v_starts, v_counts, v_weights,
     first, last, mid, sums) = plan
    if not horizontal_first:
        _take_row(plan, r, luma)
    elif not need_h and first <= r < last:
        mid[r - first, :] = luma


@numba.njit(cache=True, nogil=True)
def _finish_either(plan: tuple) -> np.ndarray:
    """The resized image once every row was fed."""
    (need_h, need_v, horizontal_first, h_starts, h_counts, h_weights, v_starts, v_counts, v_weights,
     first, last, mid, sums) = plan
    if not horizontal_first:
        return _finish(plan)
    return resample_columns(mid, first, v_starts, v_counts, v_weights) if need_v else mid


def imagehash_arrays_by_rows(flat: np.ndarray, bands: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """``imagehash_arrays`` of the image in ``flat`` (``rows * cols`` pixels of ``bands`` bytes: 4 RGBX, 3
    RGB, 1 grey), bit for bit, with its luma made a row at a time and transposed a strip of rows at a time:
    no whole luma image and no whole transposed copy, 2 bytes a pixel less at the peak than ``rgb_grey`` +
    ``transposed``. For large images, where those two copies cost memory that a decode budget must hold."""
    return _imagehash_arrays_by_rows(flat, bands, rows, cols, imagehash_coefficients(cols, rows))


@numba.njit(cache=True, nogil=True)
def _imagehash_arrays_by_rows(flat: np.ndarray, bands: int, rows: int, cols: int,
                              coeffs: tuple) -> tuple[np.ndarray, np.ndarray]:
    phash_plan = _resample_plan(cols, rows, PHASH_SIDE, PHASH_SIDE, coeffs[0], coeffs[1])
    dhash_plan = _resample_plan(cols, rows, DHASH_SIZE[0], DHASH_SIZE[1], coeffs[2], coeffs[3])
    strips = (phash_plan[2] and phash_plan[0]) or (dhash_plan[2] and dhash_plan[0])
    luma = np.empty(cols, dtype=np.uint8)
    strip = np.empty((cols if strips else 0, _STRIP_ROWS), dtype=np.uint8)
    strip_first = 0
    for r in range(rows):
        _grey_row(flat, bands, r * cols * bands, luma)
        _feed_row(phash_plan, r, luma)
        _feed_row(dhash_plan, r, luma)
        if strips:
            at = r - strip_first
            for c in range(cols):
                strip[c, at] = luma[c]
            if at + 1 == _STRIP_ROWS or r + 1 == rows:
                if phash_plan[2] and phash_plan[0]:
                    _horizontal_strip(phash_plan, strip, strip_first, at + 1)
                if dhash_plan[2] and dhash_plan[0]:
                    _horizontal_strip(dhash_plan, strip, strip_first, at + 1)
                strip_first = r + 1
    return _finish_either(phash_plan), _finish_either(dhash_plan)


@numba.njit(cache=True, nogil=True, inline="always")
def _luma_row(flat: np.ndarray, bands: int, start: int, out: np.ndarray) -> None:
    """One row of PDQ's float luma: ``(299 R + 587 G + 114 B) / 1000`` in float32 (Pillow's ``convert("F")``,
    the reference's value to the last bit or one unit in it), or the grey value of a 1-band image. The row
    is sliced out first and each pixel size has its own loop, so every loop runs over a fresh base with a
    constant stride, which is what lets the compiler vectorise it (indexing ``flat`` at ``start + 4 c``
    directly runs five times slower)."""
    cols = out.size
    row = flat[start:start + cols * bands]
    if bands == 4:
        for c in range(cols):
            out[c] = np.float32(np.int32(row[4 * c]) * 299 + np.int32(row[4 * c + 1]) * 587
                                + np.int32(row[4 * c + 2]) * 114) / np.float32(1000.0)
    elif bands == 3:
        for c in range(cols):
            out[c] = np.float32(np.int32(row[3 * c]) * 299 + np.int32(row[3 * c + 1]) * 587
                                + np.int32(row[3 * c + 2]) * 114) / np.float32(1000.0)
    else:
        for c in range(cols):
            out[c] = np.float32(row[c])


@numba.njit(cache=True, nogil=True)
def pdq_block(flat: np.ndarray, bands: int, rows: int, cols: int, rows_thumb: int, cols_thumb: int) -> np.ndarray:
    """PDQ's filtered 64x64 block of the image in ``flat`` (``rows * cols`` pixels of ``bands`` bytes: 4
    RGBX, 3 RGB, 1 grey) as seen at ``rows_thumb`` x ``cols_thumb``: each sampled row's weights applied
    along the image's rows (vectors down the row, luma made a row at a time, never a whole float image),
    then each sampled column's."""
    r_start, r_len, r_w = axis_weights(rows, rows_thumb)
    c_start, c_len, c_w = axis_weights(cols, cols_thumb)
    reduced = np.zeros((64, cols), dtype=np.float32)
    luma = np.empty(cols, dtype=np.float32)
    first_sample = 0
    for r in range(rows):
        while first_sample < 64 and r_start[first_sample] + r_len[first_sample] <= r:
            first_sample += 1
        if first_sample == 64:
            break
        if r_start[first_sample] > r:
            continue
        _luma_row(flat, bands, r * cols * bands, luma)
        i = first_sample
        while i < 64 and r_start[i] <= r:
            offset = r - r_start[i]
            if offset < r_len[i]:
                w = r_w[i, offset]
                if w != 0.0:
                    target = reduced[i]
                    for c in range(cols):
                        target[c] += w * luma[c]
            i += 1
    block = np.empty((64, 64), dtype=np.float32)
    for i in range(64):
        for j in range(64):
            total = np.float32(0.0)
            start = c_start[j]
            for t in range(c_len[j]):
                total += c_w[j, t] * reduced[i, start + t]
            block[i, j] = total
    return block


def needs_transposed(width: int, height: int) -> bool:
    """True when Pillow resizes this image for pHash or dHash horizontal pass first (the usual case: not
    much taller than wide): ``imagehash_arrays`` then wants the transposed luma too."""
    return any(not ((height - out_rows) > 0 and (height - out_rows) > (width - out_cols) * 2)
               for out_cols, out_rows in ((PHASH_SIDE, PHASH_SIDE), DHASH_SIZE))
