"""Hash every final answer's body in memory, then drop the body.

This is the earliest place where a body is whole and decompressed (see the ordering note in
``crawler.settings``). Decoding runs in a small Twisted thread pool so a slow or hostile image never stalls
the reactor (the hashing kernels release the GIL, so the threads really run beside it); the response that
continues towards the spider carries an empty body and the ``Digest`` in its meta, so nothing later —
items, logs, pipelines, feeds — can keep the bytes. The hand-off returns a Deferred, which any reactor
awaits; ``run_in_thread`` can be replaced (tests run it inline, without a reactor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scrapy import Spider, signals
from scrapy.crawler import Crawler
from scrapy.http import Request, Response
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from crawler.hashing.digest import ALGORITHMS, Digest, hash_bytes
from crawler.references import REFERENCE_META

DIGEST_META = "refwatch_digest"
DIHEDRAL_META = "refwatch_pdq_dihedral"
BODY_SIZE_META = "refwatch_body_size"


class ImageHashMiddleware:
    def __init__(self, max_pixels: int, threads: int, pdq_dihedral: bool = False,
                 algorithms: tuple[str, ...] = ALGORITHMS,
                 run_in_thread: Callable[..., Deferred[Any]] | None = None) -> None:
        self.max_pixels = max_pixels
        self.pdq_dihedral = pdq_dihedral
        self.algorithms = algorithms
        self._pool: ThreadPool | None = None
        if run_in_thread is None:
            self._pool = ThreadPool(minthreads=1, maxthreads=max(1, threads), name="refwatch-hash")
            self._pool.start()
            run_in_thread = self._in_pool
        self._run_in_thread = run_in_thread

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ImageHashMiddleware:
        middleware = cls(
            max_pixels=crawler.settings.getint("REFWATCH_MAX_PIXELS"),
            threads=crawler.settings.getint("REFWATCH_HASH_THREADS"),
            pdq_dihedral=crawler.settings.getbool("REFWATCH_PDQ_DIHEDRAL"),
            algorithms=tuple(crawler.settings.getlist("REFWATCH_HASHES", list(ALGORITHMS))),
        )
        crawler.signals.connect(middleware.spider_closed, signal=signals.spider_closed)
        return middleware

    async def process_response(self, request: Request, response: Response) -> Response:
        if REFERENCE_META not in request.meta:
            return response  # not a reference (e.g. robots.txt): Scrapy's own components need the body
        body = response.body
        request.meta[BODY_SIZE_META] = len(body)
        if 200 <= response.status < 300:
            digest, dihedral = await maybe_deferred_to_future(self._run_in_thread(self._hash, body))
            request.meta[DIGEST_META] = digest
            if dihedral:
                request.meta[DIHEDRAL_META] = dihedral
        # The body stops here: everything downstream sees hashes and metadata only. A plain Response, not
        # response.replace(): that would run encoding detection on a text body about to be dropped. The
        # headers object is handed over, not copied (the old response is dropped): a copy normalises every
        # header name and value again.
        stripped = Response(response.url, status=response.status, body=b"", flags=response.flags,
                            request=request, certificate=response.certificate,
                            ip_address=response.ip_address, protocol=response.protocol)
        stripped.headers = response.headers
        return stripped

    def _hash(self, body: bytes) -> tuple[Digest, tuple[str, ...]]:
        """Runs in a hashing thread: the digest, and the dihedral PDQ hashes when they are asked for."""
        digest = hash_bytes(body, max_pixels=self.max_pixels, algorithms=self.algorithms,
                            pdq_dihedral=self.pdq_dihedral)
        return digest, digest.pdq_dihedral[1:] if digest.pdq_dihedral else ()

    def _in_pool(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        from twisted.internet import reactor

        assert self._pool is not None
        return threads.deferToThreadPool(reactor, self._pool, function, *args)  # type: ignore[arg-type]

    def spider_closed(self, spider: Spider) -> None:
        if self._pool is not None:
            self._pool.stop()  # lets the running hashes finish
