"""Re-check only what failed: pick an earlier run's references by outcome group, and carry the rest over.

``refwatch crawl --recheck RUN --only dead,failed,placeholder`` replays just the references whose outcome in
RUN is in those groups (``crawler.outcomes.OUTCOME_GROUPS``). So that the new run still says something about
every reference (the report compares whole runs), the rows it did not fetch are copied from RUN when it
ends, with ``carried_from`` naming RUN; drift and placeholders are computed over the fetched rows only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crawler.runs.history import outcome_parts
from crawler.outcomes import OUTCOME_GROUPS


class RecheckError(ValueError):
    """A re-check the user must fix (unknown run or group); one line."""


def outcome_words(groups: Iterable[str]) -> list[str]:
    """The outcome words of the named groups; RecheckError for an unknown group."""
    words: set[str] = set()
    for group in groups:
        if group not in OUTCOME_GROUPS:
            raise RecheckError(f"unknown outcome group {group!r} (use {', '.join(OUTCOME_GROUPS)})")
        words |= {o.value for o in OUTCOME_GROUPS[group]}
    return sorted(words)


def _parts(run_dir: Path) -> list[Path]:
    parts = outcome_parts(run_dir)
    if not parts:
        raise RecheckError(f"{run_dir}: no outcomes to re-check (is it a run of this output folder?)")
    return parts


def recheck_selection(run_dir: Path, groups: Iterable[str]) -> frozenset[str]:
    """The ids of ``run_dir``'s references whose outcome is in ``groups`` (all failed ones if none named)."""
    words = outcome_words(list(groups) or ["failed"])
    chosen = []
    for part in _parts(run_dir):
        table = pq.read_table(part, columns=["ref_id", "outcome"])
        chosen.append(table.filter(pc.is_in(table["outcome"], pa.array(words)))["ref_id"])
    return frozenset(pa.chunked_array(chosen, pa.string()).to_pylist())


def carry_over(run_dir: Path, earlier_run_dir: Path) -> int:
    """Copy ``earlier_run_dir``'s rows for references ``run_dir`` did not fetch, as one more part; returns how
    many. Written to a temporary name and renamed, like every part."""
    fetched = [pq.read_table(part, columns=["ref_id"])["ref_id"] for part in outcome_parts(run_dir)]
    fetched_ids = pa.chunked_array(fetched, pa.string()).combine_chunks() if fetched else pa.array([], pa.string())
    run_id = run_dir.name
    carried = []
    for part in _parts(earlier_run_dir):
        table = pq.read_table(part)
        table = table.filter(pc.invert(pc.is_in(table["ref_id"], fetched_ids)))
        if table.num_rows:
            table = table.set_column(table.schema.get_field_index("run_id"), "run_id",
                                     pa.array([run_id] * table.num_rows, pa.string()))
            carried_from = pc.coalesce(table["carried_from"], pa.scalar(earlier_run_dir.name))
            table = table.set_column(table.schema.get_field_index("carried_from"), "carried_from", carried_from)
            carried.append(table)
    if not carried:
        return 0
    rows = pa.concat_tables(carried)
    target = run_dir / "outcomes" / "part-carried.parquet"
    tmp = target.with_name(f".{target.name}.tmp")
    pq.write_table(rows, tmp, compression="zstd")
    os.replace(tmp, target)
    return rows.num_rows
