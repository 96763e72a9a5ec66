"""Synthetic hostile bodies for the memory tests and the hostile-load benchmark: legal but huge, or tiny on the
wire and huge once decoded or inflated. All benign: gradients, black pixels, zeros."""

from __future__ import annotations

import io
import struct
import zlib

MiB = 1024 * 1024


def big_png(side: int = 8000) -> bytes:
    """A legal ``side`` x ``side`` RGB PNG (8000: 64 megapixels, the default limit): smooth gradients and a
    coarse pattern, so it compresses to a few MB."""
    import numpy as np
    from PIL import Image

    x = np.arange(side, dtype=np.uint32)
    red = np.broadcast_to((x * 255 // side).astype(np.uint8), (side, side))
    blue = (((x[:, None] // 500) + (x[None, :] // 500)) % 2 * 180 + 40).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(np.dstack([red, red.T, blue]), "RGB").save(out, "PNG", compress_level=1)
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
