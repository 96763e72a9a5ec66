"""Hash one response body in memory: cryptographic digests plus the perceptual hashes hash lists use.

Pure functions, called from a thread pool off the reactor: no module state is written, nothing touches the
disk (a body that may be abusive material is never written anywhere), and Pillow's process-wide settings
(``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``, warning filters) are left alone. The
decompression-bomb guard is our own pixel-count check, made on the lazily opened header before any pixel is
decoded.

Failures are values: a body that is not an image, or an image that cannot be decoded, still gets its
cryptographic digests, and ``Digest.decode_error`` says why the perceptual ones are missing.

PDQ follows Meta's reference implementations and is checked against their published hashes in the tests:
an image larger than 512 pixels a side is first shrunk to fit 512x512, as Meta's pure-Python hasher does
(``img.thumbnail((512, 512))``, bicubic; the C++ ``pdqHash256FromFile`` also resizes to 512x512 first), it is
converted with ``img.convert("RGB")`` like that hasher, and the hash is written as hex most-significant bit
first, as ``Hash256`` prints it (and as python-threatexchange writes pdqhash's bit vector).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import time
from dataclasses import dataclass

import imagehash
import numpy as np
import pdqhash
from PIL import Image

logger = logging.getLogger(__name__)

# Stable names: they end up in stored events and hash-list columns, so never rename them.
ALGORITHMS: tuple[str, ...] = ("md5", "sha1", "sha256", "phash", "dhash", "pdq")
PERCEPTUAL: tuple[str, ...] = ("phash", "dhash", "pdq")

# Bodies whose header announces more pixels than this are not decoded. 64 megapixels covers every camera
# photo (a 48 MP phone, an 8K frame at 33 MP) while bounding a worker's decode to about 4 bytes a pixel
# (~260 MB for an RGB image plus its greyscale copy). Pillow has its own guard inside Image.open, before we
# see the size: a DecompressionBombWarning above ~89 MP and a DecompressionBombError above ~179 MP (so a
# max_pixels above that is capped by Pillow). We neither change its limit nor wrap the call in
# warnings.catch_warnings(): that swaps the process-wide filter list and is documented as not thread-safe,
# and this runs in a thread pool. The warning goes through the application's filters; if they turn it into
# an error, it is caught below like any other decode failure. Either way such bodies are never decoded.
DEFAULT_MAX_PIXELS = 64_000_000

# Meta's reference hashers shrink larger images to fit this box before the PDQ filter (see module doc).
PDQ_MAX_DIMENSION = 512

_MAX_ERROR_CHARS = 200
# Object reprs carry memory addresses ("<_io.BytesIO object at 0x7f...>"): drop them so equal causes give
# equal strings and error counters stay bounded.
_ADDRESS = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>|\s+at 0x[0-9a-fA-F]+")
_ISO_BMFF_IMAGE_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"jxl ")
_BMP_DIB_HEADER_SIZES = (12, 16, 40, 52, 56, 64, 108, 124)


@dataclass(frozen=True, slots=True)
class Digest:
    """Everything refwatch records about one body; ``None`` means "not computed" (never ``""``).

    ``decode_error`` is set whenever perceptual hashing was asked for and failed, for non-image bodies too
    (the reason is never lost); ``looks_like_image`` is what separates a broken image from something that
    never was one.
    """

    size: int
    md5: str
    sha1: str
    sha256: str
    phash: str | None
    dhash: str | None
    pdq: str | None
    pdq_quality: int | None
    width: int | None
    height: int | None
    image_format: str | None
    decode_error: str | None
    looks_like_image: bool
    hash_seconds: float

    @property
    def decodable(self) -> bool:
        """True when the pixels were decoded and the perceptual hashes computed."""
        return self.phash is not None


@dataclass(frozen=True, slots=True)
class _Perceptual:
    """What decoding produced; internal so ``hash_bytes`` stays one flat constructor call."""

    phash: str | None = None
    dhash: str | None = None
    pdq: str | None = None
    pdq_quality: int | None = None
    width: int | None = None
    height: int | None = None
    image_format: str | None = None
    decode_error: str | None = None


def hash_bytes(body: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, perceptual: bool = True) -> Digest:
    """Hash ``body`` in memory; with ``perceptual=False`` only the cryptographic digests (no decoding)."""
    started = time.thread_time()  # CPU of this thread: wall time would count waits for the GIL
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    sha1 = hashlib.sha1(body, usedforsecurity=False).hexdigest()
    sha256 = hashlib.sha256(body).hexdigest()
    magic = has_image_magic(body)
    result = _decode_and_hash(body, max_pixels) if perceptual else _Perceptual()
    return Digest(
        size=len(body),
        md5=md5,
        sha1=sha1,
        sha256=sha256,
        phash=result.phash,
        dhash=result.dhash,
        pdq=result.pdq,
        pdq_quality=result.pdq_quality,
        width=result.width,
        height=result.height,
        image_format=result.image_format,
        decode_error=result.decode_error,
        # Pillow identifying a format counts too: a few formats (TGA, PCX...) have no magic at all.
        looks_like_image=magic or result.image_format is not None,
        hash_seconds=time.thread_time() - started,
    )


def hash_file(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS, perceptual: bool = True
) -> Digest:
    """Hash a local file exactly as a downloaded body would be (for ``refwatch hash``)."""
    with open(path, "rb") as handle:
        body = handle.read()
    return hash_bytes(body, max_pixels=max_pixels, perceptual=perceptual)


#: The order of ``pdq_dihedral_hashes``: each name is the transformation of the image whose PDQ hash sits at
#: that position, named as Meta's dihedral reference images are (pdq/data/reg-test-input/dih/bridge-N-*.jpg,
#: N = position + 1) and as pdqhash.compute_dihedral returns them (C++ pdqDihedralHash256esFromFloatLuma).
PDQ_DIHEDRAL_ORDER: tuple[str, ...] = (
    "original", "rotate-90", "rotate-180", "rotate-270", "flip-x", "flip-y", "flip-plus-1", "flip-minus-1",
)


def pdq_dihedral_hashes(image: bytes | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[str]:
    """PDQ hashes of the 8 rotations and flips of ``image`` (a body or a decoded image), in PDQ_DIHEDRAL_ORDER.

    The first is the plain PDQ hash (``hash_bytes(body).pdq``, bit for bit); the others are what PDQ would give
    the rotated or flipped picture, computed from the same DCT in one pass by Meta's C++ code (pdqhash's
    ``compute_dihedral``), so matching them against a list finds rotated and mirrored copies. The quality is
    the plain hash's. A body is decoded exactly as ``hash_bytes`` decodes it (same pixel limit, first frame,
    no EXIF transpose); one that cannot be decoded raises ValueError with the reason (never its bytes).
    """
    if isinstance(image, Image.Image):
        vectors, _ = pdqhash.compute_dihedral(_pdq_pixels(_rgb(image)))
        return [pdq_hex(bits) for bits in vectors]
    try:
        with Image.open(io.BytesIO(image)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ValueError(f"image has {width * height} pixels, over the limit of {max_pixels}")
            img.load()
            vectors, _ = pdqhash.compute_dihedral(_pdq_pixels(_rgb(img)))
    except Exception as exc:  # noqa: BLE001 - untrusted bytes, as in _decode_and_hash
        raise ValueError(f"cannot hash body of {len(image)} bytes: {_describe(exc)}") from None
    return [pdq_hex(bits) for bits in vectors]


def hamming_distance(a_hex: str, b_hex: str) -> int:
    """Number of differing bits between two hex hashes of the same length."""
    if len(a_hex) != len(b_hex):
        raise ValueError(f"hashes differ in length: {len(a_hex)} and {len(b_hex)} hex digits")
    try:
        return (int(a_hex, 16) ^ int(b_hex, 16)).bit_count()
    except ValueError:
        raise ValueError(f"not a hex hash: {a_hex!r} or {b_hex!r}") from None


def pdq_hex(bits: np.ndarray) -> str:
    """256 0/1 values as pdqhash returns them, as Meta's hex (first value = most significant bit)."""
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()


