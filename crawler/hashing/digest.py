"""Hash one response body in memory: cryptographic digests plus the perceptual hashes hash lists use.

Pure functions, called from a thread pool off the reactor: no module state is written, nothing touches the
disk (a body that may be abusive material is never written anywhere), and Pillow's process-wide settings
(``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``, warning filters) are left alone. The
decompression-bomb guard is our own pixel-count check, made on the lazily opened header before any pixel is
decoded.

Failures are values: a body that is not an image, or an image that cannot be decoded, still gets its
cryptographic digests, and ``Digest.decode_error`` says why the perceptual ones are missing.

Every image is decoded once and each of its rows read once (``crawler.hashing.kernels``): pHash and dHash
are imagehash's, bit for bit (Pillow's luma and LANCZOS resize reproduced exactly), and PDQ is Meta's
algorithm with the 512-px thumbnail folded into the filter. ``algorithms`` names what to compute, so a crawl
that needs only some hashes pays only for those.

PDQ follows Meta's reference implementations and is checked against their published hashes in the tests:
an image larger than 512 pixels a side is seen as shrunk to fit 512x512, as Meta's pure-Python hasher does
(``img.thumbnail((512, 512))``, bicubic; the C++ ``pdqHash256FromFile`` also resizes to 512x512 first), its
pixels are those of ``img.convert("RGB")`` like that hasher's, and the hash is written as hex most-significant
bit first, as ``Hash256`` prints it (and as python-threatexchange writes pdqhash's bit vector).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import time
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pyarrow
import scipy.fftpack
import simplejpeg
from PIL import Image

from crawler.hashing import kernels
from crawler.hashing.budget import PixelBudget
from crawler.hashing.pdq import MIN_HASHABLE_DIM, pdq_from_block, pdq_hex, thumbnail_size

logger = logging.getLogger(__name__)

# Stable names: they end up in stored events and hash-list columns, so never rename them.
ALGORITHMS: tuple[str, ...] = ("md5", "sha1", "sha256", "phash", "dhash", "pdq")
PERCEPTUAL: tuple[str, ...] = ("phash", "dhash", "pdq")
DIGESTS: tuple[str, ...] = ("md5", "sha1", "sha256")

# Bodies whose header announces more pixels than this are not decoded. 48 megapixels is an 8000x6000 photo
# (what 48 MP phone cameras write; an 8K frame is 33 MP) and bounds one image's decode to ~275 MiB (6 bytes an
# RGB pixel at the peak, below), which beside a crawl process's own ~290 MiB and its body budget keeps the
# process under the 700 MiB that docs/security.md states (64 M, ~370 MiB a decode, did not: 730 MiB with every
# hostile answer at once). Heavier modes and formats get fewer pixels (``pixel_limit``). Pillow has its own
# guard inside Image.open, before we see the size: a DecompressionBombWarning above ~89 MP and a
# DecompressionBombError above ~179 MP (so a max_pixels above that is capped by Pillow). We neither change its
# limit nor wrap the call in warnings.catch_warnings(): that swaps the process-wide filter list and is
# documented as not thread-safe, and this runs in a thread pool. The warning goes through the application's
# filters; if they turn it into an error, it is caught below like any other decode failure. Either way such
# bodies are never decoded.
DEFAULT_MAX_PIXELS = 48_000_000

# What decoding and hashing one image needs at its peak, in bytes a pixel, by mode: Pillow's image (4 bytes a
# pixel for RGB, kept as RGBX), the copy converted to RGB for modes that need one, the 8-bit luma and its
# transpose. Measured on 64-megapixel images with Pillow 13 (VmHWM of a fresh process, each image in one
# memory block as the crawl allocates them: middlewares/hashing.py), and again on 16-megapixel ones (within
# 0.2 of these, except where they are higher, never lower); unlisted modes get the costliest. Measured before
# pHash/dHash made their luma a row at a time from 2 megapixels on (LUMA_BY_ROWS_PIXELS), which took 2 bytes a
# pixel off every mode but L (1 byte there): the largest RGB image now peaks at 4 (tests/test_memory.py). The
# table is kept as it was, an upper bound, so the limits and the decode budget's units stay what they were.
# Some formats decode into their codec's own buffer first and add to it; a progressive JPEG keeps libjpeg's
# coefficients for the whole image while it decodes (an RGB one peaks at 10 then).
_PEAK_BYTES_PER_PIXEL = {"L": 3, "RGB": 6, "1": 8, "P": 8, "I;16": 9, "I": 11, "F": 11, "LA": 11, "RGBA": 11,
                         "CMYK": 13}
_UNLISTED_MODE_BYTES_PER_PIXEL = 13
_CODEC_EXTRA_BYTES_PER_PIXEL = {"WEBP": 10, "JPEG2000": 14, "AVIF": 4}
_PROGRESSIVE_JPEG_BYTES_PER_PIXEL = 10
RGB_PEAK_BYTES_PER_PIXEL = _PEAK_BYTES_PER_PIXEL["RGB"]

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
    md5: str | None
    sha1: str | None
    sha256: str | None
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
    #: The PDQ hashes of the image's 8 rotations and flips in ``PDQ_DIHEDRAL_ORDER`` (the first is ``pdq``),
    #: when asked for with ``pdq_dihedral=True``.
    pdq_dihedral: tuple[str, ...] | None = None

    @property
    def decodable(self) -> bool:
        """True when the pixels were decoded (and the perceptual hashes asked for computed)."""
        return self.width is not None and self.decode_error is None


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
    pdq_dihedral: tuple[str, ...] | None = None


def hash_bytes(
    body: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    perceptual: bool = True,
    algorithms: Collection[str] = ALGORITHMS,
    pdq_dihedral: bool = False,
    decode_budget: PixelBudget | None = None,
) -> Digest:
    """Hash ``body`` in memory: the ``algorithms`` asked for (``None`` for the others). Without phash, dhash
    or pdq among them only the image header is read (format and size; ``decodable`` then means "the header
    parses"); with ``perceptual=False`` not even that. ``pdq_dihedral`` adds the PDQ hashes of the 8
    rotations and flips (needs ``pdq``). With a ``decode_budget`` (shared by the threads that call this),
    the pixels are decoded only once the budget holds ``decode_cost`` of them."""
    started = time.thread_time()  # CPU of this thread: wall time would count waits for the GIL
    wanted = frozenset(algorithms)
    unknown = wanted - set(ALGORITHMS)
    if unknown:
        raise ValueError(f"unknown hash algorithms: {', '.join(sorted(unknown))}")
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest() if "md5" in wanted else None
    sha1 = hashlib.sha1(body, usedforsecurity=False).hexdigest() if "sha1" in wanted else None
    sha256 = hashlib.sha256(body).hexdigest() if "sha256" in wanted else None
    magic = has_image_magic(body)
    asked = wanted & set(PERCEPTUAL)
    # Without a perceptual hash nothing needs the pixels: the header alone says what the body is (its
    # format and size), which is what tells an image from an error page; a body cut short still passes.
    result = (_decode_and_hash(body, max_pixels, asked, pdq_dihedral and "pdq" in asked, decode_budget)
              if perceptual else _Perceptual())
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
        pdq_dihedral=result.pdq_dihedral,
    )


def parse_algorithms(names: Collection[str]) -> tuple[str, ...]:
    """``--hashes`` names, normalised and deduplicated in the given order; ValueError naming what is wrong."""
    chosen = tuple(dict.fromkeys(name.strip().lower() for name in names if name.strip()))
    unknown = [name for name in chosen if name not in ALGORITHMS]
    if unknown or not chosen:
        raise ValueError(f"--hashes: expected some of {','.join(ALGORITHMS)}, got {','.join(names) or 'nothing'!r}")
    return chosen


def hash_file(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    perceptual: bool = True,
    algorithms: Collection[str] = ALGORITHMS,
) -> Digest:
    """Hash a local file exactly as a downloaded body would be (for ``refwatch hash``)."""
    with open(path, "rb") as handle:
        body = handle.read()
    return hash_bytes(body, max_pixels=max_pixels, perceptual=perceptual, algorithms=algorithms)


#: The order of ``pdq_dihedral_hashes``: each name is the transformation of the image whose PDQ hash sits at
#: that position, named as Meta's dihedral reference images are (pdq/data/reg-test-input/dih/bridge-N-*.jpg,
#: N = position + 1) and as pdqhash.compute_dihedral returns them (C++ pdqDihedralHash256esFromFloatLuma).
PDQ_DIHEDRAL_ORDER: tuple[str, ...] = (
    "original", "rotate-90", "rotate-180", "rotate-270", "flip-x", "flip-y", "flip-plus-1", "flip-minus-1",
)


def pdq_dihedral_hashes(image: bytes | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[str]:
    """PDQ hashes of the 8 rotations and flips of ``image`` (a body or a decoded image), in PDQ_DIHEDRAL_ORDER.

    The first is the plain PDQ hash (``hash_bytes(body).pdq``, bit for bit); the others are what PDQ would give
    the rotated or flipped picture, computed from the same DCT in one pass as Meta's C++ code does
    (``pdqDihedralHash256esFromFloatLuma``), so matching them against a list finds rotated and mirrored
    copies. A body is decoded exactly as ``hash_bytes`` decodes it (same pixel limit, first frame, no EXIF
    transpose); one that cannot be decoded raises ValueError with the reason (never its bytes).
    """
    if isinstance(image, Image.Image):
        hashes = _hash_image(image, frozenset({"pdq"}), True)
        assert hashes.pdq_dihedral is not None
        return list(hashes.pdq_dihedral)
    result = _decode_and_hash(image, max_pixels, frozenset({"pdq"}), True)
    if result.pdq_dihedral is None:
        raise ValueError(f"cannot hash body of {len(image)} bytes: {result.decode_error}")
    return list(result.pdq_dihedral)


def hamming_distance(a_hex: str, b_hex: str) -> int:
    """Number of differing bits between two hex hashes of the same length."""
    if len(a_hex) != len(b_hex):
        raise ValueError(f"hashes differ in length: {len(a_hex)} and {len(b_hex)} hex digits")
    try:
        return (int(a_hex, 16) ^ int(b_hex, 16)).bit_count()
    except ValueError:
        raise ValueError(f"not a hex hash: {a_hex!r} or {b_hex!r}") from None


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


def decode_cost(img: Image.Image) -> int:
    """What decoding ``img`` (opened, not loaded) costs a ``PixelBudget``: its pixels weighted by the memory
    its mode and format need at the peak, in pixels of an RGB image (6 bytes each), rounded up."""
    return -(-img.width * img.height * _peak_bytes_per_pixel(img) // RGB_PEAK_BYTES_PER_PIXEL)


def pixel_limit(img: Image.Image, max_pixels: int) -> int:
    """The most pixels ``img`` (opened, not loaded) may have: ``max_pixels`` for an RGB image or a lighter one,
    fewer in proportion for a heavier mode or format, so that no image's ``decode_cost`` passes ``max_pixels``.

    The memory of one decode is then bounded by the largest RGB image's whatever the format: before, a
    64-megapixel RGBA WebP or JPEG 2000 was legal and was decoded alone, at 1-1.2 GiB.
    """
    return min(max_pixels, max_pixels * RGB_PEAK_BYTES_PER_PIXEL // _peak_bytes_per_pixel(img))


def _peak_bytes_per_pixel(img: Image.Image) -> int:
    per_pixel = _PEAK_BYTES_PER_PIXEL.get(img.mode, _UNLISTED_MODE_BYTES_PER_PIXEL)
    per_pixel += _CODEC_EXTRA_BYTES_PER_PIXEL.get(img.format or "", 0)
    if _progressive_jpeg(img):
        per_pixel = max(per_pixel, _PROGRESSIVE_JPEG_BYTES_PER_PIXEL)
    return per_pixel


def _progressive_jpeg(img: Image.Image) -> bool:
    return img.format == "JPEG" and bool(img.info.get("progressive"))


def _over_limit(img: Image.Image, max_pixels: int) -> str | None:
    """Why ``img`` is not decoded, or ``None`` when it may be: too many pixels for any image, or for its mode
    and format (``pixel_limit``)."""
    pixels = img.width * img.height
    if pixels > max_pixels:
        return f"image has {pixels} pixels, over the limit of {max_pixels}"
    limit = pixel_limit(img, max_pixels)
    if pixels <= limit:
        return None
    kind = f"{'progressive ' if _progressive_jpeg(img) else ''}{img.format} {img.mode}"
    return (f"image has {pixels} pixels, over the limit of {limit} for {kind}, which needs "
            f"{_peak_bytes_per_pixel(img)} bytes a pixel to decode (RGB: {RGB_PEAK_BYTES_PER_PIXEL} bytes, "
            f"{max_pixels} pixels)")


def _decode_and_hash(body: bytes, max_pixels: int, asked: frozenset[str], dihedral: bool,
                     budget: PixelBudget | None = None) -> _Perceptual:
    """Decode the first frame and compute the ``asked`` perceptual hashes; any failure becomes ``decode_error``."""
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
            too_many = _over_limit(img, max_pixels)
            if too_many is not None:
                return _Perceptual(width=width, height=height, image_format=image_format, decode_error=too_many)
            if not asked:
                return _Perceptual(width=width, height=height, image_format=image_format)
            # Image.open leaves an animated image on its first frame, which is the one we hash. EXIF
            # orientation is deliberately NOT applied: Meta's reference hashers hash the stored pixels
            # (neither the C++ CImg loader nor the pure-Python hasher transposes), so the hash lists we match
            # against were made that way; a transposed photo would drift away from its listed hash.
            # A truncated body raises here because ImageFile.LOAD_TRUNCATED_IMAGES stays False.
            # The size is known from the header: wait until the budget holds this image's pixels, and give
            # them back only once they are freed (closing the image drops them, also when decoding failed).
            with budget.reserve(decode_cost(img)) if budget is not None else contextlib.nullcontext():
                try:
                    pixels = _jpeg_pixels(body, img)
                    if pixels is None:
                        img.load()
                    hashes = _hash_image(img, asked, dihedral, pixels)
                finally:
                    img.close()
    except Exception as exc:  # noqa: BLE001 - see the comment above
        reason = _describe(exc)
        logger.debug("cannot decode body of %d bytes: %s", len(body), reason)
        return _Perceptual(width=width, height=height, image_format=image_format, decode_error=reason)
    return _Perceptual(
        phash=hashes.phash,
        dhash=hashes.dhash,
        pdq=hashes.pdq,
        pdq_quality=hashes.pdq_quality,
        width=width,
        height=height,
        image_format=image_format,
        pdq_dihedral=hashes.pdq_dihedral,
    )


def _hash_image(img: Image.Image, asked: frozenset[str], dihedral: bool,
                rgb_pixels: tuple[np.ndarray, int] | None = None) -> _Perceptual:
    """pHash and dHash exactly as imagehash computes them and PDQ as Meta's reference does, from one read
    of the image's 8-bit luma. ``rgb_pixels`` are the pixels of an RGB image decoded elsewhere
    (``_jpeg_pixels``), the image itself then left unloaded; otherwise they are read from ``img``.

    imagehash hashes ``img.convert("L")`` (8-bit luma); PDQ hashes the float luma of ``img.convert("RGB")``
    (``(299 R + 587 G + 114 B) / 1000`` in float32, Pillow's ``convert("F")``: the reference's value to the
    last bit or one unit in it), made a row at a time inside the PDQ kernel.
    """
    want_imagehash = bool(asked & {"phash", "dhash"})
    want_pdq = "pdq" in asked
    cols_thumb, rows_thumb = thumbnail_size(img.width, img.height)
    pdq_hashable = want_pdq and min(rows_thumb, cols_thumb) >= MIN_HASHABLE_DIM
    small = tiny = block = None
    pixels = rgb_pixels
    if pixels is None and (pdq_hashable or img.mode == "RGB"):
        pixels = _pixels(img if img.mode in ("RGB", "L") else _rgb(img))
    if want_imagehash and img.width * img.height >= LUMA_BY_ROWS_PIXELS:
        flat, bands = (pixels if img.mode == "RGB" else _pixels(img) if img.mode == "L" else _pixels(_grey(img)))
        small, tiny = kernels.imagehash_arrays_by_rows(flat, bands, img.height, img.width)
    elif want_imagehash:
        grey = (kernels.rgb_grey(*pixels, img.height, img.width) if img.mode == "RGB"
                else np.asarray(img) if img.mode == "L" else np.asarray(_grey(img)))
        both_ways = kernels.needs_transposed(img.width, img.height)
        small, tiny = kernels.imagehash_arrays(grey, kernels.transposed(grey) if both_ways else _NO_ARRAY)
    if pdq_hashable:
        flat, bands = pixels
        block = kernels.pdq_block(flat, bands, img.height, img.width, rows_thumb, cols_thumb)
    phash = _phash_hex(small) if "phash" in asked else None
    dhash = _dhash_hex(tiny) if "dhash" in asked else None
    pdq = quality = None
    pdq_all: tuple[str, ...] | None = None
    if want_pdq:
        if pdq_hashable:
            bits, quality = pdq_from_block(block, dihedral)
            hexes = tuple(pdq_hex(b) for b in bits)
        else:  # too small to filter: the reference's cleared hash and quality 0
            hexes, quality = ("0" * 64,) * (8 if dihedral else 1), 0
        pdq = hexes[0]
        pdq_all = hexes if dihedral else None
    return _Perceptual(phash=phash, dhash=dhash, pdq=pdq, pdq_quality=quality, pdq_dihedral=pdq_all)


#: From this many pixels on, pHash's and dHash's luma is made a row at a time (``imagehash_arrays_by_rows``):
#: no whole luma image and transposed copy (2 bytes a pixel, 92 MiB for a 48-megapixel image) at about the
#: same speed (0.9-1.1x from 1 megapixel on); below it, the whole-image kernels are 10-15% faster.
LUMA_BY_ROWS_PIXELS = 2_000_000

_NO_ARRAY = np.zeros((0, 0), dtype=np.uint8)
_NO_ARRAY.flags.writeable = False  # the same numba type as np.asarray of an image: one compiled variant


def _jpeg_pixels(body: bytes, img: Image.Image) -> tuple[np.ndarray, int] | None:
    """The pixels of a colour JPEG decoded by simplejpeg, flat, 4 bytes a pixel (RGBX, Pillow's own layout,
    which the kernels read fastest); ``None`` for anything else, which Pillow decodes.

    Both are libjpeg-turbo with its defaults (accurate integer DCT, fancy upsampling), so the pixels are
    Pillow's (tests/test_hashing_fast.py checks JPEGs of every layout). simplejpeg decodes straight into one
    array, without Pillow's block reads, row unpacking and export, and without the GIL: measured over the
    benchmark corpus's JPEGs, 8% less CPU for the whole hashing (docs/performance.md). Only what Pillow would
    decode to RGB comes here (greyscale, CMYK and MPO stay with Pillow), and a JPEG that libjpeg only warns
    about (``strict``: a truncated or damaged stream) goes back to Pillow, so every odd file gets Pillow's
    verdict, as before.
    """
    if img.format != "JPEG" or img.mode != "RGB":
        return None
    try:
        rgbx = simplejpeg.decode_jpeg(body, colorspace="RGBX", strict=True)
    except ValueError:
        return None
    if rgbx.shape != (img.height, img.width, 4):
        return None
    flat = rgbx.reshape(-1)
    flat.flags.writeable = False  # the kernels' one compiled variant takes read-only pixels, as Pillow's view
    return flat, 4


def _pixels(img: Image.Image) -> tuple[np.ndarray, int]:
    """The pixels of an RGB or L image as a flat read-only uint8 array and the bytes per pixel.

    Read where Pillow keeps them: its Arrow export is a zero-copy view (RGB as 4-byte RGBX); an image too
    large for one memory block is copied out instead.
    """
    try:
        flat = np.frombuffer(pyarrow.array(img).buffers()[-1], dtype=np.uint8)
        return flat, 4 if img.mode == "RGB" else 1
    except ValueError:  # "Image rows are not contiguous in memory": more than one block
        return np.asarray(img).reshape(-1), 3 if img.mode == "RGB" else 1


def _grey(img: Image.Image) -> Image.Image:
    """``img.convert("L")`` as imagehash does it; modes Pillow cannot take to L directly go through RGB."""
    try:
        return img.convert("L")
    except ValueError:  # LAB
        return _rgb(img).convert("L")


def _phash_hex(small: np.ndarray) -> str:
    """imagehash.phash from its 32x32 image: 2-D DCT (scipy, as imagehash), the 8x8 low band over its median.

    The median is ``np.median``'s to the bit (the mean of the 32nd and 33rd of the 64 values, in float64),
    without its generic machinery: 80 -> 32 us a hash."""
    dct = scipy.fftpack.dct(scipy.fftpack.dct(small, axis=0), axis=1)
    low = dct[:8, :8]
    ordered = np.sort(low, axis=None)
    return np.packbits(low > (ordered[31] + ordered[32]) / 2).tobytes().hex()


def _dhash_hex(tiny: np.ndarray) -> str:
    """imagehash.dhash from its 8x9 image: each pixel brighter than its left neighbour."""
    return np.packbits(tiny[:, 1:] > tiny[:, :-1]).tobytes().hex()


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


def _describe(exc: BaseException) -> str:
    """Short, bounded reason: exception class and message, without object reprs."""
    message = _ADDRESS.sub("", str(exc))
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."
