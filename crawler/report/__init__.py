"""``refwatch report``: what a series of runs says about how a snapshot decays.

A pure package (no Scrapy, no reactor): ``selection`` finds the runs of a series and checks their files,
``tables`` loads their outcome rows into DuckDB once, ``metrics`` computes every figure with SQL over those
rows (never a Python loop over references), ``survival`` turns per-reference aggregates into a Kaplan-Meier
curve, ``model`` holds the resulting ``Report``, and ``text``, ``html`` and ``plots`` render it. The command is
``crawler.cli.report``; ``crawler.sample.history`` writes histories by the crawl's contract for the tests and
the benchmark. Definitions and measurements: docs/report.md.

May import: ``crawler.runs``, the shared vocabulary, DuckDB, pyarrow, matplotlib. Never Scrapy or Twisted.
"""
