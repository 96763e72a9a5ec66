"""Loading hash lists: a compiled file while it is current, else the source file parsed.

The one entry point the crawl, ``refwatch hashlist`` and the runner's input check share, so every list is
read the same way and once per crawl.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

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


def load_hashlists(specs: Iterable[str], algorithm: str | None = None, *,
                   skip_bad_lines: bool = False) -> LoadedHashLists:
    """Load every ``[NAME=]PATH`` list; two lists of one name, or any bad list, raise ``HashListError``."""
    lists: list[HashList] = []
    for spec in specs:
        name, path = parse_hashlist_spec(spec)
        if any(hl.name == name for hl in lists):
            raise HashListError(spec, None, f"a second list named {name!r}; give each a distinct NAME=")
        lists.append(load_hashlist(path, name=name, algorithm=algorithm, skip_bad_lines=skip_bad_lines))
    return LoadedHashLists(lists)


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
