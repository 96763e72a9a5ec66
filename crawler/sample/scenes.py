"""Photo-like procedural scenes: synthetic, benign images with the statistics of real photographs.

``crawler.sample.images`` draws images for tests whose hashed coefficients sit far from every threshold;
these scenes instead have what makes real images hard for perceptual hashes - a 1/f ("pink") spectrum,
shared layouts (bright sky above darker ground, a centred subject, text on white), smooth gradients, soft and
hard shapes, textures, blur, vignetting, sensor noise - in seven kinds (landscape, still life, portrait,
texture, document, night, flat graphic) at sizes from 200 to 900 pixels a side in nine aspect ratios
(``scene_image(seed, long_side=...)`` picks the size). The matching accuracy study (bench/accuracy.py), the
hashing faithfulness tests and the throughput benchmark draw their corpora here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SCENE_KINDS: tuple[tuple[str, float], ...] = (
    ("landscape", 0.28),
    ("still_life", 0.24),
    ("portrait", 0.12),
    ("texture", 0.10),
    ("document", 0.09),
    ("night", 0.06),
    ("graphic", 0.11),
)
_ASPECTS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16), (2, 1), (5, 4))
_ASPECT_WEIGHTS = np.array([3, 4, 2, 4, 2, 3, 1, 1, 1], dtype=np.float64)


def scene_image(seed: int, long_side: tuple[float, float] = (200, 900)) -> tuple[Image.Image, str]:
    """A photo-like RGB scene and its kind; a pure function of ``seed`` and ``long_side`` (for given NumPy
    and Pillow). The long side is drawn log-uniformly from the ``long_side`` range."""
    rng = np.random.default_rng([0x5CE7E, seed])
    names = [name for name, _ in SCENE_KINDS]
    weights = np.array([w for _, w in SCENE_KINDS])
    kind = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    width, height = _scene_size(rng, kind, long_side)
    pixels = _PAINTERS[kind](rng, width, height)
    if kind not in ("document", "graphic"):
        pixels = _camera(rng, pixels)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB"), kind


def _scene_size(rng: np.random.Generator, kind: str, long_side_range: tuple[float, float]) -> tuple[int, int]:
    if kind == "document":
        aw, ah = ((1000, 1414), (16, 9), (9, 16))[int(rng.integers(3))]
    else:
        aw, ah = _ASPECTS[int(rng.choice(len(_ASPECTS), p=_ASPECT_WEIGHTS / _ASPECT_WEIGHTS.sum()))]
    low, high = long_side_range
    long_side = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    scale = long_side / max(aw, ah)
    return max(16, round(aw * scale)), max(16, round(ah * scale))


def _pink(rng: np.random.Generator, width: int, height: int, alpha: float, work: int = 256) -> np.ndarray:
    """Zero-mean, unit-deviation noise with a 1/f**alpha amplitude spectrum (alpha ~1 for photos)."""
    gw, gh = min(width, work), min(height, work)
    fy = np.fft.fftfreq(gh)[:, None]
    fx = np.fft.rfftfreq(gw)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    spectrum = (rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape)) / radius**alpha
    spectrum[0, 0] = 0.0
    field_ = np.fft.irfft2(spectrum, s=(gh, gw)).astype(np.float32)
    field_ /= max(float(field_.std()), 1e-6)
    if (gw, gh) != (width, height):
        field_ = np.asarray(Image.fromarray(field_, "F").resize((width, height), Image.Resampling.BICUBIC))
    return field_


def _hsv(rng: np.random.Generator, hue: tuple[float, float] = (0.0, 1.0), sat: tuple[float, float] = (0.2, 0.9),
         val: tuple[float, float] = (0.2, 0.95)) -> np.ndarray:
    """A random colour (0-255 floats) drawn in HSV ranges; hue ranges may wrap past 1."""
    h = rng.uniform(*hue) % 1.0
    s = rng.uniform(*sat)
    v = rng.uniform(*val)
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))[i]
    return np.array(rgb, dtype=np.float32) * 255.0


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return (xs + 0.5) / width, (ys + 0.5) / height


def _ramp(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """A linear colour ramp from c0 to c1 in a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * (u - 0.5) + np.sin(angle) * (v - 0.5)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return c0 + t[..., None] * (c1 - c0)


