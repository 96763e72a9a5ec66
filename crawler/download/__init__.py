"""refwatch's HTTP(S) download handler: Scrapy's, with connection failures reported as soon as they happen.

A Scrapy-layer component (level 5), wired with ``DOWNLOAD_HANDLERS`` in ``crawler/settings.py``; it imports
nothing of refwatch.
"""
