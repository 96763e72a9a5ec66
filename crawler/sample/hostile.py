"""Synthetic hostile bodies for the memory tests and the hostile-load benchmark: legal but huge, or tiny on the
wire and huge once decoded or inflated. All benign: gradients, black pixels, zeros."""

from __future__ import annotations

import io
import struct
import zlib

MiB = 1024 * 1024


#: The side of the largest square image within the default pixel limit (``math.isqrt`` of REFWATCH_MAX_PIXELS,
#: 48 M): the worst legal RGB image. Written out because this package imports nothing of refwatch's;
#: tests/test_memory.py checks that it follows the default.
DEFAULT_SIDE = 6928


def big_png(side: int = DEFAULT_SIDE) -> bytes:
    """A legal ``side`` x ``side`` RGB PNG (default: the largest square at the default pixel limit): smooth
    gradients and a coarse pattern, so it compresses to under a MB."""
    return heavy_image("PNG", "RGB", side, side, compress_level=1)


def heavy_image(image_format: str, mode: str, width: int, height: int, **params: object) -> bytes:
    """A legal ``width`` x ``height`` image in ``image_format`` (a Pillow format name: PNG, WEBP, JPEG2000,
    AVIF, JPEG with ``progressive=True``...) and ``mode`` (RGB, RGBA, L, CMYK...): the same gradients and
    pattern as ``big_png`` (an RGBA one gets a gradient of alpha), encoded with ``params``. For measuring what
    the worst legal image of each format costs to decode: how it compresses does not change that."""
    import numpy as np
    from PIL import Image

    x = np.arange(width, dtype=np.uint32)
    y = np.arange(height, dtype=np.uint32)
    red = np.broadcast_to((x * 255 // width).astype(np.uint8), (height, width))
    green = np.broadcast_to((y * 255 // height).astype(np.uint8)[:, None], (height, width))
    blue = (((y[:, None] // 500) + (x[None, :] // 500)) % 2 * 180 + 40).astype(np.uint8)
    image = Image.fromarray(np.dstack([red, green, blue]), "RGB")
    if mode == "RGBA":
        image.putalpha(Image.fromarray(255 - red // 2, "L"))
    elif mode != "RGB":
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, image_format, **params)
    return out.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit black PNG: a few kB on the wire, width x height pixels if anybody decoded it."""
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row * 1000) for _ in range(height // 1000)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def gzip_bomb(inflated: int) -> bytes:
    """``inflated`` zero bytes, gzip-compressed a MiB at a time (never all in memory)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    zeros = b"\x00" * MiB
    return b"".join(compressor.compress(zeros) for _ in range(inflated // MiB)) + compressor.flush()
