"""The fast hashing path against the references it replaces: bit for bit where it claims to be, within the
measured bounds where it folds steps together.

* ``jarosz.pdq_exact_*`` (Meta's filter, literally) gives ``pdqhash``'s hash bit for bit on fixed arrays,
  dihedral hashes included: this pins the DCT, quality, median and rotation steps the crawl shares.
* ``kernels.imagehash_arrays`` gives Pillow's ``convert("L").resize(..., LANCZOS)`` bit for bit, in both
  pass orders Pillow picks, so pHash and dHash are imagehash's; so does ``imagehash_arrays_by_rows``, the
  large-image path that never holds a whole luma image.
* On a corpus of photo-like synthetic scenes (JPEG, PNG, WebP, 320-1024 px) ``hash_bytes`` gives imagehash's
  pHash and dHash exactly, and PDQ within a fraction of a bit of ``pdqhash`` on the 512-px thumbnail.
* ``algorithms`` computes only what is asked for.
"""

from __future__ import annotations

import io

import numpy as np
import pdqhash
import pytest
from PIL import Image

from crawler.hashing import kernels
from crawler.hashing.digest import ALGORITHMS, hamming_distance, hash_bytes, pdq_dihedral_hashes
from crawler.hashing.jarosz import pdq_exact_dihedral_rgb, pdq_exact_grey, pdq_exact_rgb
from crawler.hashing.pdq import pdq_hex
from crawler.hashing.reference import reference_hashes, reference_pdq_dihedral
from crawler.sample.scenes import scene_image

LANCZOS = Image.Resampling.LANCZOS


def _smooth_noise(rng: np.random.Generator, height: int, width: int, bands: int = 3) -> np.ndarray:
    """Photo-ish test pixels: a coarse random field upsampled, plus grain (pure noise would be unrealistic)."""
    coarse = rng.integers(0, 256, size=(max(2, height // 12), max(2, width // 12), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    img = np.clip(img + rng.integers(-12, 13, size=img.shape), 0, 255).astype(np.uint8)
    return img if bands == 3 else img[:, :, 0].copy()


def _pdqhash_hex(rgb: np.ndarray) -> tuple[str, int]:
    bits, quality = pdqhash.compute(rgb)
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex(), int(quality)


# --- the literal PDQ filter is pdqhash, bit for bit ------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (5, 5), (4, 9), (37, 100), (512, 512), (384, 512), (512, 333),
                                  (768, 1024), (200, 7), (65, 63), (128, 128)])
def test_exact_pdq_is_pdqhash_bit_for_bit(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(size))
    for _ in range(3):
        rgb = _smooth_noise(rng, *size)
        bits, quality = pdq_exact_rgb(rgb)
        assert (pdq_hex(bits), quality) == _pdqhash_hex(rgb)


def test_exact_pdq_of_grey_is_pdq_of_the_grey_picture() -> None:
    grey = _smooth_noise(np.random.default_rng(5), 300, 200, bands=1)
    bits, quality = pdq_exact_grey(grey)
    assert (pdq_hex(bits), quality) == _pdqhash_hex(np.repeat(grey[:, :, None], 3, axis=2))


@pytest.mark.parametrize("size", [(64, 64), (300, 512), (512, 200)])
def test_exact_dihedral_pdq_is_pdqhash_bit_for_bit(size: tuple[int, int]) -> None:
    rgb = _smooth_noise(np.random.default_rng(size[0]), *size)
    vectors, quality = pdqhash.compute_dihedral(rgb)
    ours, our_quality = pdq_exact_dihedral_rgb(rgb)
    assert our_quality == quality
    assert [pdq_hex(b) for b in ours] == [np.packbits(np.asarray(v, dtype=np.uint8)).tobytes().hex() for v in vectors]


# --- Pillow's LANCZOS, bit for bit ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(32, 32), (9, 8), (8, 9), (31, 33), (1, 1), (2, 50), (50, 2), (100, 100),
                                  (640, 480), (1023, 767), (1, 300), (300, 1), (3000, 20), (33, 32), (32, 600),
                                  (9, 100), (100, 8), (400, 900), (200, 1000)])