def _mask(width: int, height: int, draw: Callable[[ImageDraw.ImageDraw], None], soften: float = 0.0) -> np.ndarray:
    """A 0..1 float mask drawn with ImageDraw, optionally feathered by a Gaussian blur of ``soften`` px."""
    canvas = Image.new("L", (width, height), 0)
    draw(ImageDraw.Draw(canvas))
    if soften > 0:
        canvas = canvas.filter(ImageFilter.GaussianBlur(soften))
    return np.asarray(canvas, dtype=np.float32)[..., None] / 255.0


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray | float) -> np.ndarray:
    return img * (1.0 - mask) + colour * mask


def _random_shape(rng: np.random.Generator, width: int, height: int, cx: float, cy: float, rx: float,
                  ry: float) -> Callable[[ImageDraw.ImageDraw], None]:
    box = ((cx - rx) * width, (cy - ry) * height, (cx + rx) * width, (cy + ry) * height)
    kind = int(rng.integers(3))
    if kind == 0:
        return lambda d: d.ellipse(box, fill=255)
    if kind == 1:
        return lambda d: d.rectangle(box, fill=255)
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 8))))
    radii = rng.uniform(0.6, 1.0, size=angles.size)
    points = [(float((cx + rx * r * np.cos(a)) * width), float((cy + ry * r * np.sin(a)) * height))
              for a, r in zip(angles, radii)]
    return lambda d: d.polygon(points, fill=255)


def _textured(rng: np.random.Generator, width: int, height: int, colour: np.ndarray, amount: float) -> np.ndarray:
    """``colour`` modulated by pink noise of a random grain: a surface, not a flat fill."""
    noise = _pink(rng, width, height, rng.uniform(0.9, 1.8))[..., None]
    return colour[None, None, :] * (1.0 + amount * noise)


