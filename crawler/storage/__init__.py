"""Object stores named by URL (a local folder or S3), run outputs mirrored to S3, and run inputs read from S3.

``base`` is the ``ObjectStore`` interface, its errors and ``RetryingStore``; ``local`` and ``s3`` implement
it; ``factory.open_store(url)`` picks one (boto3 is imported only for ``s3://``); ``remote`` mirrors a
run's outputs between a local staging folder and an ``s3://`` output; ``inputs`` reads ``s3://`` snapshots
(ranged reads, a local cache) and hash lists (the cache) for the readers and the list loader.

May import: the standard library, boto3 (in ``s3`` only, and lazily in ``inputs``), ``crawler`` (its version,
for the User-Agent) and ``crawler.references`` (``inputs`` raises the readers' ``SnapshotError``).
Never Scrapy or Twisted.
"""
