"""A run and its history: context and manifest, the end-of-run pass, drift, placeholders, re-checks.

``context`` names a run and its folders; ``history`` reads and writes manifests and lists a series' runs;
``finalize`` is the end-of-run pass (placeholders and drift as SQL in DuckDB, set up by ``duck``; the rules
in ``placeholders`` and ``drift``); ``recheck`` selects an earlier run's references to replay; ``metrics``
publishes a finished run's gauges (textfile collector, Pushgateway).

May import: ``crawler.storage``, the shared vocabulary (``crawler.outcomes``, ``crawler.domains``),
pyarrow, DuckDB, prometheus_client. Never Scrapy or Twisted.
"""
