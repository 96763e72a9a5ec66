"""Measure how well pHash, dHash and PDQ match transformed copies, and how often unrelated images collide.

Not a test: run it by hand from the repository root and read the tables it prints (``docs/matching.md``
holds the figures of a full run and what they mean).

    nice -n 10 python bench/accuracy.py                          # full run: 2,000 scenes + photos, ~10 CPU-min
    nice -n 10 python bench/accuracy.py --quick                  # 200 scenes, ~1 CPU-min
    nice -n 10 python bench/accuracy.py --markdown /tmp/acc.md   # also write the tables as Markdown
    nice -n 10 python bench/accuracy.py --jobs 2                 # two worker processes

Needs scikit-image and scikit-learn (for their packaged sample photographs; nothing is downloaded) on top of
refwatch's own dependencies. Without them the run goes on with the synthetic corpus alone and says so.

**Corpus.** ``crawler.sample.images``'s images are built for tests: their hashed DCT coefficients are balanced
random signs far from every threshold, so two of them sit ~32 pHash bits apart and copies barely move. That
flatters both recall and the false-positive rate, so the corpus here is drawn by ``scene_image`` instead:
photo-like scenes with the statistics that make real images collide - a 1/f ("pink") spectrum, shared
layouts (bright sky above darker ground, a centred subject, text on white), smooth gradients, soft and hard
shapes, textures, blur, vignetting, sensor noise - in seven kinds (landscape, still life, portrait, texture,
document, night, flat graphic) at sizes from 200 to 900 pixels a side in nine aspect ratios. To these come
the real photographs that scikit-image and scikit-learn ship (astronaut, camera, coffee, chelsea, rocket,
china, flower...; synthetic test patterns and duplicates such as ``cat`` = ``chelsea`` are left out), used
as originals and in the pairs like the scenes. ``crawler.sample.images`` images (seeds from 2048, whose pHash
signs are random rather than BCH codewords) are hashed too, as a contrast group, for their pairs only.

**Originals and copies.** An original is stored as JPEG quality 95, like most pictures on the web, and its
hashes are what a list entry would hold. Every transformation starts from the decoded original; geometric
and tonal ones are written losslessly (BMP) so that a row measures that transformation alone, the encoding
rows re-encode the same pixels, and ``thumb_jpeg75`` combines a 0.5x downscale with JPEG 75 as re-hosting
sites do. Everything is hashed with ``crawler.hashing.digest.hash_bytes``, the function the crawl uses.

**Definitions.** A copy is recalled at radius r when its Hamming distance to its original is <= r; for PDQ
both hashes must also have quality >= ``PDQ_MIN_QUALITY`` (copies or originals below it count as misses).
The false-positive rate at r is the share of all n*(n-1)/2 distinct pairs of originals within r of each
other (for PDQ: with both qualities >= 50). "Dihedral" PDQ takes the smallest distance over the 8
rotations/flips of the query image (``pdqhash.compute_dihedral``), as ``--pdq-dihedral`` will.

Images exist only in memory; nothing image-like is written anywhere.
"""

from __future__ import annotations

import argparse
import io
import logging
import multiprocessing
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import imagehash  # noqa: E402
import pdqhash  # noqa: E402

from crawler.hashing import digest as hashing  # noqa: E402
from crawler.matching.matcher import DEFAULT_RADII, PDQ_MIN_QUALITY  # noqa: E402
from crawler.sample.images import CODED_SEEDS, synthetic_image  # noqa: E402
from crawler.sample.scenes import scene_image  # noqa: E402
from crawler.hashing.reference import pdq_pixels, reference_pdq_dihedral  # noqa: E402

logger = logging.getLogger("bench.accuracy")

ALGORITHMS = ("phash", "dhash", "pdq")
BITS = {"phash": 64, "dhash": 64, "pdq": 256}
# Radii of the trade-off tables, always with the defaults (crawler.matching.matcher.DEFAULT_RADII) among them.
RADII = {
    algorithm: tuple(sorted(set(radii) | {DEFAULT_RADII[algorithm]}))
    for algorithm, radii in (
        ("phash", (4, 6, 8, 10, 12, 14, 16)),
        ("dhash", (4, 6, 8, 10, 12, 14, 16)),
        ("pdq", (20, 24, 28, 31, 36, 40, 45, 50, 60)),
    )
}
NEAREST = 5  # closest unrelated pairs listed per hash
LIST_SIZE = 1_000_000  # "expected unrelated matches per query" is quoted against a list this long
ORIGINAL_QUALITY = 95  # JPEG quality the originals are stored at
SCENE_SEED_BASE = 1_000_000  # scene seeds live in their own range, clear of any test fixture's seed
FIXTURE_SEED_BASE = CODED_SEEDS  # crawler.sample.images seeds from here on are not BCH-coded

# ---------------------------------------------------------------------------------------------------------
# The corpus: photo-like procedural scenes
# ---------------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------------
# The corpus: real photographs shipped inside scikit-image and scikit-learn
# ---------------------------------------------------------------------------------------------------------

