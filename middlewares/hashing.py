"""Hash every final answer's body in memory, then drop the body.

This is the earliest place where a body is whole and decompressed (see the ordering note in
``crawler.settings``). Decoding runs in a small thread pool so a slow or hostile image never stalls the
reactor; the response that continues towards the spider carries an empty body and the ``Digest`` in its
meta, so nothing later — items, logs, pipelines, feeds — can keep the bytes.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from scrapy import Spider, signals
from scrapy.crawler import Crawler
from scrapy.http import Request, Response

from crawler.hashing import hash_bytes
from crawler.references import REFERENCE_META

DIGEST_META = "refwatch_digest"
BODY_SIZE_META = "refwatch_body_size"


class ImageHashMiddleware:
    def __init__(self, max_pixels: int, threads: int) -> None:
        self.max_pixels = max_pixels
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="refwatch-hash")

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ImageHashMiddleware:
        middleware = cls(
            max_pixels=crawler.settings.getint("REFWATCH_MAX_PIXELS"),
            threads=crawler.settings.getint("REFWATCH_HASH_THREADS"),
        )
        crawler.signals.connect(middleware.spider_closed, signal=signals.spider_closed)
        return middleware

    async def process_response(self, request: Request, response: Response) -> Response:
        if REFERENCE_META not in request.meta:
            return response  # not a reference (e.g. robots.txt): Scrapy's own components need the body
        body = response.body
        request.meta[BODY_SIZE_META] = len(body)
        if 200 <= response.status < 300:
            hasher = partial(hash_bytes, body, max_pixels=self.max_pixels)
            request.meta[DIGEST_META] = await asyncio.wrap_future(self._executor.submit(hasher))
        # The body stops here: everything downstream sees hashes and metadata only.
        return response.replace(body=b"")

    def spider_closed(self, spider: Spider) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
