"""A run cut into shards: the plan written before any work, attempts, create-only commit markers, and the
end-of-run pass that reads committed attempts only.

May import: the vocabulary, ``crawler.readers`` (row counts), ``crawler.storage`` (commit markers),
``crawler.runs`` (the end-of-run pass). No Scrapy, no Twisted, no Redis: the output store is the source of
truth, whoever hands the shards out.
"""
