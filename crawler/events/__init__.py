"""Match events and the event queue they travel on (``file://DIR`` or ``s3://BUCKET/PREFIX``).

``event`` is the ``MatchEvent`` record and its deterministic id; ``queue_model`` the queue's objects
(batches, leases, ack markers) and errors; ``producer`` writes batches once; ``consumer`` leases, reads and
acknowledges them; ``queue`` puts both behind ``EventQueue`` and ``open_queue(url)``.

May import: ``crawler.storage`` (and ``crawler.matching`` for type hints only). Never Scrapy or Twisted.
"""
