"""The end of a run: mark placeholders and compute drift over the whole run, then rewrite its parts.

Both need the whole run (placeholders are content shared by many URLs of one domain) or the series' history
(drift compares with the last run in which a reference was alive), so they run once, when the last outcome
part is written. They run in DuckDB, over the parts as files, within a memory limit (DuckDB spills to a
scratch folder beyond it): the pass needs the same memory for a run of ten million references as for one
of ten thousand, and a million take seconds.

The crawl writes small parts (1,000 rows or 10 s: a crash loses little); this pass rewrites the run as
``part-fNNNNN.parquet`` files of up to ``rows_per_part`` rows, in the crawl's order, then deletes the small
parts, so a run of millions of references is a few files for every later reader, not thousands. The run's
manifest says ``finished`` only after this: a crash in between leaves a run marked ``running``, which the
report, re-checks and export-clean ignore and a redo (same run id) replaces whole.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from crawler.runs import placeholders
from crawler.runs.drift import drift_sql
from crawler.runs.duck import open_duckdb, sql_files
from crawler.runs.history import outcome_parts

logger = logging.getLogger(__name__)

#: DuckDB's memory for the pass (it spills beyond it) and its threads.
MEMORY_LIMIT = "400MB"
THREADS = 2
#: Rows per row group of the final parts, and per batch streamed from DuckDB into them.
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
    parts = outcome_parts(run_dir)
    if not parts:
        return FinalizeResult({}, {}, 0.0)
    schema = pq.read_schema(parts[0])
    with _database() as con:
        con.execute(f"""CREATE TEMP TABLE cur AS SELECT filename AS _f, file_row_number AS _r, ref_id,
            {', '.join(placeholders.ROW_COLUMNS[2:])}, recorded_md5, recorded_phash
            FROM read_parquet({sql_files(parts)}, filename = true, file_row_number = true)""")
        placeholders.mark_placeholders(con, rules)
        _baselines(con, earlier_runs)
        con.execute(f"""CREATE TEMP TABLE decided AS
            SELECT _f, _r, reason, {drift_sql(drift_radius)} AS drift FROM (
                SELECT c._f, c._r, r.reason, c.md5, c.phash,
                       c.outcome = 'ok' AND r.reason IS NULL AS alive,
                       b.ref_id IS NOT NULL AS seen_before,
                       CASE WHEN c.recorded_md5 IS NOT NULL OR c.recorded_phash IS NOT NULL
                            THEN c.recorded_md5 ELSE b.md5 END AS base_md5,
                       CASE WHEN c.recorded_md5 IS NOT NULL OR c.recorded_phash IS NOT NULL
                            THEN c.recorded_phash ELSE b.phash END AS base_phash
                FROM cur c
                LEFT JOIN reasons r ON r._f = c._f AND r._r = c._r
                LEFT JOIN baseline b ON b.ref_id = c.ref_id)""")
        placeholder_counts = dict(con.execute(
            "SELECT reason, count(*) FROM reasons GROUP BY reason ORDER BY reason").fetchall())
        drift_counts = dict(con.execute(
            "SELECT drift, count(*) FROM decided WHERE drift IS NOT NULL GROUP BY drift ORDER BY drift").fetchall())
        for name in ("drift", "placeholder_reason"):  # parts written before a column existed get it
            if name not in schema.names:
                schema = schema.append(pa.field(name, pa.string()))
        replaced = [n for n in ("drift", "placeholder_reason") if n in pq.read_schema(parts[0]).names]
        final = con.sql(f"""
            SELECT p.* EXCLUDE (filename, file_row_number, outcome{''.join(', ' + n for n in replaced)}),
                CASE WHEN d.reason IS NOT NULL THEN 'placeholder' ELSE p.outcome END AS outcome,
                d.drift AS drift, d.reason AS placeholder_reason
            FROM read_parquet({sql_files(parts)}, filename = true, file_row_number = true) p
            JOIN decided d ON d._f = p.filename AND d._r = p.file_row_number
            ORDER BY p.filename, p.file_row_number""")
        written = _write_parts(final.to_arrow_reader(_ROW_GROUP), schema, run_dir / "outcomes",
                               max(rows_per_part, 1))
    for part in parts:
        if part not in written:
            part.unlink()
    result = FinalizeResult(placeholders=placeholder_counts, drift=drift_counts,
                            seconds=time.perf_counter() - started)
    logger.info("Run finalized in %.1f s: %d placeholders %s, drift %s", result.seconds,
                sum(result.placeholders.values()), result.placeholders, result.drift)
    return result


@contextmanager
def _database() -> Iterator[Any]:
    """An in-memory DuckDB limited to ``MEMORY_LIMIT``, spilling to a scratch folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="refwatch-finalize-") as scratch:
        con = open_duckdb(Path(scratch), memory_limit=MEMORY_LIMIT, threads=THREADS)
        try:
            yield con
        finally:
            con.close()


def _baselines(con: Any, earlier_runs: list[Path]) -> None:
    """``baseline(ref_id, md5, phash)``: for every reference an earlier run had, the hashes of its latest
    alive sighting (null if it was never alive), so ``ref_id`` present means "seen before"."""
    sources = []
    for order, run_dir in enumerate(earlier_runs):
        files = outcome_parts(run_dir)
        if files:
            sources.append(f"SELECT ref_id, outcome, md5, phash, {order} AS run_order "
                           f"FROM read_parquet({sql_files(files)})")
    if not sources:
        con.execute("CREATE TEMP TABLE baseline (ref_id VARCHAR, md5 VARCHAR, phash VARCHAR)")
        return
    con.execute(f"""CREATE TEMP TABLE baseline AS
        SELECT ref_id,
               arg_max(md5, run_order) FILTER (WHERE outcome = 'ok') AS md5,
               arg_max(phash, run_order) FILTER (WHERE outcome = 'ok') AS phash
        FROM ({' UNION ALL '.join(sources)}) GROUP BY ref_id""")


def _write_parts(batches: pa.RecordBatchReader, schema: pa.Schema, folder: Path, rows_per_part: int) -> list[Path]:
    """Stream ``batches`` into ``part-fNNNNN.parquet`` files of up to ``rows_per_part`` rows each (each written
    to a temporary name and renamed when complete), cast back to the crawl's schema."""
    written: list[Path] = []
    writer: pq.ParquetWriter | None = None
    target = tmp = folder
    in_part = 0

    def close() -> None:
        nonlocal writer
        if writer is not None:
            writer.close()
            os.replace(tmp, target)
            written.append(target)
            writer = None

    for batch in batches:
        table = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
        start = 0
        while start < table.num_rows:
            if writer is None:
                target = folder / f"part-f{len(written):05d}.parquet"
                tmp = target.with_name(f".{target.name}.tmp")
                writer = pq.ParquetWriter(tmp, schema, compression="zstd")
                in_part = 0
            take = min(table.num_rows - start, rows_per_part - in_part)
            writer.write_table(table.slice(start, take), row_group_size=_ROW_GROUP)
            start += take
            in_part += take
            if in_part >= rows_per_part:
                close()
    close()
    return written

