"""Which table columns mean what, and how one row's cells become a ``Reference``.

Parquet, CSV, TSV and JSON Lines tables share this so that a LAION parquet and a hand-made CSV map the same
way: names match case-insensitively (LAION writes ``URL``, ``TEXT``, ``SAMPLE_ID``), the first present alias
wins, and cells are normalised once here rather than by each reader.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Final

from crawler.readers.base import snapshot_error
from crawler.references import Reference

logger = logging.getLogger(__name__)

URL_NAMES: Final = ("url",)
ALT_NAMES: Final = ("text", "caption", "alt")
ID_NAMES: Final = ("sample_id", "id")
PAGE_URL_NAMES: Final = ("page_url",)

_HEX = re.compile(r"[0-9a-f]+")
_MAX_LISTED = 40  # columns named in a "no URL column" message; a wide table must not make it unreadable


@dataclass(frozen=True, slots=True)
class Columns:
    """The table's own names of the columns we read (``None`` when absent)."""

    url: str
    alt: str | None = None
    ref_id: str | None = None
    page_url: str | None = None
    md5: str | None = None
    sha256: str | None = None
    phash: str | None = None

    def names(self) -> list[str]:
        """The columns to read, without duplicates, URL first (Parquet reads only these)."""
        found = [self.url, self.alt, self.ref_id, self.page_url, self.md5, self.sha256, self.phash]
        return list(dict.fromkeys(name for name in found if name is not None))


def find_columns(path: Path | str, names: Sequence[str]) -> Columns:
    """Map the table's column ``names`` to meanings; SnapshotError listing the columns if there is no URL."""
    by_lower: dict[str, str] = {}
    for name in names:
        by_lower.setdefault(name.strip().lower(), name)

    def first(aliases: Sequence[str]) -> str | None:
        return next((by_lower[a] for a in aliases if a in by_lower), None)

    url = first(URL_NAMES)
    if url is None:
        listed = ", ".join(repr(n) for n in names[:_MAX_LISTED])
        more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
        raise snapshot_error(
            path, f"no URL column (looked for 'url', any case); columns found: {listed or 'none'}{more}"
        )
    return Columns(
        url=url,
        alt=first(ALT_NAMES),
        ref_id=first(ID_NAMES),
        page_url=first(PAGE_URL_NAMES),
        md5=first(("md5",)),
        sha256=first(("sha256",)),
        phash=first(("phash",)),
    )


class RowMapper:
    """Turns the cells of one table row into a ``Reference``; one per iteration of one file."""

    def __init__(self, path: Path | str) -> None:
        self._file_name = PurePath(path).name  # a URL's too: s3://bucket/dir/a.parquet -> a.parquet
        self.hashes = HashCells(path)

    def fallback_id(self, row: int) -> str:
        """The id of a row without one: stable as long as the file is (``name:row``, row 0-based)."""
        return f"{self._file_name}:{row}"

    def reference(
        self,
        row: int,
        url: Any,
        alt: Any = None,
        ref_id: Any = None,
        page_url: Any = None,
        md5: Any = None,
        sha256: Any = None,
        phash: Any = None,
    ) -> Reference:
        """Raw cell values in; ``row`` (the 0-based data row) names the reference when the table has no id."""
        text_id = id_text(ref_id)
        hashes = self.hashes
        return Reference(
            url_text(url),
            text_id if text_id is not None else self.fallback_id(row),
            text_or_none(page_url),
            text_or_none(alt),
            None if md5 is None else hashes("md5", md5),
            None if sha256 is None else hashes("sha256", sha256),
            None if phash is None else hashes("phash", phash),
        )


class HashCells:
    """Normalises recorded-hash cells, warning once per column about values that are not hex."""

    def __init__(self, path: Path | str) -> None:
        self._path = path
        self._warned: set[str] = set()

    def __call__(self, kind: str, value: Any) -> str | None:
        digest = hex_or_none(value)
        if digest is None and kind not in self._warned and text_or_none(value) is not None:
            # Once per column: a column of non-hex values is one problem, not a million log lines.
            self._warned.add(kind)
            logger.warning("%s: the %s column holds values that are not hex digests; they are read as absent",
                           self._path, kind)
        return digest


def hex_or_none(value: Any) -> str | None:
    """A recorded hash as lowercase hex; ``None`` when empty, null or not hex (raw digest bytes become hex)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        text = raw.decode("latin-1").strip().lower().removeprefix("0x")
        if text and not _HEX.fullmatch(text):
            return raw.hex()  # a binary digest column: raw bytes, not hex text
    else:
        text = str(value).strip().lower().removeprefix("0x")
    return text if _HEX.fullmatch(text) else None


def url_text(value: Any) -> str:
    """The URL cell as written; a null cell is ``""`` so the row still becomes a (invalid_url) reference."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""  # pandas-written tables store missing strings as NaN
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return value if isinstance(value, str) else str(value)


def text_or_none(value: Any) -> str | None:
    """A text cell (caption, page URL) as written; ``None`` for null, NaN or empty, since empty means absent."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    text = value if isinstance(value, str) else str(value)
    return text if text else None


def id_text(value: Any) -> str | None:
    """An id cell as text: ints in plain decimal, integral floats as ints; ``None`` when missing."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    text = text_or_none(value)
    if text is None:
        return None
    text = text.strip()
    return text or None
