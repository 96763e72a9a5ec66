"""The unit of work: one image reference read from a snapshot.

Readers yield these; the spider turns each into exactly one request (or, for an invalid URL, directly into
an outcome row). Immutable so a reference can be shared between components without copies. A named tuple
rather than a frozen dataclass: readers build one per row of multi-million-row tables, and a frozen
dataclass's ``__init__`` sets each field through ``object.__setattr__`` (1.25 us a reference, two thirds of
reading a Parquet row; a named tuple 0.45 us).
"""

from __future__ import annotations

from typing import NamedTuple


class Reference(NamedTuple):
    """One image reference as the snapshot wrote it.

    ``url`` is the reference exactly as the snapshot holds it, resolved to absolute only where the snapshot
    had it relative; it may be malformed. Hashes the snapshot recorded when it was made are kept as
    lowercase hex (``None`` when the snapshot has none).
    """

    url: str
    ref_id: str
    page_url: str | None = None
    alt: str | None = None
    recorded_md5: str | None = None
    recorded_sha256: str | None = None
    recorded_phash: str | None = None


# Request meta key holding the Reference a request was made for; only such requests are hashed (robots.txt
# fetches pass through untouched).
REFERENCE_META = "refwatch_ref"


class SnapshotError(Exception):
    """Bad input the user must fix: the message names the file (and line or record where known)."""
