"""Drift: has the image a reference serves changed since it was last known, and how much?

Per alive reference (outcome ``ok``), against a *baseline*: the hashes the snapshot recorded when it was made
(LAION's md5 sidecars, a ``phash`` column) if it has any, else the hashes of the latest earlier run of the
same series in which the reference was alive:

- ``same``: identical bytes (md5 equal);
- ``near``: bytes differ but the pHashes are within the radius (re-encoded, resized);
- ``changed``: the pHashes are farther apart (another image);
- ``new``: no baseline, but earlier runs saw the reference (never alive before);
- ``unknown``: nothing to compare (the first run of a snapshot without recorded hashes), or the md5s differ
  and one side has no pHash (a recorded md5 alone cannot tell a re-encode from another image).

References that are not alive get no drift (null). The rules are one SQL expression (``drift_sql``), which the
end-of-run pass evaluates over a whole run in DuckDB; ``classify`` runs it over Arrow arrays.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import pyarrow as pa


class Drift(StrEnum):
    SAME = "same"
    NEAR = "near"
    CHANGED = "changed"
    NEW = "new"
    UNKNOWN = "unknown"


_HEX16 = "^[0-9a-fA-F]{16}$"


def drift_sql(radius: int) -> str:
    """A SQL expression giving the drift word of a row with columns ``alive`` (bool), ``md5``, ``phash``,
    ``base_md5``, ``base_phash`` (its baseline; null: none) and ``seen_before`` (bool): the rules above.

    One expression, used by the end-of-run pass over a whole run in DuckDB.
    """
    def code(column: str) -> str:
        return f"TRY_CAST('0x' || {column} AS UBIGINT)"

    def valid(column: str) -> str:
        return f"regexp_full_match(coalesce({column}, ''), '{_HEX16}')"

    both = f"({valid('phash')} AND {valid('base_phash')})"
    distance = f"bit_count(xor({code('phash')}, {code('base_phash')}))"
    return f"""CASE
        WHEN NOT alive THEN NULL
        WHEN base_md5 IS NULL AND base_phash IS NULL THEN CASE WHEN seen_before THEN 'new' ELSE 'unknown' END
        WHEN lower(md5) = lower(base_md5) THEN 'same'
        WHEN {both} THEN CASE WHEN {distance} <= {int(radius)} THEN 'near' ELSE 'changed' END
        ELSE 'unknown' END"""


def classify(
    alive: np.ndarray,
    md5: pa.Array,
    phash: pa.Array,
    base_md5: pa.Array,
    base_phash: pa.Array,
    seen_before: np.ndarray,
    radius: int,
) -> pa.Array:
    """The drift word of each row (null where not ``alive``), all arrays aligned row by row, through
    ``drift_sql``: for tests and small inputs."""
    import duckdb

    table = pa.table({"alive": pa.array(alive, pa.bool_()), "md5": md5, "phash": phash, "base_md5": base_md5,
                      "base_phash": base_phash, "seen_before": pa.array(seen_before, pa.bool_()),
                      "_i": pa.array(range(len(alive)), pa.int64())})
    con = duckdb.connect()
    try:
        con.register("rows_arrow", table)
        result = con.sql(f"SELECT {drift_sql(radius)} AS drift FROM rows_arrow ORDER BY _i").to_arrow_table()
    finally:
        con.close()
    return result["drift"].combine_chunks()