def test_imagehash_images_are_pillows_resize(size: tuple[int, int]) -> None:
    width, height = size
    grey = Image.fromarray(_smooth_noise(np.random.default_rng(width * 7 + height), height, width, bands=1))
    transposed = np.asarray(grey.transpose(Image.Transpose.TRANSPOSE))
    small, tiny = kernels.imagehash_arrays(np.asarray(grey), transposed)
    np.testing.assert_array_equal(small, np.asarray(grey.resize((32, 32), LANCZOS)))
    np.testing.assert_array_equal(tiny, np.asarray(grey.resize((9, 8), LANCZOS)))


@pytest.mark.parametrize("size", [(32, 32), (9, 8), (8, 9), (1, 1), (2, 50), (50, 2), (640, 480), (1023, 767),
                                  (1, 300), (300, 1), (3000, 20), (32, 600), (9, 100), (100, 8), (200, 1000),
                                  (70, 130), (700, 129)])
def test_imagehash_images_made_a_row_at_a_time_are_pillows_resize(size: tuple[int, int]) -> None:
    """The large-image path (no whole luma, strips of 64 rows transposed) from RGBX, RGB and grey pixels:
    sizes whose row counts are not multiples of the strip, and both pass orders."""
    width, height = size
    rgb = Image.fromarray(_smooth_noise(np.random.default_rng(width * 5 + height), height, width))
    grey = rgb.convert("L")
    expected = (np.asarray(grey.resize((32, 32), LANCZOS)), np.asarray(grey.resize((9, 8), LANCZOS)))
    rgbx = np.asarray(rgb.convert("RGBA")).copy()
    for flat, bands in ((rgbx.reshape(-1), 4), (np.asarray(rgb).reshape(-1), 3), (np.asarray(grey).reshape(-1), 1)):
        small, tiny = kernels.imagehash_arrays_by_rows(flat, bands, height, width)
        np.testing.assert_array_equal(small, expected[0])
        np.testing.assert_array_equal(tiny, expected[1])


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_large_images_hash_the_same_by_rows(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``hash_bytes`` gives the same hashes whichever luma path the image's size picks."""
    import crawler.hashing.digest as digest

    buffer = io.BytesIO()
    Image.fromarray(_smooth_noise(np.random.default_rng(3), 700, 1100)).convert(mode).save(buffer, "PNG")
    body = buffer.getvalue()
    monkeypatch.setattr(digest, "LUMA_BY_ROWS_PIXELS", 10**12)
    whole = hash_bytes(body)
    monkeypatch.setattr(digest, "LUMA_BY_ROWS_PIXELS", 1)
    by_rows = hash_bytes(body)
    assert whole.phash is not None and whole.dhash is not None and whole.pdq is not None
    assert (by_rows.phash, by_rows.dhash, by_rows.pdq) == (whole.phash, whole.dhash, whole.pdq)


def test_both_pass_orders_are_covered() -> None:
    """Pillow 13 runs the vertical pass first when the height shrinks much more than the width."""
    assert kernels.needs_transposed(640, 480) and not kernels.needs_transposed(200, 1000)


# --- the whole pipeline on photo-like images --------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> list[bytes]:
    bodies = []
    for seed in range(48):
        img, _ = scene_image(31_000 + seed, long_side=(320, 1024))
        fmt = ("JPEG", "JPEG", "JPEG", "JPEG", "PNG", "WEBP")[seed % 6]
        buffer = io.BytesIO()
        img.save(buffer, fmt, **({"quality": 88} if fmt != "PNG" else {}))
        bodies.append(buffer.getvalue())
    return bodies


def test_phash_and_dhash_are_imagehash_exactly_and_pdq_is_within_a_bit(corpus: list[bytes]) -> None:
    pdq_distances = []
    for body in corpus:
        ours, theirs = hash_bytes(body), reference_hashes(body)
        assert (ours.phash, ours.dhash) == (theirs.phash, theirs.dhash)
        pdq_distances.append(hamming_distance(ours.pdq or "", theirs.pdq))
        assert abs((ours.pdq_quality or 0) - theirs.pdq_quality) <= 1
    # measured: mean 0.18, max 2 over 100 scenes (the thumbnail's 8-bit rounding is not reproduced)
    assert np.mean(pdq_distances) <= 0.5 and max(pdq_distances) <= 4, pdq_distances


def test_dihedral_hashes_stay_within_a_bit_of_pdqhash(corpus: list[bytes]) -> None:
    for body in corpus[:12]:
        with Image.open(io.BytesIO(body)) as img:
            img.load()
            reference = reference_pdq_dihedral(img)
        ours = pdq_dihedral_hashes(body)
        assert ours[0] == hash_bytes(body).pdq
        assert max(hamming_distance(a, b) for a, b in zip(ours, reference, strict=True)) <= 4


def test_hash_bytes_computes_only_what_is_asked(corpus: list[bytes]) -> None:
    body = corpus[0]
    full = hash_bytes(body)
    only = hash_bytes(body, algorithms=("sha256", "pdq"))
    assert (only.md5, only.sha1, only.phash, only.dhash) == (None, None, None, None)
    assert (only.sha256, only.pdq, only.pdq_quality) == (full.sha256, full.pdq, full.pdq_quality)
    digests = hash_bytes(body, algorithms=("md5",))  # the header is read, the pixels are not
    assert digests.md5 == full.md5 and digests.decodable and (digests.width, digests.height) == (full.width, full.height)
    truncated = hash_bytes(body[: len(body) // 2], algorithms=("md5",))
    assert truncated.decodable and not hash_bytes(body[: len(body) // 2]).decodable
    imagehash_only = hash_bytes(body, algorithms=("phash", "dhash"))
    assert (imagehash_only.phash, imagehash_only.dhash, imagehash_only.pdq) == (full.phash, full.dhash, None)
    with pytest.raises(ValueError, match="unknown hash algorithms: crc32"):
        hash_bytes(body, algorithms=("crc32",))
    assert set(ALGORITHMS) == {"md5", "sha1", "sha256", "phash", "dhash", "pdq"}


def test_dihedral_comes_from_the_same_pass(corpus: list[bytes]) -> None:
    digest = hash_bytes(corpus[1], pdq_dihedral=True)
    assert digest.pdq_dihedral is not None and len(digest.pdq_dihedral) == 8
    assert digest.pdq_dihedral[0] == digest.pdq
    assert list(digest.pdq_dihedral) == pdq_dihedral_hashes(corpus[1])
    assert hash_bytes(corpus[1]).pdq_dihedral is None


def test_lanczos_coefficients_are_remembered_by_size_and_equal_to_computed_ones() -> None:
    from crawler.hashing import lanczos

    for in_size, out_size in ((640, 32), (481, 9), (lanczos.CACHED_AXIS_MAX + 1, 8)):
        first, again = lanczos.coefficients(in_size, out_size), lanczos.coefficients(in_size, out_size)
        fresh = lanczos.lanczos_coefficients(in_size, out_size)
        assert all(np.array_equal(a, b) for a, b in zip(first, fresh))
        # remembered up to CACHED_AXIS_MAX (the same arrays back), computed anew beyond it
        assert (first[2] is again[2]) == (in_size <= lanczos.CACHED_AXIS_MAX)


# --- colour JPEGs decoded by simplejpeg: Pillow's pixels, Pillow's verdicts -----------------------------------


def _jpeg(img: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", **options)
    return buffer.getvalue()


@pytest.mark.parametrize(("size", "options"), [
    ((640, 480), {"quality": 85}),  # 4:2:0, Pillow's default
    ((333, 217), {"quality": 90, "subsampling": "4:2:2"}),  # odd sizes: partial MCUs on both axes
    ((517, 389), {"quality": 95, "subsampling": "4:4:4"}),
    ((800, 600), {"quality": 80, "progressive": True}),
    ((401, 299), {"quality": 75, "optimize": True}),
    ((640, 360), {"quality": 88, "restart_marker_blocks": 4}),
    ((1, 1), {"quality": 90}),
    ((7, 5), {"quality": 30}),
    ((2200, 1100), {"quality": 70}),  # above LUMA_BY_ROWS_PIXELS: the row-at-a-time kernels read them
])
def test_colour_jpegs_decode_to_pillows_pixels(size: tuple[int, int], options: dict[str, object]) -> None:
    from crawler.hashing.digest import _jpeg_pixels

    width, height = size
    img, _ = scene_image(41_000 + width, long_side=(max(size), max(size)))
    body = _jpeg(img.resize(size), **options)
    with Image.open(io.BytesIO(body)) as opened:
        pixels = _jpeg_pixels(body, opened)
        assert pixels is not None  # a colour JPEG takes the fast decode
        flat, bands = pixels
        assert bands == 4 and not flat.flags.writeable
        pillows = np.asarray(opened.convert("RGB"))
    assert np.array_equal(flat.reshape(height, width, 4)[..., :3], pillows)


def test_jpegs_the_fast_decode_declines_get_pillows_hashes_and_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    from crawler.hashing import digest

    img, _ = scene_image(41_999, long_side=(480, 480))
    body = _jpeg(img, quality=85)
    end = body.rindex(b"\xff\xd9")
    warned = body[:end] + b"\x00" * 7 + body[end:]  # libjpeg: "extraneous bytes before marker 0xd9", a warning
    grey = _jpeg(img.convert("L"), quality=85)
    cmyk = _jpeg(img.convert("CMYK"), quality=85)
    truncated = body[: len(body) * 2 // 3]
    declined = {}
    for name, data in (("warned", warned), ("grey", grey), ("cmyk", cmyk), ("truncated", truncated)):
        with Image.open(io.BytesIO(data)) as opened:
            declined[name] = digest._jpeg_pixels(data, opened) is None
    assert declined == {"warned": True, "grey": True, "cmyk": True, "truncated": True}
    fast = [hash_bytes(data) for data in (body, warned, grey, cmyk, truncated)]
    monkeypatch.setattr(digest, "_jpeg_pixels", lambda body, img: None)  # Pillow decodes everything
    pillow = [hash_bytes(data) for data in (body, warned, grey, cmyk, truncated)]
    for ours, theirs in zip(fast, pillow, strict=True):
        assert (ours.phash, ours.dhash, ours.pdq, ours.pdq_quality, ours.decode_error) == (
            theirs.phash, theirs.dhash, theirs.pdq, theirs.pdq_quality, theirs.decode_error)
    assert fast[1].decodable and fast[1].phash == reference_hashes(warned).phash  # Pillow decodes despite it
    assert not fast[4].decodable and fast[4].decode_error  # a truncated body stays a decode error


def test_phash_of_flat_and_striped_images_is_imagehash_where_coefficients_tie() -> None:
    """Flat and periodic images make the DCT's low band mostly equal values (rounding noise around zero):
    the median and the comparison against it must be imagehash's to the bit there too."""
    import imagehash

    from crawler.hashing.digest import _phash_hex

    rng = np.random.default_rng(7)
    images = [np.full((32, 32), value, dtype=np.uint8) for value in (0, 1, 127, 128, 255)]
    images += [(np.indices((32, 32))[axis] % period * 40).astype(np.uint8) for axis in (0, 1) for period in (2, 3, 5)]
    images += [rng.integers(100, 102, (32, 32), dtype=np.uint8) for _ in range(5)]
    images += [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(5)]
    for pixels in images:
        assert _phash_hex(pixels) == str(imagehash.phash(Image.fromarray(pixels, "L")))
