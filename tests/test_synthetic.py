"""Unit tests for crawler.sample.images: determinism, separation between seeds, and benign variants that match."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from crawler.hashing.digest import Digest, hamming_distance, hash_bytes
from crawler.sample.images import (
    CODED_SEEDS,
    DEFAULT_SIZE,
    bch_codeword,
    encode,
    synthetic_image,
    synthetic_jpeg,
    variants,
)

SEEDS = range(200)
PHASH_SEPARATION = 16  # distinct seeds must be further apart than this
PDQ_SEPARATION = 31  # Meta's match threshold: distinct seeds must never match
PDQ_MIN_QUALITY = 50  # Meta discards hashes of quality <= 49
VARIANT_PHASH_RADIUS = 8
VARIANT_PDQ_RADIUS = 31


def _bit_matrix(hexes: list[str]) -> np.ndarray:
    """One row of bits per hex hash."""
    return np.unpackbits(np.frombuffer(bytes.fromhex("".join(hexes)), dtype=np.uint8)).reshape(len(hexes), -1)


def _pairwise_min(hexes: list[str]) -> int:
    """Smallest Hamming distance between any two of ``hexes`` (numpy, all pairs at once)."""
    bits = _bit_matrix(hexes).astype(np.int16)
    distances = bits @ (1 - bits).T
    distances = distances + distances.T  # bits differing either way round
    return int(distances[np.triu_indices(len(hexes), 1)].min())


@pytest.fixture(scope="module")
def seed_digests() -> list[Digest]:
    return [hash_bytes(synthetic_jpeg(seed)) for seed in SEEDS]


def test_same_seed_same_bytes() -> None:
    assert synthetic_jpeg(7) == synthetic_jpeg(7)
    assert encode(synthetic_image(7, (100, 60)), "PNG") == encode(synthetic_image(7, (100, 60)), "PNG")
    assert synthetic_jpeg(7) != synthetic_jpeg(8)


def test_image_shape_and_mode() -> None:
    img = synthetic_image(0)
    assert img.size == DEFAULT_SIZE and img.mode == "RGB"
    assert synthetic_image(1, (320, 100)).size == (320, 100)
    with Image.open(io.BytesIO(synthetic_jpeg(1, quality=75))) as decoded:
        assert decoded.format == "JPEG" and decoded.size == DEFAULT_SIZE


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="seed"):
        synthetic_image(-1)
    with pytest.raises(ValueError, match="size"):
        synthetic_image(0, (0, 10))
    with pytest.raises(ValueError, match="message"):
        bch_codeword(CODED_SEEDS)


def test_bch_code_has_minimum_distance_11() -> None:
    """The pHash separation of coded seeds rests on this: 2 x 11 = 22 bits between any two."""
    words = np.array([bch_codeword(m) for m in range(CODED_SEEDS)], dtype=np.uint64)
    assert len(set(words.tolist())) == CODED_SEEDS
    assert int(words.max()) < 1 << 31
    # Linear code: the minimum distance is the minimum weight of a non-zero codeword.
    weights = np.unpackbits(words[1:].view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
    assert weights.min() == 11


def test_distinct_seeds_are_perceptually_distinct(seed_digests: list[Digest]) -> None:
    phash_min = _pairwise_min([d.phash or "" for d in seed_digests])
    pdq_min = _pairwise_min([d.pdq or "" for d in seed_digests])
    assert phash_min > PHASH_SEPARATION, phash_min
    assert phash_min >= 22  # what the code guarantees (observed exactly 22)
    assert pdq_min > PDQ_SEPARATION, pdq_min  # observed 92


def test_pdq_quality_is_usable(seed_digests: list[Digest]) -> None:
    qualities = [d.pdq_quality or 0 for d in seed_digests]
    assert min(qualities) >= PDQ_MIN_QUALITY, min(qualities)


def test_uncoded_seeds_and_other_sizes_stay_distinct() -> None:
    """Beyond the coded range pHash is only probably distinct, PDQ still clearly; small and odd sizes too."""
    cases = ((range(CODED_SEEDS, CODED_SEEDS + 40), DEFAULT_SIZE), (range(40), (64, 64)), (range(40), (97, 300)))
    for seeds, size in cases:
        digests = [hash_bytes(synthetic_jpeg(seed, size)) for seed in seeds]
        assert _pairwise_min([d.pdq or "" for d in digests]) > PDQ_SEPARATION, size
        assert _pairwise_min([d.phash or "" for d in digests]) > PHASH_SEPARATION, size
        assert min(d.pdq_quality or 0 for d in digests) >= PDQ_MIN_QUALITY, size


def test_variants_are_benign_near_copies() -> None:
    img = synthetic_image(3)
    found = variants(img)
    assert list(found) == ["resized", "jpeg_q50", "png", "brightness"]
    with Image.open(io.BytesIO(found["resized"])) as resized:
        assert resized.size == (154, 154) and resized.format == "JPEG"
    with Image.open(io.BytesIO(found["png"])) as png:
        assert png.format == "PNG"
        assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(img))


def test_variants_stay_within_match_radius() -> None:
    worst: dict[str, tuple[int, int]] = {}
    for seed in range(10):
        img = synthetic_image(seed)
        original = hash_bytes(encode(img, "PNG"))
        for name, body in variants(img).items():
            copy = hash_bytes(body)
            distances = (
                hamming_distance(original.phash or "", copy.phash or ""),
                hamming_distance(original.pdq or "", copy.pdq or ""),
            )
            previous = worst.get(name, (0, 0))
            worst[name] = (max(previous[0], distances[0]), max(previous[1], distances[1]))
    failing = {
        name: (phash, pdq)
        for name, (phash, pdq) in worst.items()
        if phash > VARIANT_PHASH_RADIUS or pdq > VARIANT_PDQ_RADIUS
    }
    assert not failing, f"variants outside pHash {VARIANT_PHASH_RADIUS} / PDQ {VARIANT_PDQ_RADIUS}: {failing}"


def test_variants_of_different_seeds_do_not_match_each_other() -> None:
    a, b = variants(synthetic_image(0)), variants(synthetic_image(1))
    for name in a:
        assert hamming_distance(hash_bytes(a[name]).pdq or "", hash_bytes(b[name]).pdq or "") > PDQ_SEPARATION
