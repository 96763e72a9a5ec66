"""``refwatch export-clean``: a snapshot minus the references a finished run says to drop.

``verdicts`` reduces the run to a drop code per reference and decides batch by batch; ``tables`` copies a
URL table record by record in its own format; ``clean`` checks the inputs and writes the output atomically;
``optout`` reads opt-out lists.

May import: ``crawler.readers``, ``crawler.runs``, the shared vocabulary (``references``, ``outcomes``,
``domains``), pyarrow. Never Scrapy or Twisted.
"""
