"""In-memory hashing of a fetched body: digests (md5, sha1, sha256) and perceptual hashes (pHash, dHash, PDQ).

``digest.hash_bytes(body)`` is the one function the crawl (``middlewares/hashing.py``) and ``refwatch hash``
share, so a hash list built from local files matches what a crawl computes. Nothing here writes a body
anywhere: it is decoded and hashed in memory and the caller drops it.

May import: the standard library, Pillow, numpy, imagehash, pdqhash. Nothing from the rest of ``crawler``,
and never Scrapy or Twisted (tests/test_layout.py checks it).
"""
