"""Hashing CPU per image: refwatch's one-pass kernels against the reference path they replaced, side by side.

Not a test: run it by hand from the repository root (one core, so the figures are CPU of one thread):

    taskset -c 1 python bench/hash_bench.py                 # 400 images, 3 interleaved rounds
    taskset -c 1 python bench/hash_bench.py --images 1000 --rounds 5

The corpus is photo-like synthetic scenes (``crawler.sample.scenes``) with the size mix of web images (long
side 320-1024 px, log-uniform), encoded 80% JPEG (quality 80-92), 10% PNG, 10% WebP; bodies live in memory
only. Each round times, over the same bodies:

* ``reference``: ``crawler.hashing.reference`` - imagehash's pHash and dHash of ``convert("L")``, pdqhash of
  the 512-px bicubic thumbnail, plus the three digests: what ``hash_bytes`` did before the kernels;
* ``refwatch``: ``hash_bytes(body)``, every hash; ``refwatch, no PDQ`` and ``digests only`` for the options;
  ``Pillow decoding JPEGs too``: every hash with colour JPEGs decoded by Pillow instead of simplejpeg;
* the steps of the refwatch path one by one (decode by Pillow, pixel view, luma, transpose, pHash/dHash
  kernel, PDQ).

It prints ms of CPU per image (time.process_time), the ratio to the reference, and how far the hashes are
from the reference's (pHash/dHash must be identical; PDQ within a bit or two).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from crawler.hashing import digest, kernels  # noqa: E402
from crawler.hashing.digest import _pixels, hamming_distance, hash_bytes  # noqa: E402
from crawler.hashing.pdq import pdq_from_block, thumbnail_size  # noqa: E402
from crawler.hashing.reference import reference_hashes  # noqa: E402
from crawler.sample.scenes import scene_image  # noqa: E402


def corpus(count: int, seed: int = 50_000) -> list[bytes]:
    rng = np.random.default_rng(seed)
    bodies = []
    for i in range(count):
        img, _ = scene_image(seed + i, long_side=(320, 1024))
        roll = rng.random()
        buffer = io.BytesIO()
        if roll < 0.8:
            img.save(buffer, "JPEG", quality=int(rng.integers(80, 93)))
        elif roll < 0.9:
            img.save(buffer, "PNG")
        else:
            img.save(buffer, "WEBP", quality=85)
        bodies.append(buffer.getvalue())
    return bodies


def reference(body: bytes) -> object:
    hashlib.md5(body).hexdigest(), hashlib.sha1(body).hexdigest(), hashlib.sha256(body).hexdigest()
    return reference_hashes(body)


def cpu_ms_per_item(func: Callable[[bytes], object], items: list) -> float:
    started = time.process_time()
    for item in items:
        func(item)
    return (time.process_time() - started) / len(items) * 1000.0


def steps(bodies: list[bytes]) -> dict[str, float]:
    """ms per image of each step of the refwatch path, each timed over all images."""
    decoded = []
    out: dict[str, float] = {}
    started = time.process_time()
    for body in bodies:
        img = Image.open(io.BytesIO(body))
        img.load()
        decoded.append(img.convert("RGB") if img.mode not in ("RGB", "L") else img)
    out["decode"] = (time.process_time() - started) / len(bodies) * 1000
    pixels = []
    out["pixel view"] = cpu_ms_per_item(lambda im: pixels.append(_pixels(im)), decoded)
    greys = []
    out["luma (L)"] = cpu_ms_per_item(
        lambda i: greys.append(kernels.rgb_grey(*pixels[i], decoded[i].height, decoded[i].width)
                               if decoded[i].mode == "RGB" else np.asarray(decoded[i])), list(range(len(bodies))))
    arrays = []
    out["transpose"] = cpu_ms_per_item(lambda g: arrays.append((g, kernels.transposed(g))), greys)
    out["pHash+dHash kernel"] = cpu_ms_per_item(lambda a: kernels.imagehash_arrays(*a), arrays)

    def pdq(i: int) -> None:
        cols, rows = thumbnail_size(decoded[i].width, decoded[i].height)
        pdq_from_block(kernels.pdq_block(*pixels[i], decoded[i].height, decoded[i].width, rows, cols))

    out["PDQ kernel"] = cpu_ms_per_item(pdq, list(range(len(bodies))))
    out["digests"] = cpu_ms_per_item(lambda b: (hashlib.md5(b).digest(), hashlib.sha1(b).digest(),
                                                hashlib.sha256(b).digest()), bodies)
    return out


def pillow_decoding_every_jpeg(body: bytes) -> object:
    """``hash_bytes`` as it was before colour JPEGs went to simplejpeg: Pillow decodes every body."""
    fast = digest._jpeg_pixels
    digest._jpeg_pixels = lambda body, img: None
    try:
        return hash_bytes(body)
    finally:
        digest._jpeg_pixels = fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, Python {platform.python_version()}")
    bodies = corpus(args.images)
    sizes = [len(b) for b in bodies]
    print(f"corpus: {len(bodies)} images, mean {statistics.mean(sizes) / 1024:.1f} KB")
    hash_bytes(bodies[0])  # compile (or load) the kernels outside the timing
    reference(bodies[0])
    runs: dict[str, list[float]] = {}
    step_runs: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, func in (
            ("reference (imagehash + pdqhash)", reference),
            ("refwatch, every hash", hash_bytes),
            ("refwatch, Pillow decoding JPEGs too", pillow_decoding_every_jpeg),
            ("refwatch, no PDQ", lambda b: hash_bytes(b, algorithms=("md5", "sha1", "sha256", "phash", "dhash"))),
            ("refwatch, PDQ + sha256", lambda b: hash_bytes(b, algorithms=("sha256", "pdq"))),
            ("refwatch, digests only", lambda b: hash_bytes(b, algorithms=("md5", "sha1", "sha256"))),
        ):
            runs.setdefault(name, []).append(cpu_ms_per_item(func, bodies))
        for name, value in steps(bodies).items():
            step_runs.setdefault(name, []).append(value)
    base = statistics.median(runs["reference (imagehash + pdqhash)"])
    print(f"\n{'path':36s} {'CPU ms/image (median; range)':>30s} {'vs reference':>13s}")
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"{name:36s} {median:10.2f} ({min(values):.2f}-{max(values):.2f}){'':8s} {base / median:10.2f}x")
    print("\nrefwatch's steps (CPU ms/image, median):")
    for name, values in step_runs.items():
        print(f"  {name:22s} {statistics.median(values):6.2f}")
    distances = {"phash": [], "dhash": [], "pdq": []}
    for body in bodies:
        ours, theirs = hash_bytes(body), reference_hashes(body)
        for algorithm, values in distances.items():
            values.append(hamming_distance(getattr(ours, algorithm), getattr(theirs, algorithm)))
    print("\nbits from the reference's hashes: " + "; ".join(
        f"{a} mean {statistics.mean(v):.2f} max {max(v)} identical {sum(d == 0 for d in v)}/{len(v)}"
        for a, v in distances.items()))


if __name__ == "__main__":
    main()
