"""A run's summary (``summary.json``) from its stats: counts per outcome, matches, timings and rate.

A pure function of the stats keys, so what the summary says and what the metrics say can never disagree;
the single-process crawl builds it from Scrapy's stats, a sharded run from its committed shards' stats.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crawler.outcomes import Outcome
from crawler.runs.drift import Drift

DRIFT_WORDS = tuple(word.value for word in Drift)
PLACEHOLDER_REASONS = ("known_url", "known_hash", "same_redirect_target", "same_content")


def build_summary(stats: dict[str, Any], *, run_id: str, snapshots: list[str], finished_at: datetime) -> dict[str, Any]:
    """The run's summary: counts per outcome, matches per list and algorithm, timings and rate."""
    outcomes = {o.value: int(stats.get(f"refwatch/outcome/{o.value}", 0)) for o in Outcome}
    matches = _per_list(stats, "refwatch/matches/")
    recorded_matches = _per_list(stats, "refwatch/recorded_matches/")
    started_at: datetime = stats.get("start_time") or finished_at
    if started_at.tzinfo is None:
        started_at = started_at.replace(tzinfo=UTC)
    seconds = max((finished_at - started_at).total_seconds(), 1e-9)
    references = sum(outcomes.values())
    return {
        "run_id": run_id,
        "snapshots": snapshots,
        "started_at": started_at.isoformat().replace("+00:00", "Z"),
        "finished_at": finished_at.isoformat().replace("+00:00", "Z"),
        "seconds": round(seconds, 3),
        "references": references,
        "refs_read": int(stats.get("refwatch/refs_read", 0)),
        "refs_per_second": round(references / seconds, 2),
        "alive": outcomes[Outcome.OK.value],
        "outcomes": outcomes,
        "matched_references": int(stats.get("refwatch/matched_references", 0)),
        "matches": matches,
        "recorded_matched_references": int(stats.get("refwatch/recorded_matched_references", 0)),
        "recorded_matches": recorded_matches,
        "drift": {word: int(stats.get(f"refwatch/drift/{word}", 0)) for word in DRIFT_WORDS},
        "placeholders": {reason: int(stats.get(f"refwatch/placeholders/{reason}", 0)) for reason in PLACEHOLDER_REASONS},
        "match_sources": {source: int(stats.get(f"refwatch/match_sources/{source}", 0))
                          for source in ("live_only", "recorded_only", "both")},
        "carried_rows": int(stats.get("refwatch/carried_rows", 0)),
        "events_published": int(stats.get("refwatch/events_published", 0)),
        "events_unwritten": int(stats.get("refwatch/queue/unwritten_events", 0)),
        "queue_batches_written": int(stats.get("refwatch/queue/batches_written", 0)),
        "queue_errors": int(stats.get("refwatch/queue/errors", 0)),
        "bad_records": int(stats.get("refwatch/bad_records", 0)),
        "backoffs": int(stats.get("refwatch/backoff", 0)),
        "response_bytes": int(stats.get("refwatch/response_bytes", 0)),
        "outputs_failed": bool(stats.get("refwatch/outputs_failed", 0)),
        "finish_reason": stats.get("finish_reason"),
    }


def _per_list(stats: dict[str, Any], prefix: str) -> dict[str, dict[str, int]]:
    """``{list: {algorithm: count}}`` from the stats keys ``PREFIX<list>/<algorithm>``."""
    found: dict[str, dict[str, int]] = {}
    for key, value in sorted(stats.items()):
        if key.startswith(prefix):
            list_name, algorithm = key[len(prefix):].rsplit("/", 1)
            found.setdefault(list_name, {})[algorithm] = int(value)
    return found


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Written to a temporary name and renamed: a reader sees the old summary or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
