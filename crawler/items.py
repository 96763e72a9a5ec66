"""The item refwatch scrapes: one outcome row per reference, carrying hashes and metadata, never a body."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from crawler.outcomes import Outcome


@dataclass(slots=True)
class OutcomeItem:
    """One row of the outcomes dataset.

    Mutable only so that pipelines can fill in what they decide (``matched``, ``drift``); ``None`` means
    absent or not computed, never ``""``.
    """

    run_id: str
    ref_id: str
    url: str
    outcome: Outcome
    fetched_at: datetime
    page_url: str | None = None
    alt: str | None = None
    http_status: int | None = None
    final_url: str | None = None
    content_type: str | None = None
    bytes: int | None = None
    md5: str | None = None
    sha1: str | None = None
    sha256: str | None = None
    phash: str | None = None
    dhash: str | None = None
    pdq: str | None = None
    pdq_quality: int | None = None
    pdq_dihedral: tuple[str, ...] = ()  # PDQ of the other rotations/flips, for matching only (not written)
    width: int | None = None
    height: int | None = None
    image_format: str | None = None
    x_robots_tag: str | None = None
    redirects: int = 0
    elapsed_ms: float | None = None
    hash_ms: float | None = None
    error: str | None = None
    matched: bool = False
    match_count: int = 0
    drift: str | None = None  # filled in for the whole run when it ends (crawler/runs/finalize.py)
    recorded_md5: str | None = None
    recorded_sha256: str | None = None
    recorded_phash: str | None = None
    recorded_matched: bool = False  # the snapshot's recorded hashes matched a hash list
    carried_from: str | None = None  # a re-check run's row copied from this earlier run, not fetched again

    def hashes(self) -> dict[str, str | None]:
        """Observed hashes by algorithm name, as the matcher takes them."""
        return {
            "md5": self.md5,
            "sha1": self.sha1,
            "sha256": self.sha256,
            "phash": self.phash,
            "dhash": self.dhash,
            "pdq": self.pdq,
        }
