"""What many workers share through Redis: the shard queue (Streams consumer groups with leases), each run's
settings, and politeness (per-host slots and back-offs) across workers.

May import: the vocabulary only. No Scrapy, no Twisted: plain ``redis`` calls, tested against a real
``redis-server``. Correctness never depends on Redis keeping its data: commits live in the output store.
"""