# Natural photographs only. Left out: synthetic patterns (checkerboard, binary_blobs, colorwheel,
# shepp_logan_phantom, horse, logo), ``cat`` (the same picture as ``chelsea``), the right view of
# ``stereo_motorcycle`` (a near-duplicate of the left one, not an unrelated image), and the images that
# scikit-image only fetches over the network (eagle, lily, skin...).
SKIMAGE_PHOTOS = (
    "astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text", "clock", "grass",
    "gravel", "brick", "hubble_deep_field", "immunohistochemistry", "retina", "microaneurysms", "cell",
    "motorcycle_left",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def real_photo_names() -> list[str]:
    """Names of the packaged photographs that load here (missing packages or files are logged and skipped)."""
    names: list[str] = []
    try:
        import skimage.data  # noqa: F401

        names += [f"skimage:{name}" for name in SKIMAGE_PHOTOS]
    except ImportError:
        logger.warning("scikit-image is not installed: its sample photographs are left out")
    try:
        import sklearn.datasets  # noqa: F401

        names += [f"sklearn:{name}" for name in SKLEARN_PHOTOS]
    except ImportError:
        logger.warning("scikit-learn is not installed: its sample photographs are left out")
    usable = []
    for name in names:
        try:
            real_photo(name)
        except Exception as exc:  # noqa: BLE001 - a sample that needs the network, or an older package
            logger.warning("sample photo %s is not available offline (%s): left out", name, type(exc).__name__)
            continue
        usable.append(name)
    return usable


def real_photo(name: str) -> Image.Image:
    """One packaged photograph as an RGB image (greyscale ones are replicated into three channels)."""
    source, _, item = name.partition(":")
    if source == "skimage":
        import skimage.data

        array = skimage.data.stereo_motorcycle()[0] if item == "motorcycle_left" else getattr(skimage.data, item)()
    elif source == "sklearn":
        import sklearn.datasets

        bunch = sklearn.datasets.load_sample_images()
        array = bunch.images[[Path(f).name for f in bunch.filenames].index(item)]
    else:
        raise ValueError(f"unknown photo source in {name!r}")
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"{name} is {array.dtype}, not an 8-bit photograph")
    return Image.fromarray(array).convert("RGB")


# ---------------------------------------------------------------------------------------------------------
# Transformations: decoded original -> the bytes a re-hosting site might serve
# ---------------------------------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _lossless(img: Image.Image) -> bytes:
    """BMP: the pixels exactly, and cheap to write and read (PNG would cost 20-100 ms an image here)."""
    return encode(img, "BMP")


def _scaled(img: Image.Image, factor: float) -> Image.Image:
    size = (max(1, round(img.width * factor)), max(1, round(img.height * factor)))
    return img.resize(size, Image.Resampling.LANCZOS)


def _crop(img: Image.Image, share: float) -> Image.Image:
    dx, dy = round(img.width * share), round(img.height * share)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


def _border(img: Image.Image, share: float, colour: tuple[int, int, int]) -> Image.Image:
    dx, dy = max(1, round(img.width * share)), max(1, round(img.height * share))
    out = Image.new("RGB", (img.width + 2 * dx, img.height + 2 * dy), colour)
    out.paste(img, (dx, dy))
    return out


# name -> (what it does, function). Order = row order of every table. "original" is not a transformation.
TRANSFORMS: dict[str, tuple[str, Callable[[Image.Image], bytes]]] = {
    "downscale_0.5": ("0.5x each side, Lanczos", lambda im: _lossless(_scaled(im, 0.5))),
    "downscale_0.25": ("0.25x each side, Lanczos", lambda im: _lossless(_scaled(im, 0.25))),
    "jpeg_q90": ("re-encoded as JPEG quality 90 (4:2:0)", lambda im: encode(im, "JPEG", quality=90)),
    "jpeg_q70": ("JPEG quality 70", lambda im: encode(im, "JPEG", quality=70)),
    "jpeg_q50": ("JPEG quality 50", lambda im: encode(im, "JPEG", quality=50)),
    "jpeg_q30": ("JPEG quality 30", lambda im: encode(im, "JPEG", quality=30)),
    "thumb_jpeg75": ("0.5x Lanczos, then JPEG quality 75", lambda im: encode(_scaled(im, 0.5), "JPEG", quality=75)),
    "png": ("lossless PNG (same pixels)", lambda im: encode(im, "PNG", compress_level=1)),
    "png8": ("PNG-8: 256-colour palette (fast octree), dithered",
             lambda im: encode(im.quantize(256, method=Image.Quantize.FASTOCTREE), "PNG", compress_level=1)),
    "webp_q80": ("lossy WebP, quality 80 (Pillow's default)", lambda im: encode(im, "WEBP", quality=80)),
    "brightness_+20": ("brightness x1.2 (ImageEnhance)",
                       lambda im: _lossless(ImageEnhance.Brightness(im).enhance(1.2))),
    "brightness_-20": ("brightness x0.8", lambda im: _lossless(ImageEnhance.Brightness(im).enhance(0.8))),
    "contrast_+20": ("contrast x1.2 (ImageEnhance)",
                     lambda im: _lossless(ImageEnhance.Contrast(im).enhance(1.2))),
    "contrast_-20": ("contrast x0.8", lambda im: _lossless(ImageEnhance.Contrast(im).enhance(0.8))),
    "crop_2": ("2% of width/height cut off each edge (96% x 96% kept)", lambda im: _lossless(_crop(im, 0.02))),
    "crop_5": ("5% off each edge (90% x 90% kept)", lambda im: _lossless(_crop(im, 0.05))),
    "crop_10": ("10% off each edge (80% x 80% kept)", lambda im: _lossless(_crop(im, 0.10))),
    "border_5_black": ("black border, 5% of width/height on each side",
                       lambda im: _lossless(_border(im, 0.05, (0, 0, 0)))),
    "border_5_white": ("white border, 5% on each side", lambda im: _lossless(_border(im, 0.05, (255, 255, 255)))),
    "hflip": ("mirrored left-right", lambda im: _lossless(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))),
    "rot90": ("rotated 90 degrees", lambda im: _lossless(im.transpose(Image.Transpose.ROTATE_90))),
    "rot5": ("rotated 5 degrees, same canvas, black corners",
             lambda im: _lossless(im.rotate(5, Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)))),
}
# Mirror and rotations: what pHash/dHash cannot match by design, and PDQ only with dihedral matching.
ORIENTATION = ("hflip", "rot90", "rot5")
EVERYDAY = tuple(name for name in TRANSFORMS if name not in ORIENTATION)
HEADLINE = ("jpeg_q30", "downscale_0.25", "crop_5", "border_5_black")  # columns of the trade-off tables
COLUMNS = ("original", *TRANSFORMS)  # hash columns of a record