def _landscape(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Sky over textured ground at a tilted, ridged horizon; clouds, sometimes a sun, trees, buildings."""
    u, v = _grid(width, height)
    horizon = rng.uniform(0.25, 0.7) + rng.uniform(-0.12, 0.12) * (u - 0.5)
    ridge = _pink(rng, width, 1, 1.6)[0]  # the skyline: 1-D pink noise
    horizon = horizon - rng.uniform(0.0, 0.12) * np.abs(ridge)[None, :]
    sky_top = _hsv(rng, (0.52, 0.68), (0.2, 0.7), (0.55, 1.0))
    sky_low = _hsv(rng, (0.0, 1.0), (0.0, 0.5), (0.7, 1.0)) if rng.random() < 0.3 else sky_top * 1.15
    t = np.clip(v / np.maximum(horizon, 0.05), 0, 1)[..., None]
    img = sky_top + t * (sky_low - sky_top)
    clouds = np.clip(_pink(rng, width, height, rng.uniform(1.8, 2.6)) - rng.uniform(0.0, 1.2), 0, None)[..., None]
    img = img + clouds * rng.uniform(20, 60)
    ground = _hsv(rng, (0.05, 0.4), (0.2, 0.8), (0.15, 0.6))
    ground_img = _textured(rng, width, height, ground, rng.uniform(0.15, 0.45))
    ground_img *= (0.75 + 0.5 * v)[..., None] if rng.random() < 0.5 else (1.2 - 0.4 * v)[..., None]
    below = (v > horizon)[..., None].astype(np.float32)
    img = img * (1 - below) + ground_img * below
    if rng.random() < 0.35:  # sun or moon
        cx, cy = rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)
        glow = np.exp(-((u - cx) ** 2 * (width / height) ** 2 + (v - cy) ** 2) / (2 * rng.uniform(0.01, 0.05) ** 2))
        img = img + glow[..., None] * _hsv(rng, (0.05, 0.18), (0.0, 0.5), (0.8, 1.0)) * 0.8
    for _ in range(int(rng.integers(0, 7))):  # trees and buildings standing on the horizon
        cx = rng.uniform(0, 1)
        base = float(horizon[0, min(width - 1, int(cx * width))])
        base += rng.uniform(0.0, 0.15)
        if rng.random() < 0.5:
            w, h = rng.uniform(0.02, 0.12), rng.uniform(0.08, 0.35)
            box = (cx - w) * width, (base - h) * height, (cx + w) * width, base * height
            m = _mask(width, height, lambda d, b=box: d.rectangle(b, fill=255))
            img = _paint(img, m, _textured(rng, width, height, _hsv(rng, val=(0.2, 0.8), sat=(0, 0.3)), 0.2))
        else:
            r = rng.uniform(0.03, 0.1)
            m = _mask(width, height, lambda d, c=cx, b=base, r=r: d.ellipse(
                ((c - r) * width, (b - 3 * r) * height, (c + r) * width, (b - r * 0.5) * height), fill=255), 1.0)
            img = _paint(img, m, _textured(rng, width, height, _hsv(rng, (0.2, 0.4), (0.4, 0.9), (0.1, 0.45)), 0.4))
    return img


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A blurred indoor backdrop: a two-colour ramp, low-frequency blotches, often a table edge."""
    u, v = _grid(width, height)
    img = _ramp(rng, u, v, _hsv(rng), _hsv(rng))
    img = img * (1.0 + 0.25 * _pink(rng, width, height, 2.4)[..., None])
    if rng.random() < 0.6:
        edge = rng.uniform(0.45, 0.85) + rng.uniform(-0.1, 0.1) * (u - 0.5)
        below = (v > edge)[..., None].astype(np.float32)
        table = _textured(rng, width, height, _hsv(rng, val=(0.2, 0.9)), rng.uniform(0.05, 0.3))
        img = img * (1 - below) + table * below
    return img


def _still_life(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Lit, textured objects with soft shadows on an indoor backdrop."""
    img = _background(rng, width, height)
    u, v = _grid(width, height)
    # Surfaces share three noise fields (with their own colour and strength): a pink-noise field per shape
    # would double the cost of the corpus and look no different.
    grains = [_pink(rng, width, height, rng.uniform(0.9, 1.8))[..., None] for _ in range(3)]
    for _ in range(int(rng.integers(3, 13))):
        cx, cy = rng.uniform(0.05, 0.95), rng.uniform(0.1, 0.95)
        rx, ry = rng.uniform(0.04, 0.25), rng.uniform(0.04, 0.25)
        shape = _random_shape(rng, width, height, cx, cy, rx, ry)
        soft = float(rng.uniform(0, 3)) if rng.random() < 0.4 else 0.0
        shadow = _mask(width, height, _random_shape(rng, width, height, cx + 0.03, cy + 0.03, rx, ry),
                       0.02 * max(width, height))
        img = img * (1.0 - 0.45 * shadow)
        m = _mask(width, height, shape, soft)
        colour = _hsv(rng) * (1.0 + rng.uniform(0.0, 0.35) * grains[int(rng.integers(3))])
        light = _ramp(rng, u, v, np.float32(rng.uniform(0.5, 0.9)), np.float32(rng.uniform(1.0, 1.4)))
        img = _paint(img, m, colour * light)
    return img


def _portrait(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A centred head and shoulders on a defocused backdrop: the layout many photos share."""
    img = np.asarray(Image.fromarray(np.clip(_background(rng, width, height), 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(0.01 * max(width, height))), dtype=np.float32)
    u, v = _grid(width, height)
    cx, cy = rng.uniform(0.35, 0.65), rng.uniform(0.3, 0.5)
    s = float(rng.uniform(0.12, 0.25))  # head half-height, as a share of the image height
    ax = s * height / width  # head half-width as a share of the width: round whatever the aspect ratio
    cloth = _textured(rng, width, height, _hsv(rng, val=(0.1, 0.8)), 0.15)
    img = _paint(img, _mask(width, height, lambda d: d.ellipse(
        ((cx - 2.6 * ax) * width, (cy + 1.1 * s) * height, (cx + 2.6 * ax) * width, (cy + 4.5 * s) * height),
        fill=255), 2.0), cloth)
    skin = _hsv(rng, (0.02, 0.1), (0.2, 0.6), (0.35, 0.95))
    hair = _hsv(rng, (0.02, 0.12), (0.2, 0.8), (0.05, 0.8))
    img = _paint(img, _mask(width, height, lambda d: d.ellipse(
        ((cx - 1.15 * ax) * width, (cy - 1.3 * s) * height, (cx + 1.15 * ax) * width, (cy + 0.7 * s) * height),
        fill=255), 2.0), _textured(rng, width, height, hair, 0.3))
    img = _paint(img, _mask(width, height, lambda d: d.rectangle(
        ((cx - 0.35 * ax) * width, (cy + 0.5 * s) * height, (cx + 0.35 * ax) * width, (cy + 1.4 * s) * height),
        fill=255), 1.0), skin * 0.85)
    light = _ramp(rng, u, v, np.float32(0.75), np.float32(1.15))
    img = _paint(img, _mask(width, height, lambda d: d.ellipse(
        ((cx - ax) * width, (cy - s) * height, (cx + ax) * width, (cy + s * 1.05) * height), fill=255), 1.5),
        skin * light)
    for side in (-1, 1):  # eyes
        ex, ey = cx + side * 0.4 * ax, cy - 0.15 * s
        img = _paint(img, _mask(width, height, lambda d, ex=ex, ey=ey: d.ellipse(
            ((ex - 0.14 * ax) * width, (ey - 0.06 * s) * height, (ex + 0.14 * ax) * width, (ey + 0.06 * s) * height),
            fill=255), 0.5), np.float32(rng.uniform(20, 60)))
    img = _paint(img, _mask(width, height, lambda d: d.ellipse(
        ((cx - 0.3 * ax) * width, (cy + 0.45 * s) * height, (cx + 0.3 * ax) * width, (cy + 0.58 * s) * height),
        fill=255), 0.5), skin * 0.6)
    return img


def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A close-up surface filling the frame: gravel, fabric, bricks or pebbles."""
    u, v = _grid(width, height)
    base = _hsv(rng, val=(0.25, 0.85))
    choice = int(rng.integers(4))
    if choice == 0:  # gravel, grass, bark: strong pink noise with fine grain
        return _textured(rng, width, height, base, rng.uniform(0.3, 0.6)) + 12 * _pink(
            rng, width, height, 0.6, work=512)[..., None]
    if choice == 1:  # fabric, sand ripples: an irregular grating
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(8, 40)
        warp = _pink(rng, width, height, 2.0)
        phase = 2 * np.pi * freq * (np.cos(angle) * u + np.sin(angle) * v) + rng.uniform(0.5, 3) * warp
        return base * (1 + rng.uniform(0.15, 0.4) * np.sin(phase))[..., None] * (
            1 + 0.15 * _pink(rng, width, height, 1.5))[..., None]
    if choice == 2:  # bricks or tiles
        rows = int(rng.integers(6, 25))
        cols = max(2, int(rows * width / height / rng.uniform(1.5, 3)))
        row = np.floor(v * rows)
        shift = (row % 2) * 0.5 if rng.random() < 0.7 else 0.0
        col = np.floor(u * cols + shift)
        cell = (row * 131 + col * 17) % 29 / 29.0
        mortar = ((v * rows) % 1 < 0.08) | (((u * cols + shift) % 1) < 0.08 * rows / cols)
        img = base * (0.8 + 0.4 * cell)[..., None]
        img = np.where(mortar[..., None], _hsv(rng, sat=(0, 0.2), val=(0.5, 0.9)), img)
        return img * (1 + 0.2 * _pink(rng, width, height, 1.2))[..., None]
    # Pebbles or leaves: many small shapes, drawn as labels into one canvas (one full-size pass, not 100).
    count = int(rng.integers(40, 120))
    labels = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(labels)
    for index in range(1, count + 1):
        cx, cy = rng.uniform(0, 1, size=2)
        r = rng.uniform(0.01, 0.06)
        ry = r * width / height
        box = ((cx - r) * width, (cy - ry) * height, (cx + r) * width, (cy + ry) * height)
        (draw.ellipse if rng.random() < 0.6 else draw.rectangle)(box, fill=index)
    palette = np.empty((count + 1, 3), dtype=np.float32)
    palette[0] = base * 0.6
    palette[1:] = base * rng.uniform(0.5, 1.5, size=(count, 1)) + rng.normal(0, 15, size=(count, 3))
    img = palette[np.asarray(labels)]
    return img * (1 + 0.2 * _pink(rng, width, height, 1.4))[..., None]


def _document(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A page or screenshot: lines of word-like blocks on paper, sometimes a header bar and a picture."""
    dark_mode = rng.random() < 0.15
    paper = _hsv(rng, sat=(0.0, 0.08), val=(0.08, 0.18) if dark_mode else (0.9, 1.0))
    ink = _hsv(rng, sat=(0.0, 0.4), val=(0.8, 0.95) if dark_mode else (0.0, 0.3))
    img = np.broadcast_to(paper, (height, width, 3)).astype(np.float32).copy()
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    margin_x, y = rng.uniform(0.05, 0.15) * width, rng.uniform(0.04, 0.12) * height
    if rng.random() < 0.5:  # a coloured header bar
        bar = rng.uniform(0.05, 0.12) * height
        img[: int(bar)] = _hsv(rng, sat=(0.3, 0.9), val=(0.3, 0.9))
        y += bar
    font = max(3.0, rng.uniform(0.008, 0.025) * height)
    if rng.random() < 0.4:  # a picture in the page
        pw, ph = rng.uniform(0.3, 0.8) * width, rng.uniform(0.15, 0.35) * height
        px = margin_x if rng.random() < 0.5 else (width - pw) / 2
        block = np.clip(_still_life(rng, max(8, int(pw)), max(8, int(ph))), 0, 255)
        img[int(y): int(y) + block.shape[0], int(px): int(px) + block.shape[1]] = block[
            : height - int(y), : width - int(px)]
        y += ph + font
    while y < height * rng.uniform(0.8, 0.95):
        x = margin_x
        line_end = width - margin_x * rng.uniform(0.8, 1.2)
        if rng.random() < 0.12:  # paragraph break or heading
            y += font * rng.uniform(0.8, 2.0)
        while x < line_end:
            word = font * rng.uniform(1.0, 5.0)
            draw.rectangle((x, y, min(x + word, line_end), y + font), fill=255)
            x += word + font * 0.6
        y += font * rng.uniform(1.5, 2.0)
    ink_mask = np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.4)), dtype=np.float32)[..., None] / 255.0
    return _paint(img, ink_mask * rng.uniform(0.6, 0.95), ink)


