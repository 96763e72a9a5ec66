"""Load the outcome rows of the chosen runs into one DuckDB table, once, with only the columns the report needs.

Why DuckDB: the report groups and joins ~10 million rows (10 runs x 1M references) by string keys.
DuckDB does that in parallel and within a memory limit (it spills to a temporary folder instead of
failing), reads the Parquet parts itself (projection pushdown: URLs and hashes are never read), and lets
each figure be one short SQL query. The measurements behind the choice are in docs/report.md.

The table ``obs`` has one row per reference and run: ``run`` (index in the series, oldest 0), ``ref_id``,
``outcome``, ``drift``, ``matched``/``recorded_matched`` (null read as false), ``has_recorded`` (the
snapshot recorded some hash), ``domain`` and ``carried`` (the row was copied from an earlier run by a
partial re-check, not fetched in this one).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from crawler.runs.duck import open_duckdb, sql_text
from crawler.report.selection import BOOL, READ_COLUMNS, Part, ReportError, Selection

DUCKDB_TYPES = {"string": "VARCHAR", BOOL: "BOOLEAN"}
DEFAULT_MEMORY_LIMIT = "1GB"  # DuckDB's share of the report's 2 GiB budget; above it, it spills to disk
DEFAULT_THREADS = 2


@contextmanager
def history_database(selection: Selection, *, memory_limit: str = DEFAULT_MEMORY_LIMIT,
                     threads: int = DEFAULT_THREADS) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection holding ``obs`` for the selection; the database and its spill folder go at exit."""
    with tempfile.TemporaryDirectory(prefix="refwatch-report-") as scratch:
        con = open_duckdb(Path(scratch), memory_limit=memory_limit, threads=threads,
                          database=Path(scratch) / "history.duckdb")
        try:
            load_observations(con, selection)
            yield con
        finally:
            con.close()


def load_observations(con: duckdb.DuckDBPyConnection, selection: Selection) -> None:
    """Create ``obs`` and fill it run by run, so a part DuckDB cannot read is named with its run."""
    con.execute("""
        CREATE TABLE obs (run USMALLINT, ref_id VARCHAR, outcome VARCHAR, drift VARCHAR, matched BOOLEAN,
                          recorded_matched BOOLEAN, has_recorded BOOLEAN, domain VARCHAR, carried BOOLEAN)
    """)
    for index, (run, parts) in enumerate(zip(selection.runs, selection.parts)):
        if not parts:
            continue
        try:
            con.execute(f"INSERT INTO obs {run_select(index, parts)}")
        except duckdb.Error as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ReportError(f"{run.run_dir / 'outcomes'}: cannot read an outcome part: {first_line}") from None
    check_complete(con, selection)


def check_complete(con: duckdb.DuckDBPyConnection, selection: Selection) -> None:
    """Every row names its reference and outcome; a row without them cannot be counted anywhere."""
    row = con.execute("""
        SELECT run, count(*) FROM obs WHERE ref_id IS NULL OR outcome IS NULL GROUP BY run ORDER BY run LIMIT 1
    """).fetchone()
    if row is not None:
        run_dir = selection.runs[row[0]].run_dir
        raise ReportError(f"{run_dir / 'outcomes'}: {row[1]} rows without a ref_id or an outcome")


def run_select(index: int, parts: tuple[Part, ...]) -> str:
    """The SELECT producing ``obs`` rows of one run; columns that none of its parts hold read as null."""
    present = frozenset().union(*(part.columns for part in parts))

    def column(name: str) -> str:
        return f'"{name}"' if name in present else f"NULL::{DUCKDB_TYPES[READ_COLUMNS[name]]}"

    files = ", ".join(f"'{sql_text(str(part.path))}'" for part in parts)
    return f"""
        SELECT {index}::USMALLINT, ref_id, outcome, {column('drift')},
               coalesce({column('matched')}, false), coalesce({column('recorded_matched')}, false),
               ({column('recorded_md5')} IS NOT NULL OR {column('recorded_sha256')} IS NOT NULL
                OR {column('recorded_phash')} IS NOT NULL),
               {column('domain')}, ({column('carried_from')} IS NOT NULL)
        FROM read_parquet([{files}], union_by_name = true)
    """