# ---------------------------------------------------------------------------------------------------------
# Hashing one original and its copies (runs in worker processes)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """Which original to build: ``group`` is scene, real or fixture (fixtures: original only, for pairs)."""

    group: str
    name: str
    seed: int | None = None


@dataclass
class Record:
    """One original's hashes: row k of each array is ``COLUMNS[k]`` (fixtures have the original row only)."""

    spec: Spec
    kind: str
    width: int
    height: int
    phash: np.ndarray  # (columns,) uint64
    dhash: np.ndarray  # (columns,) uint64
    pdq: np.ndarray  # (columns, 4) uint64
    quality: np.ndarray  # (columns,) int16
    dihedral: np.ndarray  # (1 + len(ORIENTATION), 8, 4) uint64: original, then ORIENTATION copies
    cpu_ms: dict[str, float] = field(default_factory=dict)
    dihedral_mismatch: int = 0  # compute_dihedral's identity hash != hash_bytes' PDQ (should stay 0)


def _words(hex_hash: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(hex_hash), dtype=">u8").astype(np.uint64)


def _dihedral(rgb: Image.Image) -> np.ndarray:
    """The 8 PDQ hashes of ``rgb``'s rotations and flips, as (8, 4) uint64 (row 0 = as stored)."""
    return np.stack([_words(h) for h in reference_pdq_dihedral(rgb)])


def _cpu_ms(func: Callable[[], object]) -> tuple[object, float]:
    """Result and CPU time of this thread in ms (robust to other processes competing for the cores)."""
    started = time.thread_time()
    result = func()
    return result, (time.thread_time() - started) * 1000.0


def build(spec: Spec) -> tuple[Image.Image, str]:
    """The original image of ``spec`` and its kind."""
    if spec.group in ("scene", "fixture") and spec.seed is None:
        raise ValueError(f"{spec.name}: a {spec.group} needs a seed")
    if spec.group == "scene":
        return scene_image(spec.seed)  # type: ignore[arg-type]
    if spec.group == "fixture":
        rng = np.random.default_rng([0xF1C, spec.seed])
        width, height = (int(x) for x in rng.integers(128, 640, size=2))
        return synthetic_image(spec.seed, (width, height)), "fixture"
    return real_photo(spec.name), "photo"


def measure(spec: Spec) -> Record:
    """Build one original, store it as JPEG 95, make every copy, and hash them all with ``hash_bytes``."""
    img, kind = build(spec)
    body = encode(img, "JPEG", quality=ORIGINAL_QUALITY)
    columns = COLUMNS if spec.group != "fixture" else COLUMNS[:1]
    phash = np.zeros(len(columns), np.uint64)
    dhash = np.zeros(len(columns), np.uint64)
    pdq = np.zeros((len(columns), 4), np.uint64)
    quality = np.zeros(len(columns), np.int16)

    digest, total_ms = _cpu_ms(lambda: hashing.hash_bytes(body))
    decoded, decode_ms = _cpu_ms(lambda: _decode(body))
    grey, grey_ms = _cpu_ms(lambda: decoded.convert("L"))
    _, phash_ms = _cpu_ms(lambda: imagehash.phash(grey))
    _, dhash_ms = _cpu_ms(lambda: imagehash.dhash(grey))
    _, pdq_ms = _cpu_ms(lambda: pdqhash.compute(pdq_pixels(decoded)))
    cpu_ms = {"decode": decode_ms, "phash": grey_ms + phash_ms, "dhash": grey_ms + dhash_ms, "pdq": pdq_ms,
              "hash_bytes": total_ms}

    dihedral = np.zeros((1 + len(ORIENTATION), 8, 4), np.uint64)
    dihedral[0], cpu_ms["pdq_dihedral"] = _cpu_ms(lambda: _dihedral(decoded))
    for index, column in enumerate(columns):
        if column != "original":
            copy_body = TRANSFORMS[column][1](decoded)
            digest = hashing.hash_bytes(copy_body)
            if column in ORIENTATION:
                dihedral[1 + ORIENTATION.index(column)] = _dihedral(_decode(copy_body))
        if digest.phash is None or digest.dhash is None or digest.pdq is None or digest.pdq_quality is None:
            raise RuntimeError(f"{spec.name} / {column}: could not hash ({digest.decode_error})")
        phash[index] = int(digest.phash, 16)
        dhash[index] = int(digest.dhash, 16)
        pdq[index] = _words(digest.pdq)
        quality[index] = digest.pdq_quality
    mismatch = int(not np.array_equal(dihedral[0, 0], pdq[0]))
    return Record(spec, kind, img.width, img.height, phash, dhash, pdq, quality, dihedral, cpu_ms, mismatch)


