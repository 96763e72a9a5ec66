"""Object stores named by URL (a local folder or S3) and run outputs mirrored to S3.

``base`` is the ``ObjectStore`` interface, its errors and ``RetryingStore``; ``local`` and ``s3`` implement
it; ``factory.open_store(url)`` picks one (boto3 is imported only for ``s3://``); ``remote`` mirrors a
run's outputs between a local staging folder and an ``s3://`` output.

May import: the standard library, boto3 (in ``s3`` only), ``crawler`` (its version, for the User-Agent).
Never Scrapy or Twisted.
"""
