"""One version of an S3 object as a read-only, seekable file whose every read is a ranged GET.

What the Parquet reader reads an ``s3://`` snapshot through (``crawler.storage.inputs.S3Inputs.open_ranged``):
pyarrow seeks to the footer and then to the column chunks of the row groups it wants, so a shard costs its
own bytes. The GETs themselves (retries, the ``If-Match`` that pins the version) are the reader's.
"""

from __future__ import annotations

import io
from typing import Any, Protocol


class RangeReader(Protocol):
    def read_range(self, url: str, bucket: str, key: str, etag: str, start: int, stop: int) -> bytes: ...


class RangedObject(io.RawIOBase):
    """Nothing is buffered here (pyarrow reads through its own 1 MiB buffer) and no connection is held between
    reads, so a reader may keep it open through a long crawl. A read that fails raises the reader's
    ``StoreError``, not ``OSError``: a failed read is not damage in the file.
    """

    def __init__(self, reader: RangeReader, url: str, bucket: str, key: str, size: int, etag: str) -> None:
        super().__init__()
        self.url = url
        self.size = size
        self._reader = reader
        self._where = (url, bucket, key, etag)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        stop = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        if stop <= self._pos:
            return b""
        data = self._reader.read_range(*self._where, self._pos, stop)
        self._pos = stop
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer).cast("B")))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)