def _decode(body: bytes) -> Image.Image:
    with Image.open(io.BytesIO(body)) as img:
        return img.convert("RGB")


# ---------------------------------------------------------------------------------------------------------
# Distances, recall and pair statistics (numpy XOR + popcount on packed uint64 words)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """The records of one run as arrays: originals (scenes and photos) and the fixture contrast group."""

    records: list[Record]
    fixtures: list[Record]

    def codes(self, algorithm: str, column: int | slice = slice(None)) -> np.ndarray:
        """(n, words) uint64 codes of one column (or (n, columns, words) for a slice)."""
        return _stack(self.records, algorithm)[:, column]

    def quality(self) -> np.ndarray:
        return np.stack([r.quality for r in self.records])


def _stack(records: Sequence[Record], algorithm: str) -> np.ndarray:
    if algorithm == "pdq":
        return np.stack([r.pdq for r in records])
    return np.stack([getattr(r, algorithm) for r in records])[..., None]


def popcount(words: np.ndarray) -> np.ndarray:
    """Hamming weight summed over the last axis (the words of one hash)."""
    return np.bitwise_count(words).sum(axis=-1, dtype=np.int64)


def copy_distances(corpus: Corpus, algorithm: str) -> np.ndarray:
    """(n, transforms) distance of each copy to its own original."""
    codes = corpus.codes(algorithm)  # (n, columns, words)
    return popcount(codes[:, 1:] ^ codes[:, :1])


def dihedral_copy_distances(corpus: Corpus) -> np.ndarray:
    """(n, len(ORIENTATION)): smallest distance of a copy's 8 dihedral PDQ hashes to its original's PDQ."""
    queries = np.stack([r.dihedral[1:] for r in corpus.records])  # (n, o, 8, 4)
    originals = np.stack([r.pdq[0] for r in corpus.records])[:, None, None, :]
    return popcount(queries ^ originals).min(axis=2)


def quality_ok(corpus: Corpus) -> np.ndarray:
    """(n, transforms): both the original and the copy have PDQ quality >= PDQ_MIN_QUALITY."""
    q = corpus.quality() >= PDQ_MIN_QUALITY
    return q[:, 1:] & q[:, :1]


@dataclass
class Pairs:
    """Distances over the n*(n-1)/2 distinct pairs of originals, as a histogram plus the close pairs."""

    total: int
    histogram: np.ndarray  # counts per distance of the pairs that may match at all (PDQ: quality-passing)
    close: list[tuple[int, int, int]]  # (i, j, distance) of every matchable pair within the largest radius
    nearest: list[tuple[int, int, int]]  # the NEAREST closest matchable pairs, at any distance

    def matches(self, radius: int) -> int:
        return int(self.histogram[: radius + 1].sum())

    def rate(self, radius: int) -> float:
        return self.matches(radius) / self.total if self.total else 0.0


def pair_distances(codes: np.ndarray, bits: int, keep_within: int, ok: np.ndarray | None = None,
                   queries: np.ndarray | None = None, block: int = 64) -> Pairs:
    """All distinct pairs i < j of ``codes`` (n, words); ``queries`` (n, 8, words) makes row i's distance
    the smallest over its dihedral hashes. Pairs where ``ok`` is False for either side never match."""
    n = codes.shape[0]
    histogram = np.zeros(bits + 1, np.int64)
    close: list[tuple[int, int, int]] = []
    nearest: list[tuple[int, int, int]] = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        if queries is None:
            dist = popcount(codes[start:stop, None, :] ^ codes[None, :, :])
        else:
            dist = popcount(queries[start:stop, :, None, :] ^ codes[None, None, :, :]).min(axis=1)
        upper = np.arange(n)[None, :] > np.arange(start, stop)[:, None]
        if ok is not None:
            upper &= ok[start:stop, None] & ok[None, :]
        histogram += np.bincount(dist[upper], minlength=bits + 1)
        rows, cols = np.nonzero(upper & (dist <= keep_within))
        close += [(start + int(i), int(j), int(dist[i, j])) for i, j in zip(rows, cols)]
        rows, cols = np.nonzero(upper)
        values = dist[rows, cols]
        best = np.argsort(values, kind="stable")[:NEAREST]
        nearest = sorted(nearest + [(start + int(rows[k]), int(cols[k]), int(values[k])) for k in best],
                         key=lambda pair: pair[2])[:NEAREST]
    return Pairs(n * (n - 1) // 2, histogram, close, nearest)


def corpus_pairs(records: Sequence[Record], algorithm: str, dihedral: bool = False) -> Pairs:
    codes = _stack(records, algorithm)[:, 0]
    ok = None
    if algorithm == "pdq":
        ok = np.array([r.quality[0] >= PDQ_MIN_QUALITY for r in records])
    queries = np.stack([r.dihedral[0] for r in records]) if dihedral else None
    return pair_distances(codes, BITS[algorithm], max(RADII[algorithm]), ok, queries)


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Table:
    title: str
    headers: Sequence[str]
    rows: list[Sequence[object]]
    note: str = ""

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("|" + "|".join("---" if k == 0 else "---:" for k in range(len(self.headers))) + "|")
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}"


