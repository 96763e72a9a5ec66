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
#: What the decisions read: the whole run of these columns is in memory at once, never every column.
_DECISION_COLUMNS = ["ref_id", "url", "domain", "outcome", "md5", "phash", "final_url", "matched",
                     "recorded_md5", "recorded_phash"]
#: Rows gathered before one row group is written (crawl-time parts are 1,000 rows: too small a group).
_ROW_GROUP = 65_536


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
    rows = pa.concat_tables([pq.read_table(part, columns=_DECISION_COLUMNS) for part in parts])

    is_placeholder, reasons = placeholders.detect(rows, rules)
    outcome = pc.if_else(pa.array(is_placeholder), "placeholder", rows["outcome"])
    alive = np.asarray(pc.equal(outcome, "ok").to_numpy(zero_copy_only=False), dtype=bool)

    base_md5, base_phash, seen = _baselines(rows, earlier_runs)
    recorded = pc.or_(pc.is_valid(rows["recorded_md5"]), pc.is_valid(rows["recorded_phash"]))
    words = drift.classify(alive, rows["md5"], rows["phash"],
                           pc.if_else(recorded, rows["recorded_md5"], base_md5),
                           pc.if_else(recorded, rows["recorded_phash"], base_phash),
                           seen, drift_radius)

    decided = {"outcome": outcome, "drift": words, "placeholder_reason": reasons}
    del rows
    written = _rewrite(parts, decided, run_dir / "outcomes", max(rows_per_part, 1))
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


def _rewrite(parts: list[Path], decided: dict[str, pa.Array | pa.ChunkedArray], folder: Path,
             rows_per_part: int) -> list[Path]:
    """Stream the small parts, in order, into ``part-fNNNNN.parquet`` files of up to ``rows_per_part`` rows
    with the decided columns set; one small part is in memory at a time (plus one row group)."""
    written: list[Path] = []
    writer: pq.ParquetWriter | None = None
    target = tmp = None
    in_part = offset = 0
    pending: list[pa.Table] = []

    def flush() -> None:
        if pending and writer is not None:
            writer.write_table(pa.concat_tables(pending), row_group_size=_ROW_GROUP)
            pending.clear()

    def close() -> None:
        nonlocal writer
        flush()
        if writer is not None:
            writer.close()
            os.replace(tmp, target)
            written.append(target)
            writer = None

    for part in parts:
        table = pq.read_table(part)
        n = table.num_rows
        for name, values in decided.items():
            table = _set(table, name, values.slice(offset, n))
        offset += n
        start = 0
        while start < n:
            if writer is None:
                target = folder / f"part-f{len(written):05d}.parquet"
                tmp = target.with_name(f".{target.name}.tmp")
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                in_part = 0
            take = min(n - start, rows_per_part - in_part)
            pending.append(table.slice(start, take))
            start += take
            in_part += take
            if sum(t.num_rows for t in pending) >= _ROW_GROUP:
                flush()
            if in_part >= rows_per_part:
                close()
    close()
    return written


def _set(rows: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    field = rows.schema.field(name) if name in rows.schema.names else pa.field(name, pa.string())
    values = values.cast(field.type)
    if name in rows.schema.names:
        return rows.set_column(rows.schema.get_field_index(name), field, values)
    return rows.append_column(field, values)


def _counts(values: pa.Array) -> dict[str | None, int]:
    counted = pc.value_counts(values).to_pylist()
    return {entry["values"]: entry["counts"] for entry in counted}


def earlier_run_dirs(out: Path, manifest: Manifest, runs: list[Manifest]) -> list[Path]:
    """The folders of ``runs`` (a series, oldest first) that started before ``manifest``'s run."""
    return [out / "runs" / m.run_id for m in runs if m.run_id != manifest.run_id and m.started_at < manifest.started_at]