def _night(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A dark, low-contrast frame with a few glowing lights."""
    u, v = _grid(width, height)
    img = _hsv(rng, (0.55, 0.75), (0.3, 0.8), (0.02, 0.12)) * (1 + 0.5 * _pink(rng, width, height, 1.8))[..., None]
    for _ in range(int(rng.integers(2, 15))):
        cx, cy = rng.uniform(0, 1), rng.uniform(0.2, 1)
        sigma = rng.uniform(0.005, 0.06)
        glow = np.exp(-((u - cx) ** 2 * (width / height) ** 2 + (v - cy) ** 2) / (2 * sigma**2))
        img = img + glow[..., None] * _hsv(rng, sat=(0.0, 0.8), val=(0.6, 1.0)) * rng.uniform(0.5, 1.5)
    return img


def _graphic(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A flat illustration, banner or logo: few colours, sharp edges, no noise."""
    palette = [_hsv(rng, sat=(0.3, 1.0), val=(0.3, 1.0)) for _ in range(int(rng.integers(2, 6)))]
    palette.append(_hsv(rng, sat=(0.0, 0.1), val=(0.9, 1.0)))
    if rng.random() < 0.4:
        u, v = _grid(width, height)
        img = _ramp(rng, u, v, palette[0], palette[-1])
    else:
        background = int(rng.integers(len(palette)))
        img = np.broadcast_to(palette[background], (height, width, 3)).astype(np.float32).copy()
        palette.pop(background)  # shapes never take the background's colour: a flat page is not a graphic
    for _ in range(int(rng.integers(2, 9))):
        cx, cy = rng.uniform(0, 1, size=2)
        rx, ry = rng.uniform(0.05, 0.45, size=2)
        img = _paint(img, _mask(width, height, _random_shape(rng, width, height, cx, cy, rx, ry)),
                     palette[int(rng.integers(len(palette)))])
    return img


def _camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """What a camera adds: exposure and gamma, sometimes defocus and vignetting, always sensor noise."""
    height, width = img.shape[:2]
    img = np.clip(img * rng.uniform(0.8, 1.2), 0, 255)
    img = 255.0 * (img / 255.0) ** rng.uniform(0.8, 1.25)
    if rng.random() < 0.3:
        blurred = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))
        img = np.asarray(blurred, dtype=np.float32)
    if rng.random() < 0.4:
        u, v = _grid(width, height)
        img = img * (1.0 - rng.uniform(0.2, 0.6) * ((u - 0.5) ** 2 + (v - 0.5) ** 2))[..., None]
    return img + rng.normal(0, rng.uniform(0.5, 4.0), size=(height, width, 1)).astype(np.float32)


_PAINTERS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "landscape": _landscape,
    "still_life": _still_life,
    "portrait": _portrait,
    "texture": _texture,
    "document": _document,
    "night": _night,
    "graphic": _graphic,
}