def _rate(matches: int, total: int) -> str:
    """A false-positive rate; with no match, the 95% upper bound by the rule of three."""
    if total == 0:
        return "-"
    if matches == 0:
        return f"0 (< {3.0 / total:.1e})"
    return f"{matches / total:.2e}"


def _per_list(matches: int, total: int) -> str:
    """Unrelated entries a query would match, on average, in a list of LIST_SIZE entries."""
    if total == 0:
        return "-"
    if matches == 0:
        return f"< {3.0 / total * LIST_SIZE:.2g}"
    return f"{matches / total * LIST_SIZE:.3g}"


def _label(record: Record) -> str:
    if record.spec.group == "scene":
        return f"scene {record.spec.seed - SCENE_SEED_BASE} ({record.kind})"  # type: ignore[operator]
    return record.spec.name.partition(":")[2] or record.spec.name


def recall_tables(corpus: Corpus, subset: np.ndarray | None = None, title_suffix: str = "") -> list[Table]:
    """Recall per transformation at the default radii (and PDQ with dihedral matching)."""
    keep = subset if subset is not None else np.ones(len(corpus.records), bool)
    count = int(keep.sum())
    dist = {algorithm: copy_distances(corpus, algorithm)[keep] for algorithm in ALGORITHMS}
    ok = quality_ok(corpus)[keep]
    dihedral = dihedral_copy_distances(corpus)[keep]
    radius = DEFAULT_RADII
    rows = []
    for t, name in enumerate(TRANSFORMS):
        cells: list[object] = [f"`{name}`"]
        cells += [_pct(float(np.mean(dist[a][:, t] <= radius[a]))) for a in ("phash", "dhash")]
        pdq_hit = (dist["pdq"][:, t] <= radius["pdq"]) & ok[:, t]
        cells.append(_pct(float(np.mean(pdq_hit))))
        if name in ORIENTATION:
            hit = (dihedral[:, ORIENTATION.index(name)] <= radius["pdq"]) & ok[:, t]
            cells.append(_pct(float(np.mean(hit))))
        else:
            cells.append(cells[-1])
        rows.append(cells)
    everyday = [TRANSFORMS_INDEX[name] for name in EVERYDAY]
    mean_row: list[object] = ["**mean of everyday edits**"]
    mean_row += [_pct(float(np.mean(dist[a][:, everyday] <= radius[a]))) for a in ("phash", "dhash")]
    pdq_mean = _pct(float(np.mean((dist["pdq"][:, everyday] <= radius["pdq"]) & ok[:, everyday])))
    mean_row += [pdq_mean, pdq_mean]
    rows.append(mean_row)
    headers = ("transformation", f"pHash r={radius['phash']}", f"dHash r={radius['dhash']}",
               f"PDQ r={radius['pdq']}", f"PDQ r={radius['pdq']} dihedral")
    note = (f"Share (%) of {count} originals whose copy is within the radius of the original. PDQ also needs "
            f"quality >= {PDQ_MIN_QUALITY} on both sides. Everyday edits = every row but mirror and rotations.")
    return [Table(f"Recall at the default radii{title_suffix}", headers, rows, note)]


TRANSFORMS_INDEX = {name: k for k, name in enumerate(TRANSFORMS)}


def kind_table(corpus: Corpus) -> Table:
    """Recall at the default radii per kind of original: where each hash is weak."""
    kinds = np.array([r.kind for r in corpus.records])
    everyday = [TRANSFORMS_INDEX[name] for name in EVERYDAY]
    hits = {a: copy_distances(corpus, a) <= DEFAULT_RADII[a] for a in ALGORITHMS}
    hits["pdq"] &= quality_ok(corpus)
    low = corpus.quality()[:, 0] < PDQ_MIN_QUALITY
    rows = []
    for kind in sorted(set(kinds), key=lambda k: (-int(np.sum(kinds == k)), k)):
        keep = kinds == kind
        cells: list[object] = [kind, int(keep.sum())]
        cells += [_pct(float(hits[a][keep][:, everyday].mean())) for a in ALGORITHMS]
        for name in ("downscale_0.5", "crop_2", "brightness_-20"):
            cells += [_pct(float(hits[a][keep][:, TRANSFORMS_INDEX[name]].mean())) for a in ("phash", "pdq")]
        cells.append(int(low[keep].sum()))
        rows.append(cells)
    headers = ["kind", "originals", "pHash everyday", "dHash everyday", "PDQ everyday"]
    for name in ("downscale_0.5", "crop_2", "brightness_-20"):
        headers += [f"pHash {name}", f"PDQ {name}"]
    headers.append(f"PDQ quality < {PDQ_MIN_QUALITY}")
    return Table("Recall (%) at the default radii by kind of original", headers, rows)


def distance_table(corpus: Corpus) -> Table:
    dist = {algorithm: copy_distances(corpus, algorithm) for algorithm in ALGORITHMS}
    q = corpus.quality()
    rows = []
    for t, name in enumerate(TRANSFORMS):
        cells: list[object] = [f"`{name}`"]
        for algorithm in ALGORITHMS:
            d = dist[algorithm][:, t]
            cells += [f"{np.median(d):.0f}", f"{np.percentile(d, 95):.0f}", f"{d.max()}"]
        cells.append(int(np.sum(q[:, 1 + t] < PDQ_MIN_QUALITY)))
        rows.append(cells)
    headers = ["transformation"]
    for label in ("pHash", "dHash", "PDQ"):
        headers += [f"{label} median", f"{label} p95", f"{label} max"]
    headers.append(f"copies with PDQ quality < {PDQ_MIN_QUALITY}")
    note = (f"Hamming distance from each copy to its original over all {len(corpus.records)} originals (pHash and"
            " dHash out of 64 bits, PDQ out of 256, PDQ regardless of quality).")
    return Table("Distance from copy to original", headers, rows, note)


