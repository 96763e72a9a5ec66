"""The end of a sharded run: committed attempts only, checked, gathered, then the run's usual end.

Runs once per run, after every shard of the plan has a commit marker (``refwatch crawl --processes``' parent
runs it; with Redis, the one worker that wins the run's finalize lock). It reads the markers, never what a
queue believed: each planned shard must be committed, each commit's rows plus its corrupt records must be
the shard's planned references (its whole file, for an unsplittable one), and the parts it names must
exist. Then the committed parts become the run's ``outcomes/`` parts, in plan order, and the single-process
end runs unchanged (``crawler.runs.finish``: placeholders, drift, final parts, the manifest ``finished``).
The run's stats are the sum of the shards' counters, so its summary reads like a single process's.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from crawler.runs.context import RunContext
from crawler.runs.finish import apply_updates, finish_run
from crawler.runs.history import Manifest, outcome_parts
from crawler.runs.summary import build_summary, write_summary
from crawler.shards.commit import ShardCommit, attempt_dir, read_commits, run_store, shard_prefix
from crawler.shards.plan import Plan

logger = logging.getLogger(__name__)


class IncompleteRunError(RuntimeError):
    """The plan's shards are not all committed, or a commit does not add up: the run cannot finish yet."""


def missing_shards(plan: Plan, commits: dict[str, ShardCommit]) -> list[str]:
    return [s.shard_id for s in plan.shards if s.shard_id not in commits]


def check_commits(plan: Plan, commits: dict[str, ShardCommit]) -> None:
    """Every planned shard committed once, and each commit's counts add up to its shard's plan."""
    missing = missing_shards(plan, commits)
    if missing:
        raise IncompleteRunError(f"run {plan.run_id}: {len(missing)} of {len(plan.shards)} shards not committed "
                                 f"(first: {missing[0]})")
    for shard in plan.shards:
        commit = commits[shard.shard_id]
        if shard.references is not None and commit.refs_read + commit.bad_records != shard.references:
            raise IncompleteRunError(
                f"run {plan.run_id}: shard {shard.shard_id} committed {commit.refs_read} references and "
                f"{commit.bad_records} corrupt records, but its plan holds {shard.references}")


def merged_stats(commits: Iterable[ShardCommit]) -> dict[str, Any]:
    """The run's counters: the sum of its committed shards' (a lost attempt's counts are in no commit)."""
    stats: dict[str, Any] = {}
    for commit in commits:
        for key, value in commit.stats.items():
            if key.startswith("refwatch/shard/"):
                continue  # the attempt's own state, not the run's
            stats[key] = stats.get(key, 0) + value
    return stats


def finish_sharded_run(run: RunContext, plan: Plan, manifest: Manifest, settings: Any,
                       snapshots: list[str]) -> dict[str, Any]:
    """Gather the committed parts into ``outcomes/``, end the run, write and return its summary."""
    store = run_store(run)
    commits = read_commits(store, run.run_id)
    check_commits(plan, commits)
    outcomes = run.outcomes_dir
    outcomes.mkdir(parents=True, exist_ok=True)
    for stale in outcome_parts(run.run_dir):  # a redo's or a crashed pass's leftovers
        stale.unlink()
    rows = 0
    for shard in plan.shards:
        commit = commits[shard.shard_id]
        folder = attempt_dir(run, shard.shard_id, commit.attempt)
        run.pull(f"{shard_prefix(run.run_id, shard.shard_id)}{commit.attempt}/")  # from S3 if crawled elsewhere
        for index, name in enumerate(commit.parts):
            source = folder / name
            if not source.is_file():
                raise IncompleteRunError(f"run {run.run_id}: shard {shard.shard_id}'s committed part {name} "
                                         f"is missing from {folder}")
            shutil.copyfile(source, outcomes / f"part-{shard.shard_id}-{index:05d}.parquet")
        rows += commit.rows
    stats = merged_stats(commits.values())
    apply_updates(stats, finish_run(run, manifest, settings))
    started = datetime.fromisoformat(manifest.started_at.replace("Z", "+00:00"))
    stats["start_time"] = started
    stats["finish_reason"] = "finished"
    summary = build_summary(stats, run_id=run.run_id, snapshots=snapshots, finished_at=datetime.now(UTC))
    summary["shards"] = len(plan.shards)
    write_summary(run.summary_path, summary)
    run.publish(run.summary_path)
    _remove_attempts(run, plan)
    logger.info("run %s: %d shards, %d rows, %d references/s", run.run_id, len(plan.shards), rows,
                summary["refs_per_second"])
    return summary


def _remove_attempts(run: RunContext, plan: Plan) -> None:
    """The attempt folders go once their parts are the run's; the commit markers stay as the record."""
    for shard in plan.shards:
        folder = run.run_dir / "shards" / shard.shard_id
        if folder.is_dir():
            for child in folder.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
    if run.remote is not None:
        for info in list(run.remote.store.list(f"runs/{run.run_id}/shards/")):
            if not info.key.endswith("/commit.json"):
                run.remote.store.delete(info.key)
