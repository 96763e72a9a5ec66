"""The end of a run: mark placeholders and compute drift over the whole run, then rewrite its parts.

Both need the whole run (placeholders are content shared by many URLs of one domain) or the series' history
(drift compares with the last run in which a reference was alive), so they run once, when the last outcome
part is written, as columnar passes: a million rows take seconds.

The crawl writes small parts (1,000 rows or 10 s: a crash loses little); this pass rewrites the run as
``part-fNNNNN.parquet`` files of up to ``rows_per_part`` rows, in the rows' order, then deletes the small
parts, so a run of millions of references is tens of files for every later reader, not thousands. The run's
manifest says ``finished`` only after this: a crash in between leaves a run marked ``running``, which the
report, re-checks and export-clean ignore and a redo (same run id) replaces whole.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crawler import drift, placeholders
from crawler.history import Manifest

logger = logging.getLogger(__name__)

_BASE_COLUMNS = ["ref_id", "outcome", "md5", "phash"]


@dataclass(frozen=True, slots=True)
class FinalizeResult:
    placeholders: dict[str, int]  # reason -> rows
    drift: dict[str, int]  # drift word -> rows
    seconds: float


def finalize_run(run_dir: Path, earlier_runs: list[Path], rules: placeholders.PlaceholderRules,
                 drift_radius: int, rows_per_part: int = 500_000) -> FinalizeResult:
    """Mark placeholders and fill ``drift`` in the run under ``run_dir/outcomes``, rewritten as final parts.

    ``earlier_runs`` are the run folders of the same series that started before, oldest first.
    """
    started = time.perf_counter()
    parts = sorted((run_dir / "outcomes").glob("part-*.parquet"))
    if not parts:
        return FinalizeResult({}, {}, 0.0)
    rows = pa.concat_tables([pq.read_table(part) for part in parts])

    is_placeholder, reasons = placeholders.detect(rows, rules)
    outcome = pc.if_else(pa.array(is_placeholder), "placeholder", rows["outcome"])
    alive = np.asarray(pc.equal(outcome, "ok").to_numpy(zero_copy_only=False), dtype=bool)

    base_md5, base_phash, seen = _baselines(rows, earlier_runs)
    recorded = pc.or_(pc.is_valid(rows["recorded_md5"]), pc.is_valid(rows["recorded_phash"]))
    words = drift.classify(alive, rows["md5"], rows["phash"],
                           pc.if_else(recorded, rows["recorded_md5"], base_md5),
                           pc.if_else(recorded, rows["recorded_phash"], base_phash),
                           seen, drift_radius)

    rows = _set(rows, "outcome", outcome)
    rows = _set(rows, "drift", words)
    rows = _set(rows, "placeholder_reason", reasons)
    written = []
    for number, offset in enumerate(range(0, rows.num_rows, max(rows_per_part, 1))):
        target = run_dir / "outcomes" / f"part-f{number:05d}.parquet"
        _replace(target, rows.slice(offset, rows_per_part))
        written.append(target)
    for part in parts:
        if part not in written:
            part.unlink()
    result = FinalizeResult(
        placeholders=dict(Counter(r for r in reasons.to_pylist() if r is not None)),
        drift={word: count for word, count in _counts(words).items() if word is not None},
        seconds=time.perf_counter() - started,
    )
    logger.info("Run finalized in %.1f s: %d placeholders %s, drift %s", result.seconds,
                sum(result.placeholders.values()), result.placeholders, result.drift)
    return result


def _baselines(rows: pa.Table, earlier_runs: list[Path]) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """For each row: md5 and pHash of the latest earlier run where its reference was alive (null if none),
    and whether any earlier run had the reference."""
    latest: pa.Table | None = None  # ref_id, md5, phash of the last alive sighting
    seen_ids: list[pa.Array] = []
    for run_dir in earlier_runs:  # oldest first: later sightings replace earlier ones
        files = sorted((run_dir / "outcomes").glob("part-*.parquet"))
        if not files:
            continue
        earlier = pa.concat_tables([pq.read_table(f, columns=_BASE_COLUMNS) for f in files])
        seen_ids.append(earlier["ref_id"].combine_chunks())
        alive = earlier.filter(pc.equal(earlier["outcome"], "ok")).select(["ref_id", "md5", "phash"])
        if latest is None:
            latest = alive
        else:
            latest = pa.concat_tables([latest.filter(pc.invert(pc.is_in(latest["ref_id"], alive["ref_id"]))),
                                       alive])
    n = rows.num_rows
    seen = np.zeros(n, dtype=bool)
    if seen_ids:
        seen = np.asarray(pc.is_in(rows["ref_id"], pa.concat_arrays(seen_ids)).to_numpy(zero_copy_only=False),
                          dtype=bool)
    if latest is None or latest.num_rows == 0:
        empty = pa.nulls(n, pa.string())
        return empty, empty, seen
    position = pc.index_in(rows["ref_id"], latest["ref_id"])
    return pc.take(latest["md5"], position), pc.take(latest["phash"], position), seen


def _set(rows: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    field = rows.schema.field(name) if name in rows.schema.names else pa.field(name, pa.string())
    values = values.cast(field.type)
    if name in rows.schema.names:
        return rows.set_column(rows.schema.get_field_index(name), field, values)
    return rows.append_column(field, values)


def _replace(part: Path, table: pa.Table) -> None:
    tmp = part.with_name(f".{part.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, part)


def _counts(values: pa.Array) -> dict[str | None, int]:
    counted = pc.value_counts(values).to_pylist()
    return {entry["values"]: entry["counts"] for entry in counted}


def earlier_run_dirs(out: Path, manifest: Manifest, runs: list[Manifest]) -> list[Path]:
    """The folders of ``runs`` (a series, oldest first) that started before ``manifest``'s run."""
    return [out / "runs" / m.run_id for m in runs if m.run_id != manifest.run_id and m.started_at < manifest.started_at]