def tradeoff_tables(corpus: Corpus, pairs: dict[str, Pairs]) -> list[Table]:
    """Per algorithm and radius: false-positive rate over all pairs next to recall."""
    ok = quality_ok(corpus)
    dihedral = dihedral_copy_distances(corpus)
    tables = []
    for algorithm in ALGORITHMS:
        dist = copy_distances(corpus, algorithm)
        variants = [(algorithm, pairs[algorithm])]
        if algorithm == "pdq":
            variants.append(("pdq dihedral", pairs["pdq_dihedral"]))
        rows = []
        for radius in RADII[algorithm]:
            hit = dist <= radius
            if algorithm == "pdq":
                hit &= ok
            everyday = hit[:, [TRANSFORMS_INDEX[n] for n in EVERYDAY]].mean(axis=0)
            worst = int(np.argmin(everyday))
            mark = " (default)" if radius == DEFAULT_RADII[algorithm] else ""
            cells: list[object] = [f"{radius}{mark}"]
            for _, p in variants:
                cells += [p.matches(radius), _rate(p.matches(radius), p.total), _per_list(p.matches(radius), p.total)]
            cells += [_pct(float(everyday.mean())), f"{_pct(float(everyday[worst]))} ({EVERYDAY[worst]})"]
            cells += [_pct(float(hit[:, TRANSFORMS_INDEX[n]].mean())) for n in HEADLINE]
            if algorithm == "pdq":
                flip = (dihedral[:, 0] <= radius) & ok[:, TRANSFORMS_INDEX["hflip"]]
                cells.append(_pct(float(flip.mean())))
            rows.append(cells)
        headers = ["radius"]
        for label, _ in variants:
            suffix = " (dihedral)" if "dihedral" in label else ""
            headers += [f"false pairs{suffix}", f"FPR{suffix}", f"per query in 1M{suffix}"]
        headers += ["recall everyday %", "worst everyday %"] + [f"{n} %" for n in HEADLINE]
        if algorithm == "pdq":
            headers.append("hflip dihedral %")
        total = variants[0][1].total
        note = (f"False pairs: distinct pairs of unrelated originals within the radius, out of {total:,}"
                + (f" (both PDQ qualities >= {PDQ_MIN_QUALITY})" if algorithm == "pdq" else "")
                + f"; FPR = false pairs / {total:,} (rule-of-three 95% bound when none); per query in 1M: the"
                f" unrelated entries one image would match in a list of {LIST_SIZE:,}. Recall columns in %.")
        tables.append(Table(f"{algorithm}: radius trade-off", headers, rows, note))
    return tables


def recall_by_radius_tables(corpus: Corpus) -> list[Table]:
    ok = quality_ok(corpus)
    tables = []
    for algorithm in ALGORITHMS:
        dist = copy_distances(corpus, algorithm)
        rows = []
        for t, name in enumerate(TRANSFORMS):
            hit = dist[:, t][:, None] <= np.array(RADII[algorithm])[None, :]
            if algorithm == "pdq":
                hit &= ok[:, t][:, None]
            rows.append([f"`{name}`", *(_pct(float(x)) for x in hit.mean(axis=0))])
        headers = ["transformation", *(f"r={r}" + ("*" if r == DEFAULT_RADII[algorithm] else "")
                                       for r in RADII[algorithm])]
        tables.append(Table(f"{algorithm}: recall (%) by radius", headers, rows, "* = current default."))
    return tables