def has_image_magic(body: bytes) -> bool:
    """True when ``body`` starts with the signature of a raster image format browsers or datasets use."""
    head = body[:32]
    if head.startswith(
        (
            b"\xff\xd8\xff",  # JPEG
            b"\x89PNG\r\n\x1a\n",  # PNG, APNG
            b"GIF87a",
            b"GIF89a",
            b"II*\x00",  # TIFF little-endian (and most camera raw)
            b"MM\x00*",  # TIFF big-endian
            b"II+\x00",  # BigTIFF
            b"MM\x00+",
            b"\x00\x00\x00\x0cjP  \r\n\x87\n",  # JPEG 2000 (JP2 box)
            b"\xff\x4f\xff\x51",  # JPEG 2000 codestream
            b"\xff\x0a",  # JPEG XL codestream
            b"\x00\x00\x00\x0cJXL \r\n\x87\n",  # JPEG XL container
            b"8BPS",  # Photoshop
            b"qoif",  # QOI
        )
    ):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    if head[4:8] == b"ftyp" and head[8:12] in _ISO_BMFF_IMAGE_BRANDS:  # AVIF, HEIF
        return True
    if head[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00") and len(head) >= 6 and head[4:6] != b"\x00\x00":
        return True  # ICO / CUR with at least one entry
    # "BM" alone is too weak (text can start with it): also require a known DIB header size.
    return head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_DIB_HEADER_SIZES


def _decode_and_hash(body: bytes, max_pixels: int) -> _Perceptual:
    """Decode the first frame and compute pHash, dHash and PDQ; any failure becomes ``decode_error``."""
    if not body:
        return _Perceptual(decode_error="empty body")
    image_format: str | None = None
    width: int | None = None
    height: int | None = None
    try:
        # The body is untrusted, and Pillow's decoders raise a zoo of exception types on hostile input
        # (OSError, SyntaxError, ValueError, struct.error, EOFError, DecompressionBombError/Warning when the
        # application turned warnings into errors...): all of them are a decode outcome, none a crash.
        with Image.open(io.BytesIO(body)) as img:
            image_format = img.format
            width, height = img.size
            pixels = width * height
            if pixels > max_pixels:
                return _Perceptual(
                    width=width,
                    height=height,
                    image_format=image_format,
                    decode_error=f"image has {pixels} pixels, over the limit of {max_pixels}",
                )
            # Image.open leaves an animated image on its first frame, which is the one we hash. EXIF
            # orientation is deliberately NOT applied: Meta's reference hashers hash the stored pixels
            # (neither the C++ CImg loader nor the pure-Python hasher transposes), so the hash lists we match
            # against were made that way; a transposed photo would drift away from its listed hash.
            # A truncated body raises here because ImageFile.LOAD_TRUNCATED_IMAGES stays False.
            img.load()
            phash, dhash, pdq, quality = _perceptual_hashes(img)
    except Exception as exc:  # noqa: BLE001 - see the comment above
        reason = _describe(exc)
        logger.debug("cannot decode body of %d bytes: %s", len(body), reason)
        return _Perceptual(width=width, height=height, image_format=image_format, decode_error=reason)
    return _Perceptual(
        phash=phash,
        dhash=dhash,
        pdq=pdq,
        pdq_quality=quality,
        width=width,
        height=height,
        image_format=image_format,
    )


def _perceptual_hashes(img: Image.Image) -> tuple[str, str, str, int]:
    """pHash and dHash exactly as imagehash computes them, and PDQ as Meta's reference does."""
    # imagehash starts with image.convert("L"); converting once here and handing it the L image gives
    # bit-identical results (convert("L") of an L image is a copy) without converting twice.
    rgb = _rgb(img)
    try:
        grey = img.convert("L")
    except ValueError:  # modes Pillow cannot take to L directly (LAB): go through RGB
        grey = rgb.convert("L")
    phash = str(imagehash.phash(grey))
    dhash = str(imagehash.dhash(grey))
    pdq, quality = _pdq(rgb)
    return phash, dhash, pdq, quality


def _rgb(img: Image.Image) -> Image.Image:
    """The RGB picture PDQ hashes: ``img.convert("RGB")`` as Meta's hasher does, except for 16-bit grey.

    Pillow's conversion clips 16-bit samples at 255, which turns a 16-bit greyscale PNG or TIFF into a
    white page (imagehash sees that page, and we keep its hashes exact); PDQ gets the top 8 bits instead,
    which is what viewers show. RGBA/LA lose alpha without compositing, as in Meta's reference.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16"):
        wide = np.asarray(img)
        return Image.fromarray((wide >> 8).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def _pdq(rgb: Image.Image) -> tuple[str, int]:
    """PDQ hex and quality of an RGB image, shrunk first like Meta's reference hashers."""
    bits, quality = pdqhash.compute(_pdq_pixels(rgb))
    return pdq_hex(bits), int(quality)


def _pdq_pixels(rgb: Image.Image) -> np.ndarray:
    """The RGB pixels PDQ hashes: images over 512 px a side shrunk to fit 512x512 first."""
    if rgb.width > PDQ_MAX_DIMENSION or rgb.height > PDQ_MAX_DIMENSION:
        # Same as the reference's img.thumbnail((512, 512)) (bicubic, reducing_gap=2.0) but without
        # mutating the caller's image; it also spares the PDQ box filter a full-resolution pass.
        scale = PDQ_MAX_DIMENSION / max(rgb.width, rgb.height)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    return np.asarray(rgb)


def _describe(exc: BaseException) -> str:
    """Short, bounded reason: exception class and message, without object reprs."""
    message = _ADDRESS.sub("", str(exc))
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."
