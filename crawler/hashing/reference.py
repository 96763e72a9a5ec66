"""The slow, obviously-right way to hash an image: imagehash and pdqhash called as their authors intend.

refwatch's own path (``crawler.hashing.digest``) reads each image once through numba kernels; this module is
what it is measured against, in the tests (faithfulness bounds) and in ``bench/hash_bench.py`` (speed). It
is the code refwatch used before the kernels: pHash and dHash are ``imagehash.phash``/``imagehash.dhash`` of
``img.convert("L")``; PDQ is ``pdqhash.compute`` of the RGB image shrunk to fit 512x512 (bicubic), as Meta's
reference hashers do. Nothing in the crawl imports it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import imagehash
import numpy as np
import pdqhash
from PIL import Image

from crawler.hashing.pdq import THUMBNAIL_SIDE


@dataclass(frozen=True, slots=True)
class ReferenceHashes:
    phash: str
    dhash: str
    pdq: str
    pdq_quality: int


def reference_hashes(body: bytes | Image.Image) -> ReferenceHashes:
    """pHash, dHash (imagehash) and PDQ with its quality (pdqhash) of an encoded body or a decoded image."""
    if isinstance(body, Image.Image):
        return _hash(body)
    with Image.open(io.BytesIO(body)) as img:
        img.load()
        return _hash(img)


def reference_pdq_dihedral(img: Image.Image) -> list[str]:
    """pdqhash's 8 dihedral PDQ hashes (``compute_dihedral``) of the shrunk RGB image."""
    vectors, _ = pdqhash.compute_dihedral(pdq_pixels(img))
    return [pdqhash_hex(bits) for bits in vectors]


def _hash(img: Image.Image) -> ReferenceHashes:
    grey = img.convert("L")
    bits, quality = pdqhash.compute(pdq_pixels(img))
    return ReferenceHashes(phash=str(imagehash.phash(grey)), dhash=str(imagehash.dhash(grey)),
                           pdq=pdqhash_hex(bits), pdq_quality=int(quality))


def pdq_pixels(img: Image.Image) -> np.ndarray:
    """The RGB pixels Meta's hashers give PDQ: shrunk to fit 512x512 (bicubic, reducing_gap=2)."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    if rgb.width > THUMBNAIL_SIDE or rgb.height > THUMBNAIL_SIDE:
        scale = THUMBNAIL_SIDE / max(rgb.width, rgb.height)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    return np.asarray(rgb)


def pdqhash_hex(bits: np.ndarray) -> str:
    """pdqhash's 256-value vector as Meta's hex (first value = most significant bit)."""
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()
