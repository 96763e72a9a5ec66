"""Scrapy's decompression middleware, minus the memory a gzip bomb kept alive after it failed.

Scrapy raises ``IgnoreRequest(...) from`` its decompression error; that error's traceback keeps the
decompressor's frame, and with it everything inflated so far (up to ``--max-bytes``), alive as long as the
failure is: until the reference's row is written. Eight bombs at once held ~400 MiB
(tests/test_memory.py). Here the failure is raised again outside the ``except`` block, with the same message
(the outcome stays ``too_large``) and no chained error, so the inflated bytes are freed at once.
"""

from __future__ import annotations

from scrapy import Spider
from scrapy.downloadermiddlewares.httpcompression import HttpCompressionMiddleware
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Request, Response


class DecompressionMiddleware(HttpCompressionMiddleware):
    def process_response(self, request: Request, response: Response,
                         spider: Spider | None = None) -> Request | Response:
        try:
            return super().process_response(request, response)
        except IgnoreRequest as exc:
            message = str(exc)
        raise IgnoreRequest(message)  # outside the except: no __context__, so no frame holds the bytes
