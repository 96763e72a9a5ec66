"""Deterministic, benign synthetic images for tests, the demo and benchmarks.

The repository holds no real photos: every fixture image is drawn here from a seed. Tests need two things
from them that random pictures only give *probably*: different seeds must never look alike to the perceptual
hashes, and benign copies (resized, recompressed) must keep matching. So the image is built in two layers:

* **Luminance** (all that pHash, dHash and PDQ look at) is a sum of the very cosine patterns those hashes
  measure. Its low-frequency block (pHash's 8x8 DCT) spells a codeword of a binary BCH [31, 11, 11] code,
  each bit written as a +/- pair, so every pattern is balanced around the median that pHash thresholds on;
  any two seeds below ``CODED_SEEDS`` are therefore >= 22 pHash bits apart by construction. The rest of
  PDQ's 16x16 band gets random balanced signs, so PDQ distances between seeds sit near 128 of 256, and every
  hashed coefficient is far from its threshold, which keeps resized or recompressed copies matching.
* **Colour** carries what a person sees: a gradient, soft blobs and hard-edged shapes, all luma-neutral so
  they change how the image looks without moving its hashes; plus a little grain.

Seeds from ``CODED_SEEDS`` on use random balanced low-frequency signs instead: pairs are then as unlikely
to collide as two unrelated photos are (within 16 pHash bits about once in 10,000 pairs, within 8 about
once in 800 million), where reusing codewords would make every 2048th seed a pHash duplicate.

Output is a pure function of the seed for a given NumPy and Pillow version (and codec library, for the
encoded bytes); the hash properties hold for sizes from 64 pixels a side.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

DEFAULT_SIZE: tuple[int, int] = (256, 256)

# g(x) of the binary BCH [31, 11, 11] code: the product of the minimal polynomials of a, a^3, a^5, a^7 in
# GF(32) built on x^5 + x^2 + 1. Codeword = message(x) * g(x); the tests re-check the minimum distance.
_BCH_GENERATOR = 0x1626D5
_BCH_MESSAGE_BITS = 11
CODED_SEEDS = 1 << _BCH_MESSAGE_BITS  # seeds 0..2047 get distinct codewords

_PHASH_BAND = 8  # imagehash.phash keeps DCT[:8, :8] of a 32x32 resize
_PDQ_BAND = 16  # PDQ keeps DCT rows/cols 1..16 of a 64x64 downsample
_AMPLITUDE = 4.0  # grey levels per cosine term; ~270 terms give a luma spread of about +/-35
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow "L" and PDQ use


def synthetic_image(seed: int, size: tuple[int, int] = DEFAULT_SIZE) -> Image.Image:
    """An RGB image of ``size`` (width, height) that depends only on ``seed`` (>= 0)."""
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    luma = 128.0 + _AMPLITUDE * _cosine_field(_frequency_signs(seed, rng), width, height)

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (xs + 0.5) / width  # 0..1 across the image whatever its size, so layouts scale
    v = (ys + 0.5) / height
    colour = _gradient(rng, u, v) + _blobs(rng, u, v) + _shapes(rng, width, height)
    grain = rng.normal(0.0, 2.0, size=(height, width, 1)).astype(np.float32)
    pixels = luma[..., None] + colour + grain
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str = "JPEG", **params: Any) -> bytes:
    """Encode ``img`` in memory (``params`` go to ``Image.save``, e.g. ``quality=90``)."""
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def synthetic_jpeg(seed: int, size: tuple[int, int] = DEFAULT_SIZE, quality: int = 90) -> bytes:
    """JPEG bytes of ``synthetic_image(seed, size)``."""
    return encode(synthetic_image(seed, size), "JPEG", quality=quality)


def variants(img: Image.Image) -> dict[str, bytes]:
    """Benign near-copies of ``img``, as a re-hosting site might serve it, for perceptual-match tests.

    Keys are stable: ``resized`` (0.6x, Lanczos, JPEG q90), ``jpeg_q50`` (heavy recompression), ``png``
    (lossless re-encode: same pixels, different bytes) and ``brightness`` (+10 %, JPEG q90).
    """
    rgb = img.convert("RGB")
    small = rgb.resize(
        (max(1, round(rgb.width * 0.6)), max(1, round(rgb.height * 0.6))), Image.Resampling.LANCZOS
    )
    brighter = ImageEnhance.Brightness(rgb).enhance(1.10)
    return {
        "resized": encode(small, "JPEG", quality=90),
        "jpeg_q50": encode(rgb, "JPEG", quality=50),
        "png": encode(rgb, "PNG"),
        "brightness": encode(brighter, "JPEG", quality=90),
    }


def bch_codeword(message: int) -> int:
    """The 31-bit BCH codeword of an 11-bit ``message`` (carry-less product with the generator)."""
    if not 0 <= message < CODED_SEEDS:
        raise ValueError(f"message must be in [0, {CODED_SEEDS}), got {message}")
    product, generator = 0, _BCH_GENERATOR
    while message:
        if message & 1:
            product ^= generator
        message >>= 1
        generator <<= 1
    return product


def _frequency_signs(seed: int, rng: np.random.Generator) -> np.ndarray:
    """+1/-1/0 per DCT frequency (rows = vertical): which cosine terms the luminance adds, with what sign."""
    signs = np.zeros((_PDQ_BAND + 1, _PDQ_BAND + 1), dtype=np.float32)
    # pHash block without DC: 63 slots. 62 hold 31 +/- pairs (one pair per code bit), the last one is -1, so
    # with DC on top exactly 32 of pHash's 64 coefficients are high and its median falls between the groups.
    slots = [(r, c) for r in range(_PHASH_BAND) for c in range(_PHASH_BAND) if (r, c) != (0, 0)]
    if seed < CODED_SEEDS:
        word = bch_codeword(seed)
        bits = [(word >> k) & 1 for k in range(31)]
        low = np.array([s for b in bits for s in ((1.0, -1.0) if b else (-1.0, 1.0))] + [-1.0])
    else:
        low = np.array([1.0] * 31 + [-1.0] * 32)
        rng.shuffle(low)
    for (r, c), sign in zip(slots, low):
        signs[r, c] = sign
    # PDQ's band (rows/cols 1..16): the 7x7 corner is already set; fill the rest so that exactly half of
    # its 256 coefficients are positive, again putting PDQ's median between the two groups.
    band = signs[1:, 1:]
    free = band == 0
    positives = 128 - int((band > 0).sum())
    fill = np.array([1.0] * positives + [-1.0] * (int(free.sum()) - positives), dtype=np.float32)
    rng.shuffle(fill)
    band[free] = fill
    return signs


def _cosine_field(signs: np.ndarray, width: int, height: int) -> np.ndarray:
    """Sum of signed 2-D DCT-II basis patterns cos(pi*r*(y+.5)/H) * cos(pi*c*(x+.5)/W)."""
    freqs = np.arange(signs.shape[0], dtype=np.float64)[:, None]
    rows = np.cos(np.pi * freqs * (np.arange(height) + 0.5) / height)  # (F, H)
    cols = np.cos(np.pi * freqs * (np.arange(width) + 0.5) / width)  # (F, W)
    return (rows.T @ signs.astype(np.float64) @ cols).astype(np.float32)


def _luma_neutral(rng: np.random.Generator, scale: float) -> np.ndarray:
    """A random colour offset whose 601 luma is zero: visible as hue, invisible to the hashes."""
    offset = rng.uniform(-scale, scale, size=3).astype(np.float32)
    offset -= _LUMA_WEIGHTS * (offset @ _LUMA_WEIGHTS) / (_LUMA_WEIGHTS @ _LUMA_WEIGHTS)
    return offset


def _gradient(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A linear colour ramp in a random direction."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ramp = (np.cos(angle) * (u - 0.5) + np.sin(angle) * (v - 0.5))[..., None]
    return ramp * _luma_neutral(rng, 90.0)


def _blobs(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Soft Gaussian blobs of random hue, position and size."""
    out = np.zeros(u.shape + (3,), dtype=np.float32)
    for _ in range(int(rng.integers(3, 7))):
        cx, cy = rng.uniform(0.0, 1.0, size=2)
        sigma = rng.uniform(0.05, 0.2)
        weight = np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2.0 * sigma**2))[..., None]
        out += weight * _luma_neutral(rng, 50.0)
    return out


def _shapes(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Hard-edged ellipses, rectangles and polygons of random hue, as a per-pixel colour offset."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    count = int(rng.integers(5, 10))
    for index in range(1, count + 1):
        kind = int(rng.integers(3))
        cx, cy = rng.uniform(0.0, 1.0, size=2)
        rx, ry = rng.uniform(0.05, 0.25, size=2)
        box = ((cx - rx) * width, (cy - ry) * height, (cx + rx) * width, (cy + ry) * height)
        if kind == 0:
            draw.ellipse(box, fill=index)
        elif kind == 1:
            draw.rectangle(box, fill=index)
        else:
            angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, size=int(rng.integers(3, 7))))
            draw.polygon(
                [(float((cx + rx * np.cos(a)) * width), float((cy + ry * np.sin(a)) * height)) for a in angles],
                fill=index,
            )
    palette = np.zeros((count + 1, 3), dtype=np.float32)  # index 0 = background, no offset
    for index in range(1, count + 1):
        palette[index] = _luma_neutral(rng, 70.0)
    return palette[np.asarray(mask)]
