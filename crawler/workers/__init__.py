"""The processes that crawl shards: ``refwatch crawl --processes N`` (a parent handing shards to child
crawls) and ``refwatch worker`` (shards claimed from Redis). Each shard attempt is one child crawl process.

May import: ``crawler.shards``, ``crawler.coordination``, ``crawler.runs``, ``crawler.readers``,
``crawler.storage`` and the vocabulary. No Scrapy in the parent: it starts ``refwatch`` child processes.
"""
