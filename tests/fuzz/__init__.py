"""Fuzzing the parsers of untrusted input: snapshot readers (CSV, TSV, JSON Lines, Parquet, WAT, WARC) and hash lists.

``targets.py`` holds each target: a strategy of structure-aware, mutated files and the property every such
file must keep (a one-line ``SnapshotError`` / ``HashListError`` naming the file, or a completed read with
bad records counted; never another exception, never a hang). ``test_fuzz.py`` runs every target for a few
derandomised examples in the normal suite; ``bench/fuzz.py`` runs them for minutes. Crashers found that way
are kept, built from a few bytes, in ``test_regressions.py``.
"""
