"""The input cache: whole copies of ``s3://`` snapshots and hash lists, one download per machine.

``REFWATCH_INPUT_CACHE`` (setting, else the environment variable of that name, else
``<temp dir>/refwatch-inputs``), laid out as ``<bucket>/<sha256(key)[:16]>/<etag>/<object name>`` — the
object's own name, so ids made from file names and list names are those of a local copy (a list with a
compiled file sits in ``<etag>+<compiled etag>/``). A download goes to a temporary name and is renamed into
place when complete (a reader sees all of it or nothing), under a ``flock`` on ``<etag>.lock`` so that the
processes of one machine download an object once. The cache is not pruned: an object that changes leaves its
older copies behind, so delete old entries (or the whole folder) freely between runs. It holds snapshots and
hash lists only, the inputs the user named: never a fetched image body, which is hashed in memory and dropped
(the "bytes never persist" rule is about those and stays whole).

What reads S3 is ``crawler.storage.inputs.S3Inputs``; this module only knows folders, sizes and locks.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

#: The setting (and, when it is unset, the environment variable) naming the input cache folder.
CACHE_SETTING = "REFWATCH_INPUT_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_SETTING) or Path(tempfile.gettempdir()) / "refwatch-inputs")


def cache_entry(cache_dir: Path, bucket: str, key: str, version: str) -> Path:
    """The folder holding one version of an object (``version``: its ETag, or ETags joined by ``+``)."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return cache_dir / bucket / digest / re.sub(r"[^A-Za-z0-9+-]", "_", version)[:200]


def is_complete(path: Path, size: int) -> bool:
    """A cache entry is complete when it exists with the object's size (downloads are renamed in whole)."""
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def fill_once(target: Path, size: int, download: Callable[[Path], None], name: str) -> Path:
    """``target``, downloaded first unless complete: ``download(tmp)`` writes the whole object to a temporary
    file beside it, renamed to ``target`` once complete, under a lock that makes the other processes of the
    machine wait and then find it there. ``OSError`` when the cache cannot be written."""
    if is_complete(target, size):
        logger.debug("%s: in the input cache at %s", name, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # the lock sits beside the entry's folder, so no object name can be the lock's
    with locked(target.parent.with_name(target.parent.name + ".lock")):
        if is_complete(target, size):  # another process downloaded it while we waited
            return target
        for stale in target.parent.glob(f".{target.name}.[0-9]*.tmp"):  # from a download that died
            stale.unlink(missing_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        started = time.perf_counter()
        download(tmp)
        os.replace(tmp, target)
    logger.info("Downloaded %s (%d bytes) into the input cache in %.1f s: %s", name, size,
                time.perf_counter() - started, target)
    return target


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``, released on exit (or when the process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: downloads may then run twice, which the atomic rename makes harmless
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
