"""One way to open DuckDB for refwatch's columnar passes (the end-of-run pass, the report).

Both group and join millions of rows, so both want the same setup: a memory limit beyond which DuckDB spills
to a scratch folder instead of failing, a thread count, no insertion-order guarantee (it costs memory and
nothing relies on it), and no progress bar, which DuckDB prints to standard output, where ``--json`` output
goes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def open_duckdb(scratch: Path, *, memory_limit: str, threads: int, database: Path | None = None) -> Any:
    """A DuckDB connection (in memory, or ``database``) set up as above, spilling under ``scratch``."""
    import duckdb

    con = duckdb.connect(str(database) if database is not None else ":memory:")
    try:
        con.execute(f"SET memory_limit = '{sql_text(memory_limit)}'")
        con.execute(f"SET threads = {int(threads)}")
        con.execute(f"SET temp_directory = '{sql_text(str(scratch / 'spill'))}'")
        con.execute("SET preserve_insertion_order = false")
        con.execute("SET enable_progress_bar = false")
    except BaseException:
        con.close()
        raise
    return con


def sql_text(text: str) -> str:
    """``text`` inside a single-quoted SQL literal."""
    return text.replace("'", "''")


def sql_files(paths: Any) -> str:
    """A SQL list literal of file paths, for ``read_parquet``."""
    return "[" + ", ".join(f"'{sql_text(str(path))}'" for path in paths) + "]"
