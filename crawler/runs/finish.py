"""The end of a run, once its outcome parts are all written: the end-of-run pass, carried rows, the manifest.

One function for both ways a run is crawled: the single-process crawl calls it when its writer closes, a
sharded run (``crawler.shards``) when every shard is committed and its parts gathered. It returns the stats
updates it implies, so the caller's counts (Scrapy's stats, or the shards' merged stats) agree with the rows.
"""

from __future__ import annotations

from typing import Any

from crawler.runs.context import RunContext, finish_manifest
from crawler.runs.finalize import finalize_run
from crawler.runs.history import Manifest, outcome_parts, series_runs
from crawler.runs.placeholders import rules_from_settings
from crawler.runs.recheck import carry_over

#: A stats update: ("inc", amount) or ("set", value).
StatsUpdates = dict[str, tuple[str, int]]


def finish_run(run: RunContext, manifest: Manifest, settings: Any) -> StatsUpdates:
    """Placeholders, drift and final parts (``finalize_run``), the rows a re-check carries over, the final
    parts uploaded for a remote output, and the manifest marked ``finished`` — last, so a crash before it
    leaves a run that readers skip and a redo replaces."""
    earlier = series_runs(run.out_dir, manifest.series, before=run.run_id)
    for m in earlier:
        run.pull(f"runs/{m.run_id}/outcomes/")  # drift compares with them (a no-op for a local output)
    result = finalize_run(run.run_dir, [run.out_dir / "runs" / m.run_id for m in earlier],
                          rules_from_settings(settings), settings.getdict("REFWATCH_RADII").get("phash", 8),
                          settings.getint("REFWATCH_FINAL_PART_ROWS"))
    placeholders = sum(result.placeholders.values())
    updates: StatsUpdates = {"refwatch/outcome/ok": ("inc", -placeholders),
                             "refwatch/outcome/placeholder": ("inc", placeholders)}
    for reason, count in result.placeholders.items():
        updates[f"refwatch/placeholders/{reason}"] = ("inc", count)
    for word, count in result.drift.items():
        updates[f"refwatch/drift/{word}"] = ("set", count)
    recheck = settings.get("REFWATCH_RECHECK_RUN")
    if recheck:  # the rows this partial run did not fetch, copied from the run it re-checks
        updates["refwatch/carried_rows"] = ("set", carry_over(run.run_dir, run.out_dir / "runs" / recheck))
    if run.remote is not None:  # the finished parts replace what was uploaded while crawling
        parts = outcome_parts(run.run_dir)
        for part in parts:
            run.publish(part)
        run.remote.delete_stale(f"runs/{run.run_id}/outcomes/", {run.remote.key(part) for part in parts})
    finish_manifest(run, manifest)
    return updates


def apply_updates(stats: dict[str, Any], updates: StatsUpdates) -> None:
    """Apply ``finish_run``'s updates to a plain stats dict (a sharded run's merged stats)."""
    for key, (how, value) in updates.items():
        stats[key] = (stats.get(key, 0) + value) if how == "inc" else value
