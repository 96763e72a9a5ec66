"""A file of named numpy arrays that opens memory-mapped: the format of the Hamming index and compiled lists.

Layout: a 16-byte preamble (8-byte magic naming the kind of file, version, header length), a JSON header (the
caller's fields plus every array's dtype, shape and offset) and the raw arrays at 64-byte boundaries, so a
``(n, 4)`` uint64 PDQ row never straddles two cache lines. ``read_arrays`` maps them read-only
(``np.memmap``): a file of gigabytes opens in milliseconds and its pages are shared with the page cache
instead of copied. Only plain dtypes are accepted (no pickles).

Writes go to a temporary file beside the target, fsynced, then renamed: a reader sees the old file or the
new one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

ALIGN: Final = 64


class ArrayFileError(ValueError):
    """A file that is not a readable array file of the expected kind; the message names the file."""


def write_arrays(target: str | os.PathLike[str], magic: bytes, version: int, header: Mapping[str, Any],
                 arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``header`` and ``arrays`` to ``target`` atomically (``magic`` is 8 bytes naming the kind)."""
    if len(magic) != 8:
        raise ValueError("magic must be 8 bytes")
    target = Path(target)
    entries, offset = {}, 0
    for name, array in arrays.items():
        entries[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "offset": offset}
        offset += -(-array.nbytes // ALIGN) * ALIGN
    head = json.dumps({**header, "arrays": entries}).encode()
    data_start = -(-(16 + len(head)) // ALIGN) * ALIGN
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(magic + version.to_bytes(4, "little") + len(head).to_bytes(4, "little") + head)
            for name, array in arrays.items():
                handle.seek(data_start + entries[name]["offset"])
                handle.write(np.ascontiguousarray(array).data)
            handle.truncate(data_start + offset)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_arrays(where: str | os.PathLike[str], magic: bytes, version: int, *, mmap: bool = True,
                what: str = "array file") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(header, arrays)`` of a file ``write_arrays`` wrote with this ``magic`` and ``version``.

    Arrays are read-only memory maps unless ``mmap=False`` (then read into 64-byte aligned memory).
    ``ArrayFileError`` names the file for a wrong kind, version, header or size (a truncated file).
    """
    where = os.fspath(where)
    try:
        size = os.path.getsize(where)
        with open(where, "rb") as handle:
            preamble = handle.read(16)
            if len(preamble) < 16 or preamble[:8] != magic:
                raise ArrayFileError(f"{where}: not a refwatch {what}")
            found = int.from_bytes(preamble[8:12], "little")
            if found != version:
                raise ArrayFileError(f"{where}: {what} version {found}, this refwatch reads {version}")
            head = handle.read(int.from_bytes(preamble[12:16], "little"))
            header = json.loads(head)
            if not isinstance(header, dict):
                raise ArrayFileError(f"{where}: the header is not an object")
    except FileNotFoundError:
        raise ArrayFileError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArrayFileError(f"{where}: cannot read the header ({type(exc).__name__})") from None
    data_start = -(-(16 + len(head)) // ALIGN) * ALIGN
    arrays: dict[str, np.ndarray] = {}
    for name, spec in dict(header.pop("arrays", None) or {}).items():
        try:
            dtype, shape, offset = np.dtype(spec["dtype"]), tuple(int(d) for d in spec["shape"]), int(spec["offset"])
        except (KeyError, TypeError, ValueError):
            raise ArrayFileError(f"{where}: bad description of array {name!r}") from None
        count = math.prod(shape)
        if dtype.hasobject or min(shape, default=0) < 0 or offset < 0 \
                or data_start + offset + count * dtype.itemsize > size:
            raise ArrayFileError(f"{where}: array {name!r} does not fit in the file (truncated?)")
        if count == 0:
            array = np.zeros(shape, dtype=dtype)
        elif mmap:
            array = np.memmap(where, dtype=dtype, mode="r", offset=data_start + offset, shape=shape).view(np.ndarray)
        else:
            array = aligned(shape, dtype)
            with open(where, "rb") as handle:
                handle.seek(data_start + offset)
                if handle.readinto(memoryview(array).cast("B")) != array.nbytes:
                    raise ArrayFileError(f"{where}: array {name!r} is cut short")
        array.flags.writeable = False
        arrays[name] = array
    return header, arrays


def aligned(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An empty C array starting on a 64-byte boundary.

    numpy's own allocations are 16-byte aligned: half of the 32-byte PDQ rows would cost two cache misses
    instead of one, which made the index's gathers ~1.7x slower than from the (page-aligned) mapped file.
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    buffer = np.empty(size + ALIGN, dtype=np.uint8)
    start = -buffer.ctypes.data % ALIGN
    return buffer[start : start + size].view(dtype).reshape(shape)
