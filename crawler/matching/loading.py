"""Loading hash lists: a compiled file while it is current, else the source file parsed.

The one entry point the crawl, ``refwatch hashlist`` and the runner's input check share, so every list is
read the same way and once per crawl.

A list named by an ``s3://BUCKET/KEY`` URL is fetched by the caller's ``RemoteLists`` (``crawler.storage.inputs``:
this package imports nothing of ``crawler.storage``) into a local cache, once per machine, and then loaded
exactly as a local list is: parsed, or its compiled file (``KEY.rwidx`` beside it on S3, copied beside the
cached list) memory-mapped from the cache. Locally a compiled file is used while the list keeps the size and
modification time it recorded; an S3 object has no such time, so there the compiled object must be no older
than the list's (the storage side checks that) and record the list's size, and the cached copy is then given
the recorded time so the ordinary check accepts it. Messages and ``HashList.path`` name the URL.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from crawler.matching import compiled
from crawler.matching.arrayfile import read_arrays
from crawler.matching.compiled import load_compiled
from crawler.matching.formats import parse_hashlist
from crawler.matching.hashlist import HashList, HashListError, check_algorithm, parse_hashlist_spec

logger = logging.getLogger(__name__)


class LoadedHashLists(tuple[HashList, ...]):
    """Loaded lists that can travel in Scrapy settings: Scrapy deep-copies settings for each crawler, which
    would copy every list (and read a memory-mapped one into memory); these are read-only, so a copy is
    the same object."""

    def __deepcopy__(self, memo: dict[int, object]) -> LoadedHashLists:
        return self


class RemoteLists(Protocol):
    """How lists named by URL reach this machine (``crawler.storage.inputs.S3Inputs`` implements it)."""

    def local_copies(self, url: str, companion: str | None) -> tuple[Path, Path | None]:
        """A local copy of the object named like it, and a copy of ``url + companion`` beside it if that
        exists and is no older than the object (else None)."""
        ...


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def load_hashlists(specs: Iterable[str], algorithm: str | None = None, *,
                   skip_bad_lines: bool = False, remote: RemoteLists | None = None) -> LoadedHashLists:
    """Load every ``[NAME=]PATH`` list (PATH may be an ``s3://`` URL, fetched through ``remote``); two lists
    of one name, or any bad list, raise ``HashListError``."""
    lists: list[HashList] = []
    for spec in specs:
        name, path = parse_hashlist_spec(spec)
        if any(hl.name == name for hl in lists):
            raise HashListError(spec, None, f"a second list named {name!r}; give each a distinct NAME=")
        if _URL.match(path):
            hashlist = load_remote_hashlist(path, remote, name=name, algorithm=algorithm,
                                            skip_bad_lines=skip_bad_lines)
        else:
            hashlist = load_hashlist(path, name=name, algorithm=algorithm, skip_bad_lines=skip_bad_lines)
        lists.append(hashlist)
    return LoadedHashLists(lists)


def load_remote_hashlist(url: str, remote: RemoteLists | None, *, name: str, algorithm: str | None = None,
                         skip_bad_lines: bool = False) -> HashList:
    """``load_hashlist`` of the local copy ``remote`` keeps of the list at ``url`` (and of its compiled file)."""
    if not url.lower().startswith("s3://"):
        raise HashListError(url, None, "unsupported URL scheme: a hash list is a local path or s3://BUCKET/KEY")
    if remote is None:
        raise HashListError(url, None, "an s3:// hash list needs S3 access, which this command does not set up")
    copy, compiled_copy = remote.local_copies(url, compiled.SUFFIX)
    if compiled_copy is not None:
        _adopt_compiled(copy, compiled_copy)
    try:
        hashlist = load_hashlist(copy, name=name, algorithm=algorithm, skip_bad_lines=skip_bad_lines)
    except HashListError as exc:
        raise HashListError(url, exc.line, exc.reason.replace(str(copy), url)) from None
    hashlist.path = url
    logger.info("Hash list %s: %s, cached at %s", name, url, copy)
    return hashlist


def _adopt_compiled(copy: Path, compiled_copy: Path) -> None:
    """Give the list's copy the modification time its compiled file recorded, if the sizes agree, so that
    ``load_compiled`` uses it; otherwise (or if it cannot be read) the list is parsed, as locally."""
    try:
        header, _ = read_arrays(compiled_copy, compiled._MAGIC, compiled._VERSION, what="compiled hash list")
        stat = copy.stat()
        if header.get("source_size") != stat.st_size:
            logger.info("Compiled list %s records another size than the list: parsing the list", compiled_copy)
            return
        if stat.st_mtime_ns != header["source_mtime_ns"]:
            os.utime(copy, ns=(stat.st_atime_ns, int(header["source_mtime_ns"])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("Compiled list %s is unusable (%s); parsing the list", compiled_copy, type(exc).__name__)


def load_hashlist(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    algorithm: str | None = None,
    skip_bad_lines: bool = False,
    use_cache: bool = True,
) -> HashList:
    """Read and validate one hash list; a bad line, unknown algorithm or empty list raises HashListError.

    ``algorithm`` names the algorithm of a plain text list (the CLI's ``--hashlist-algorithm``); CSV rows
    name their own and ignore it. With ``skip_bad_lines`` malformed lines are counted instead. A compiled
    file (``PATH.rwidx``) is used when it records the list's current size and mtime and the same options.
    """
    where = os.fspath(path)
    list_name = name if name is not None else Path(where).stem
    if not list_name.strip():
        raise HashListError(where, None, "empty list name")
    default_algorithm = check_algorithm(where, algorithm)

    started = time.perf_counter()
    hashlist = load_compiled(where, list_name, default_algorithm, skip_bad_lines) if use_cache else None
    if hashlist is None:
        hashlist = parse_hashlist(where, list_name, default_algorithm, skip_bad_lines)
    logger.info(
        "Loaded hash list %s (%s, %s%s) in %.2f s: %d entries %s, %d bad lines skipped, %d lines ignored",
        list_name, where, hashlist.source_format, ", from cache" if hashlist.from_cache else "",
        time.perf_counter() - started, len(hashlist), hashlist.count_by_algorithm(), hashlist.bad_lines,
        hashlist.ignored_lines,
    )
    return hashlist
