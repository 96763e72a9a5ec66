"""Synthetic, benign test material: images made with Pillow/numpy, a sample web serving them, run histories.

Used by ``refwatch demo``, the tests and the benchmarks; nothing here is ever real content. ``images`` makes
deterministic pictures and their variants; ``web`` serves them on loopback (with paths that choose failure
modes); ``history`` writes run histories by the crawl's output contract.

May import: the standard library, Pillow, numpy, pyarrow. Never Scrapy or Twisted.
"""
