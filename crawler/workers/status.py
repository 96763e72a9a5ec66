"""``refwatch status``: a run's shards from Redis, its references from the commit markers in the output store.

Redis says what is pending, in flight, done or dead; the commits say how many references are really done
(the store is the source of truth), so the rate and the ETA are over committed work only.
"""

from __future__ import annotations

import time
from typing import Any

from crawler.coordination.shardqueue import ShardQueue
from crawler.runs.context import run_context
from crawler.shards.commit import read_commits, run_store


def run_status(queue: ShardQueue, run_id: str) -> dict[str, Any]:
    spec = queue.get_run(run_id) or {}
    counts = queue.counts(run_id)
    state = queue.state(run_id)
    settings = spec.get("settings", {})
    done_refs = 0
    committed = counts.done
    if settings.get("REFWATCH_OUT"):
        run = run_context(settings["REFWATCH_OUT"], run_id, settings.get("REFWATCH_QUEUE"), settings)
        commits = read_commits(run_store(run), run_id)
        done_refs = sum(c.refs_read + c.bad_records for c in commits.values())
        committed = len(commits)
    planned_refs = spec.get("references")
    elapsed = max(time.time() - float(spec.get("seeded_at", time.time())), 1e-9)
    rate = done_refs / elapsed
    eta = None
    if planned_refs is not None and rate > 0 and state is not None and state.active:
        eta = max(planned_refs - done_refs, 0) / rate
    return {
        "run_id": run_id,
        "state": state.value if state is not None else "unknown",
        "out": spec.get("out"),
        "shards": {"planned": spec.get("shards"), "pending": counts.pending, "in_flight": counts.in_flight,
                   "committed": committed, "dead": counts.dead},
        "references": {"planned": planned_refs, "done": done_refs},
        "rate_per_second": round(rate, 2),
        "eta_seconds": None if eta is None else round(eta, 1),
    }
