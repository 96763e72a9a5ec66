"""``LocalStore``: the object store as files in a local folder, for ``file://DIR`` URLs and plain paths.

Every write is atomic: the data goes to a temporary file beside its name, is fsynced, then renamed (or
linked) into place, so a reader sees a whole object or none, and a crash leaves at most an ignored
``.*.tmp`` file. Conditional writes are atomic too, across threads and processes on one machine:
create-only is a hard link of the finished temporary file, which fails if the name exists; replace-if-match,
plain replaces and deletes run under one ``fcntl`` lock file (``.lock``). The etag is the md5 of the content,
as S3's is for a plain put; listings leave it None rather than read every file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from crawler.storage.base import (
    NoSuchKey,
    ObjectInfo,
    PreconditionFailed,
    StoredObject,
    StoreError,
    check_key,
    content_etag,
)

logger = logging.getLogger(__name__)

_LOCK_NAME = ".lock"


class LocalStore:
    """Objects as files under ``root``; safe for several threads and processes on one machine."""

    def __init__(self, root: str | os.PathLike[str], *, url: str | None = None) -> None:
        self._root = Path(root).absolute()  # a later chdir must not move the store
        self._url = url if url is not None else f"file://{self._root}"
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use {self._root} as a store folder: {exc.strerror or exc}") from None
        if not self._root.is_dir():
            raise StoreError(f"cannot use {self._root} as a store folder: not a folder")

    @property
    def url(self) -> str:
        return self._url

    def get(self, key: str) -> StoredObject:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NoSuchKey(f"{self._url}: no object {key}") from None
        except OSError as exc:
            raise self._error(key, exc) from None
        return StoredObject(data, content_etag(data))

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        if if_none_match and if_match is not None:
            raise ValueError("if_none_match and if_match exclude each other")
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._write_tmp(path, data)
            try:
                if if_none_match:
                    self._link_new(tmp, path, key)
                else:
                    with self._locked():
                        if if_match is not None:
                            self._require_etag(path, key, if_match)
                        os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        except (StoreError, ValueError):
            raise
        except OSError as exc:
            raise self._error(key, exc) from None
        return content_etag(data)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            with self._locked():
                path.unlink(missing_ok=True)
        except (NotADirectoryError, IsADirectoryError):
            return
        except OSError as exc:
            raise self._error(key, exc) from None

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        base = self._root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self._root
        infos: list[ObjectInfo] = []
        for directory, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = Path(directory).relative_to(self._root).as_posix()
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if name.startswith(".") or not key.startswith(prefix):
                    continue
                if start_after is not None and key <= start_after:
                    continue
                try:
                    st = os.stat(os.path.join(directory, name))
                except FileNotFoundError:  # deleted between the walk and the stat
                    continue
                infos.append(ObjectInfo(key, st.st_size, None, datetime.fromtimestamp(st.st_mtime, UTC)))
        infos.sort(key=lambda info: info.key)
        yield from infos

    def check(self) -> None:
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise StoreError(f"{self._url}: folder {self._root} is not writable")

    def _path(self, key: str) -> Path:
        return self._root.joinpath(*check_key(key).split("/"))

    def _error(self, key: str, exc: OSError) -> StoreError:
        return StoreError(f"{self._url}: {key}: {exc.strerror or exc}")

    @staticmethod
    def _write_tmp(path: Path, data: bytes) -> Path:
        """The data in a fsynced temporary file beside ``path``: renamed or linked, it appears whole."""
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return Path(name)

    def _link_new(self, tmp: Path, path: Path, key: str) -> None:
        """Create-only: a hard link fails if the name exists, atomically, without a lock."""
        try:
            os.link(tmp, path)
            return
        except FileExistsError:
            raise PreconditionFailed(f"{self._url}: {key} exists") from None
        except OSError as exc:  # a file system without hard links: the same check under the lock
            logger.debug("hard links unavailable in %s (%s); using the lock", self._root, exc)
        with self._locked():
            if path.exists():
                raise PreconditionFailed(f"{self._url}: {key} exists")
            os.replace(tmp, path)

    def _require_etag(self, path: Path, key: str, etag: str) -> None:
        try:
            current = content_etag(path.read_bytes())
        except FileNotFoundError:
            raise PreconditionFailed(f"{self._url}: {key} does not exist") from None
        if current != etag:
            raise PreconditionFailed(f"{self._url}: {key} has changed")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One ``flock`` per store: replace-if-match, plain puts and deletes never interleave."""
        fd = os.open(self._root / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
