"""Snapshots that are not local files (``s3://BUCKET/KEY``): what the readers need from whoever can reach them.

The readers import nothing of ``crawler.storage`` (tests/test_layout.py), so they name what they need in
``RemoteSnapshots`` and take an implementation from the caller (``crawler.storage.inputs.S3Inputs``):

* ``open_ranged(url)``: a seekable, read-only binary file whose reads are ranged GETs. A Parquet snapshot is
  read through it, so planning reads only the footer and a shard only its own row groups.
* ``local_copy(url)``: a local file holding the whole object, under the object's own file name (ids made from
  file names, such as ``name:row`` or ``name@offset#n``, are then those of a local copy of the same file). The
  other formats are read from their start anyway, one shard a file, so they are read from this copy.

Both raise ``SnapshotError`` (one line naming the URL) when the object cannot be reached. A remote file that
fails *while* it is read raises its own error, never ``OSError``: that is not damage in the file but a
failed read, and the crawl must stop (and a shard be tried again) rather than skip the rows as corrupt.

Callers that cannot pass an implementation in (the replay spider opens snapshots by name alone) get the one
installed for the process with ``use_remote_snapshots``: the runner installs it from the settings before any
snapshot is opened, the way the process's S3 endpoint is one setting for the whole process.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO, Protocol

#: URL schemes the readers hand to a ``RemoteSnapshots``.
REMOTE_SCHEMES = ("s3",)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


class RemoteSnapshots(Protocol):
    def open_ranged(self, url: str) -> BinaryIO:
        """The object as a seekable binary file whose reads fetch only the bytes asked for."""
        ...

    def local_copy(self, url: str) -> Path:
        """A local file with the whole object in it, named like the object."""
        ...


_installed: RemoteSnapshots | None = None


def url_scheme(path: object) -> str | None:
    """The lowercase scheme of ``path`` if it is written as a URL (``s3://...``), else None (a local path)."""
    match = _SCHEME.match(str(path))
    return match.group(1).lower() if match else None


def use_remote_snapshots(remote: RemoteSnapshots | None) -> RemoteSnapshots | None:
    """Install ``remote`` as this process's way to open ``s3://`` snapshots; returns the one it replaces."""
    global _installed
    previous, _installed = _installed, remote
    return previous


def installed_remote_snapshots() -> RemoteSnapshots | None:
    return _installed