def group_tables(corpus: Corpus, pairs: dict[str, Pairs], fixture_pairs: dict[str, Pairs]) -> list[Table]:
    """Where the false pairs at the default radii come from: corpus groups, scene kinds, closest pairs."""
    records = corpus.records
    groups = [("scene" if r.spec.group == "scene" else "photo") for r in records]
    size = Counter(groups)
    totals = {("photo", "photo"): size["photo"] * (size["photo"] - 1) // 2,
              ("scene", "scene"): size["scene"] * (size["scene"] - 1) // 2,
              ("photo", "scene"): size["photo"] * size["scene"]}
    rows = []
    for key, total in totals.items():
        cells: list[object] = [" x ".join(key), f"{total:,}"]
        for algorithm in ("phash", "dhash", "pdq", "pdq_dihedral"):
            radius = DEFAULT_RADII[algorithm.split("_")[0]]
            hits = sum(1 for i, j, d in pairs[algorithm].close
                       if d <= radius and tuple(sorted((groups[i], groups[j]))) == key)
            cells.append(_rate(hits, total) + f" ({hits})")
        rows.append(cells)
    # Text pages are the one kind that collides often (see the next table): the rate without them.
    text = [r.kind == "document" or r.spec.name == "skimage:page" or r.spec.name == "skimage:text" for r in records]
    others = len(records) - sum(text)
    total = others * (others - 1) // 2
    cells = ["all, without text pages", f"{total:,}"]
    for algorithm in ("phash", "dhash", "pdq", "pdq_dihedral"):
        radius = DEFAULT_RADII[algorithm.split("_")[0]]
        hits = sum(1 for i, j, d in pairs[algorithm].close if d <= radius and not text[i] and not text[j])
        cells.append(_rate(hits, total) + f" ({hits})")
    rows.append(cells)
    if fixture_pairs:
        total = fixture_pairs["phash"].total
        cells = [f"crawler.sample.images fixtures (contrast, {len(corpus.fixtures)} images)", f"{total:,}"]
        for algorithm in ("phash", "dhash", "pdq", "pdq_dihedral"):
            p = fixture_pairs[algorithm]
            radius = DEFAULT_RADII[algorithm.split("_")[0]]
            cells.append(_rate(p.matches(radius), p.total) + f" ({p.matches(radius)})")
        rows.append(cells)
    r = DEFAULT_RADII
    headers = ("pairs", "count", f"pHash r={r['phash']}", f"dHash r={r['dhash']}", f"PDQ r={r['pdq']}",
               f"PDQ r={r['pdq']} dihedral")
    tables = [Table("False-positive rate at the default radii by corpus group", headers, rows,
                    "FPR (false pairs in brackets). Fixture pairs are not part of the corpus figures.")]

    kinds = [r.kind for r in records]
    kind_rows = []
    for algorithm in ("phash", "dhash", "pdq", "pdq_dihedral"):
        radius = DEFAULT_RADII[algorithm.split("_")[0]]
        counts = Counter(" x ".join(sorted((kinds[i], kinds[j]))) for i, j, d in pairs[algorithm].close
                         if d <= radius)
        text = ", ".join(f"{k} {v}" for k, v in counts.most_common(6)) or "none"
        kind_rows.append([algorithm, text])
    tables.append(Table("False pairs at the default radii by kind of image", ("hash", "kind x kind: false pairs"),
                        kind_rows))

    close_rows = []
    for algorithm in ("phash", "dhash", "pdq", "pdq_dihedral"):
        for i, j, d in pairs[algorithm].nearest:
            close_rows.append([algorithm, d, _label(records[i]), _label(records[j])])
    tables.append(Table("Closest unrelated pairs", ("hash", "distance", "image", "image"), close_rows))
    return tables


def unrelated_table(pairs: dict[str, Pairs]) -> Table:
    """How close unrelated originals come: low quantiles of the pair distances, the margin behind a radius."""
    shares = (1e-5, 1e-4, 1e-3, 1e-2, 0.5)
    rows = []
    for algorithm, p in pairs.items():
        cumulative = np.cumsum(p.histogram)
        counted = int(cumulative[-1])
        cells: list[object] = [algorithm, f"{counted:,}", int(np.argmax(p.histogram > 0))]
        cells += [int(np.searchsorted(cumulative, share * counted)) for share in shares]
        rows.append(cells)
    headers = ("hash", "pairs counted", "min", "0.001%", "0.01%", "0.1%", "1%", "median")
    note = ("Distance below which that share of unrelated pairs falls (PDQ: pairs with both qualities >= "
            f"{PDQ_MIN_QUALITY}; dihedral: smallest of the query's 8 rotations/flips).")
    return Table("Distance between unrelated originals", headers, rows, note)


