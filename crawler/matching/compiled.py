"""The compiled hash list (``refwatch hashlist compile``): the built indexes, ids and labels in one file.

``LIST.rwidx`` beside ``LIST`` holds, per algorithm, the ``HammingIndex`` arrays (which include every hash),
the source line of each entry and the ids and labels as UTF-8 bytes plus offsets, in the format of
``crawler.matching.arrayfile``. Loading maps it read-only: a 10-million-entry list opens in milliseconds instead of
parsing (~20 s) and building the index (3-4 s), nothing is copied into the process, and several crawl
processes on one machine share its pages through the page cache.

The file records the list's size and mtime and the options it was parsed with; ``load_compiled`` uses it
only while those still hold, and a damaged or outdated file only costs a parse (a warning, never an error).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from crawler.matching.arrayfile import read_arrays, write_arrays
from crawler.matching.index import HammingIndex
from crawler.matching.hashlist import (
    DEFAULT_RADII,
    EXACT_ALGORITHMS,
    HEX_DIGITS,
    WORDS,
    HashList,
    HashListError,
    check_algorithm,
    _Column,
    _Strings,
)
from crawler.matching.formats import parse_hashlist

logger = logging.getLogger(__name__)

#: Suffix of the compiled file ``compile_hashlist`` writes beside a list.
SUFFIX: Final = ".rwidx"
_MAGIC: Final = b"RWHLIST1"
_VERSION: Final = 2


def compiled_path(path: str | os.PathLike[str]) -> Path:
    """Where ``compile_hashlist`` writes the compiled form of the list at ``path``: ``PATH.rwidx``."""
    source = Path(path)
    return source.with_name(source.name + SUFFIX)


def compile_hashlist(
    path: str | os.PathLike[str],
    *,
    algorithm: str | None = None,
    skip_bad_lines: bool = False,
    radii: Mapping[str, int] | None = None,
) -> tuple[HashList, Path]:
    """Parse the list at ``path``, build its indexes and write them to ``PATH.rwidx`` (atomically).

    ``radii`` (algorithm -> radius, over ``DEFAULT_RADII``) is what each perceptual index is laid out for;
    digests are indexed for exact look-ups. Returns the list (its indexes built) and the file written.
    """
    where = os.fspath(path)
    default_algorithm = check_algorithm(where, algorithm)
    stat_before = _stat(where)
    hashlist = parse_hashlist(where, Path(where).stem, default_algorithm, skip_bad_lines)
    if _stat(where) != stat_before:
        raise HashListError(where, None, "the list changed while it was being compiled; compile it again")
    radius_for = {**DEFAULT_RADII, **(radii or {})}
    header: dict[str, Any] = {
        "source_size": stat_before[0], "source_mtime_ns": stat_before[1],
        "source_format": hashlist.source_format,
        "text_algorithm": default_algorithm if hashlist.source_format == "text" else None,
        "bad_lines": hashlist.bad_lines, "bad_line_samples": hashlist.bad_line_samples,
        "ignored_lines": hashlist.ignored_lines, "indexes": {},
    }
    arrays: dict[str, np.ndarray] = {}
    for name in hashlist.algorithms:
        radius = 0 if name in EXACT_ALGORITHMS else radius_for[name]
        index_header, index_arrays = hashlist.index(name, radius).to_arrays(prefix=f"{name}/")
        header["indexes"][name] = index_header
        arrays.update(index_arrays)
        column = hashlist._columns[name]
        arrays[f"{name}/lines"] = column.lines
        for part, strings in (("ids", column.ids), ("labels", column.labels)):
            if strings is not None:
                arrays[f"{name}/{part}.data"] = strings.data
                arrays[f"{name}/{part}.offsets"] = strings.offsets
    target = compiled_path(where)
    try:
        write_arrays(target, _MAGIC, _VERSION, header, arrays)
    except OSError as exc:
        raise HashListError(os.fspath(target), None, f"cannot write the compiled list: {exc.strerror or exc}") from None
    return hashlist, target


def load_compiled(where: str, list_name: str, default_algorithm: str | None, skip_bad_lines: bool) -> HashList | None:
    """The list from its compiled file if that is current and was made with compatible options, else None."""
    target = compiled_path(where)
    try:
        source = os.stat(where)
        if not target.is_file():
            return None
        header, arrays = read_arrays(target, _MAGIC, _VERSION, what="compiled hash list")
        if not _fits(header, source, default_algorithm, skip_bad_lines):
            logger.info("Compiled list %s does not fit %s (list changed, or other options); parsing the list",
                        target, where)
            return None
        columns = {name: _column(os.fspath(target), header, arrays, name) for name in header["indexes"]}
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any damage to a compiled file only costs a parse
        logger.warning("Compiled list %s is unusable (%s); parsing the list", target, type(exc).__name__)
        return None
    return HashList._from_columns(
        list_name, where, columns, header["source_format"], header["bad_lines"],
        [tuple(sample) for sample in header["bad_line_samples"]], header["ignored_lines"], from_cache=True,
    )


def _stat(where: str) -> tuple[int, int]:
    try:
        st = os.stat(where)
    except FileNotFoundError:
        raise HashListError(where, None, "no such file") from None
    except OSError as exc:
        raise HashListError(where, None, f"cannot read: {exc.strerror or exc}") from None
    return st.st_size, st.st_mtime_ns


def _fits(header: dict[str, Any], source: os.stat_result, default_algorithm: str | None,
          skip_bad_lines: bool) -> bool:
    return (
        header["source_size"] == source.st_size
        and header["source_mtime_ns"] == source.st_mtime_ns
        # A text list's algorithm comes from the caller; a list with bad lines needs skip_bad_lines (without
        # it, parsing reports the first bad line, as it would without a compiled file).
        and (header["source_format"] != "text" or header["text_algorithm"] == default_algorithm)
        and (skip_bad_lines or header["bad_lines"] == 0)
    )


def _column(where: str, header: dict[str, Any], arrays: dict[str, np.ndarray], name: str) -> _Column:
    """One algorithm's index, lines, ids and labels, checked for shape and type (ValueError if damaged)."""
    if name not in HEX_DIGITS:
        raise ValueError("unknown algorithm in the compiled list")
    index = HammingIndex.from_arrays(where, header["indexes"][name], arrays, prefix=f"{name}/")
    lines = arrays[f"{name}/lines"]
    n = len(index)
    if index.words != WORDS[name] or lines.dtype != np.int64 or lines.shape != (n,):
        raise ValueError("bad index or line array")
    strings: list[_Strings | None] = []
    for part in ("ids", "labels"):
        if f"{name}/{part}.data" not in arrays:
            strings.append(None)
            continue
        data, offsets = arrays[f"{name}/{part}.data"], arrays[f"{name}/{part}.offsets"]
        if (data.dtype != np.uint8 or offsets.dtype != np.int64 or offsets.shape != (n + 1,)
                or offsets[0] != 0 or offsets[-1] != len(data) or np.any(np.diff(offsets) < 0)):
            raise ValueError(f"bad {part} arrays")
        strings.append(_Strings(data, offsets))
    return _Column(hashes=None, lines=lines, ids=strings[0], labels=strings[1], index=index)
