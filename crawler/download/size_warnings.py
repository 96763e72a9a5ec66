"""Scrapy's per-download size warnings, logged at DEBUG.

Scrapy's HTTP/1.1 handler logs a WARNING naming the request for every body over ``DOWNLOAD_MAXSIZE`` (and
over ``DOWNLOAD_WARNSIZE``): "Received N bytes which is larger than download max size (M) in request <GET
url>". For a crawler of other people's URLs that is one log line, and one URL, per oversized image: a hostile
or merely large snapshot turns the log into a list of its URLs, while each of those references already has
its ``too_large`` outcome row, its stats and its metrics. This filter lowers those records to DEBUG, where
per-reference detail belongs (``--log-level DEBUG`` still shows them); other records of that logger pass
unchanged.
"""

from __future__ import annotations

import logging

#: The logger Scrapy's handler writes them with.
SCRAPY_HTTP11_LOGGER = "scrapy.core.downloader.handlers.http11"
_SIZE_WARNINGS = ("larger than download max size", "larger than download warn size")


class SizeWarningsToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not any(text in str(record.msg) for text in _SIZE_WARNINGS):
            return True
        # Scrapy's log handler filters by LOG_LEVEL, so a record lowered here is shown only at DEBUG.
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return True


def demote_size_warnings() -> None:
    """Attach the filter to Scrapy's handler logger, once per process."""
    target = logging.getLogger(SCRAPY_HTTP11_LOGGER)
    if not any(isinstance(f, SizeWarningsToDebug) for f in target.filters):
        target.addFilter(SizeWarningsToDebug())