def corpus_table(corpus: Corpus) -> Table:
    records = corpus.records
    by_kind: dict[str, list[Record]] = {}
    for r in records:
        by_kind.setdefault(r.kind, []).append(r)
    rows = []
    for kind, group in sorted(by_kind.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        sides = np.array([max(r.width, r.height) for r in group])
        aspect = np.array([r.width / r.height for r in group])
        low = sum(1 for r in group if r.quality[0] < PDQ_MIN_QUALITY)
        q = np.array([r.quality[0] for r in group])
        rows.append([kind, len(group), f"{sides.min()}-{sides.max()}", f"{aspect.min():.2f}-{aspect.max():.2f}",
                     f"{np.median(q):.0f}", low])
    low_all = sum(1 for r in records if r.quality[0] < PDQ_MIN_QUALITY)
    rows.append(["**all**", len(records), "", "", f"{np.median([r.quality[0] for r in records]):.0f}", low_all])
    headers = ("kind", "originals", "long side px", "aspect w/h", "median PDQ quality",
               f"PDQ quality < {PDQ_MIN_QUALITY}")
    return Table("Corpus", headers, rows)


def timing_table(corpus: Corpus) -> Table:
    records = corpus.records + corpus.fixtures
    pixels = np.array([r.width * r.height for r in records]) / 1e3
    rows = []
    for key, what in (("decode", "decode the JPEG original to RGB"), ("phash", "pHash (grey + imagehash.phash)"),
                      ("dhash", "dHash (grey + imagehash.dhash)"), ("pdq", "PDQ (shrink to 512 + pdqhash.compute)"),
                      ("pdq_dihedral", "PDQ dihedral (shrink + compute_dihedral: all 8 hashes)"),
                      ("hash_bytes", "hash_bytes: md5+sha1+sha256, decode, all three")):
        ms = np.array([r.cpu_ms[key] for r in records])
        rows.append([what, f"{np.median(ms):.2f}", f"{ms.mean():.2f}", f"{np.percentile(ms, 95):.2f}"])
    note = (f"CPU time of one thread per original image (median {np.median(pixels):.0f} kpx, mean"
            f" {pixels.mean():.0f} kpx), measured with time.thread_time() on {platform.processor() or 'this CPU'}.")
    return Table("Time per image", ("step", "median ms", "mean ms", "p95 ms"), rows, note)


def flat_table() -> Table:
    """Hashes of single-colour images: pHash and dHash give every one the same code, PDQ flags them."""
    rows = []
    for colour in ((0, 0, 0), (255, 255, 255), (128, 128, 128), (14, 94, 51), (225, 240, 235)):
        digest = hashing.hash_bytes(encode(Image.new("RGB", (300, 200), colour), "JPEG", quality=ORIGINAL_QUALITY))
        rows.append([str(colour), digest.phash, digest.dhash, f"{(digest.pdq or '')[:16]}...", digest.pdq_quality])
    return Table("Single-colour images (300x200, JPEG 95)", ("RGB", "pHash", "dHash", "PDQ", "PDQ quality"), rows,
                 "Any two flat images are 0-1 bits apart for pHash and dHash; only PDQ's quality keeps them out.")


def transform_table() -> Table:
    return Table("Transformations", ("name", "what"), [[f"`{k}`", v[0]] for k, v in TRANSFORMS.items()])


# ---------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------


def specs(images: int, fixtures: int, photos: bool, seed: int) -> tuple[list[Spec], list[Spec]]:
    corpus = [Spec("scene", f"scene-{k}", SCENE_SEED_BASE + seed + k) for k in range(images)]
    if photos:
        corpus += [Spec("real", name) for name in real_photo_names()]
    contrast = [Spec("fixture", f"fixture-{k}", FIXTURE_SEED_BASE + seed + k) for k in range(fixtures)]
    return corpus, contrast


def run_all(todo: list[Spec], jobs: int) -> Iterator[Record]:
    if jobs <= 1:
        yield from map(measure, todo)
        return
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(measure, todo, chunksize=4)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="synthetic scenes in the corpus (default 2000)")
    parser.add_argument("--fixtures", type=int, default=300,
                        help="crawler.sample.images images in the contrast group (default 300)")
    parser.add_argument("--quick", action="store_true", help="200 scenes and 50 fixtures: a check in 1-3 minutes")
    parser.add_argument("--no-photos", action="store_true", help="leave the packaged photographs out")
    parser.add_argument("--seed", type=int, default=0, help="offset added to every seed (another corpus draw)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.quick:
        args.images, args.fixtures = 200, 50

    started = time.perf_counter()
    corpus_specs, fixture_specs = specs(args.images, args.fixtures, not args.no_photos, args.seed)
    todo = corpus_specs + fixture_specs
    records: list[Record] = []
    for record in run_all(todo, args.jobs):
        records.append(record)
        if len(records) % 200 == 0 or len(records) == len(todo):
            elapsed = time.perf_counter() - started
            logger.info("%d/%d originals hashed, %.0f s, about %.0f s to go", len(records), len(todo), elapsed,
                        elapsed / len(records) * (len(todo) - len(records)))
    hashed_s = time.perf_counter() - started
    corpus = Corpus(records[: len(corpus_specs)], records[len(corpus_specs):])
    mismatches = sum(r.dihedral_mismatch for r in records)
    if mismatches:
        logger.warning("%d originals: compute_dihedral's identity hash differs from hash_bytes' PDQ", mismatches)

    pairs = {a: corpus_pairs(corpus.records, a) for a in ALGORITHMS}
    pairs["pdq_dihedral"] = corpus_pairs(corpus.records, "pdq", dihedral=True)
    fixture_pairs: dict[str, Pairs] = {}
    if len(corpus.fixtures) > 1:
        fixture_pairs = {a: corpus_pairs(corpus.fixtures, a) for a in ALGORITHMS}
        fixture_pairs["pdq_dihedral"] = corpus_pairs(corpus.fixtures, "pdq", dihedral=True)
    total_s = time.perf_counter() - started

    photos = np.array([r.spec.group == "real" for r in corpus.records])
    tables = [corpus_table(corpus), transform_table(), *recall_tables(corpus)]
    if photos.any():
        tables += recall_tables(corpus, photos, f" - the {int(photos.sum())} real photographs only")
    tables += [kind_table(corpus), distance_table(corpus), unrelated_table(pairs), *tradeoff_tables(corpus, pairs),
               *recall_by_radius_tables(corpus), *group_tables(corpus, pairs, fixture_pairs), flat_table(),
               timing_table(corpus)]
    hashes = sum(len(r.phash) for r in records)
    header = (
        f"## refwatch hash accuracy: {len(corpus.records)} originals ({args.images} scenes, {int(photos.sum())} "
        f"photographs) x {len(TRANSFORMS)} transformations, {len(corpus.fixtures)} fixtures\n\n"
        f"`python bench/accuracy.py {' '.join(sys.argv[1:] if argv is None else argv)}` - {hashes:,} images hashed"
        f" in {hashed_s:.0f} s, {total_s:.0f} s in all, {args.jobs} job(s); Python {platform.python_version()},"
        f" numpy {np.__version__}, Pillow {Image.__version__}, ImageHash {_version('ImageHash')}, pdqhash"
        f" {_version('pdqhash')}; default radii {dict(DEFAULT_RADII)}, PDQ quality >= {PDQ_MIN_QUALITY}"
        + (f"; {mismatches} dihedral/hash_bytes PDQ mismatches" if mismatches else "") + ".\n"
    )
    text = header + "\n" + "\n".join(table.markdown() for table in tables)
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
        logger.info("tables written to %s", args.markdown)
    return 0


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
