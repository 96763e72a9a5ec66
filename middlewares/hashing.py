"""Hash every final answer's body in memory, then drop the body.

This is the earliest place where a body is whole and decompressed (see the ordering note in
``crawler.settings``). Decoding runs in a small Twisted thread pool so a slow or hostile image never stalls
the reactor (the hashing kernels release the GIL, so the threads really run beside it); the response that
continues towards the spider carries an empty body and the ``Digest`` in its meta, so nothing later —
items, logs, pipelines, feeds — can keep the bytes. The hand-off returns a Deferred, which any reactor
awaits; ``run_in_thread`` can be replaced (tests run it inline, without a reactor). When no perceptual hash
is asked for (``--hashes md5,sha256``...), nothing is decoded and a body up to ``INLINE_DIGEST_BYTES`` is
digested on the reactor thread instead: cheaper than the hand-off.

Decoding is where a crawl's memory peaks, so the threads share one ``PixelBudget``
(``REFWATCH_DECODE_PIXEL_BUDGET``): an image waits, in its thread, until its pixels fit beside those being
decoded. And the crawl lets Pillow hold a whole image in one memory block (``hold_images_in_one_block``),
which the hashing reads in place.

A body's bytes count against the crawl's body budget (``REFWATCH_BODY_BUDGET``, crawler/download/) from the
moment they arrive until the body is dropped: here, once it is hashed, or at once when it is not hashed (a
non-2xx answer, or not a reference: the body goes on to Scrapy's own components, which are not budgeted).
The download handler puts the callable that gives them back in the request's meta (``BODY_RELEASE_META``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image
from scrapy import Spider, signals
from scrapy.crawler import Crawler
from scrapy.http import Request, Response
from scrapy.statscollectors import StatsCollector
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from crawler.hashing.budget import PixelBudget
from crawler.hashing.digest import ALGORITHMS, PERCEPTUAL, Digest, hash_bytes
from crawler.references import REFERENCE_META

DIGEST_META = "refwatch_digest"
DIHEDRAL_META = "refwatch_pdq_dihedral"
BODY_SIZE_META = "refwatch_body_size"
#: Set by the download handler (crawler/download/budgeted_body.py, which this layer does not import): a
#: callable giving the body's bytes back to the body budget; called once the body is dropped here.
BODY_RELEASE_META = "refwatch_body_release"

#: Without a perceptual hash nothing is decoded, and a body up to this size is hashed on the reactor thread:
#: its digests take well under a millisecond at 56 KB (md5+sha1+sha256, ~3 ms at 1 MiB), less than handing it
#: to a hashing thread and back costs (measured with --hashes md5 on 3,000 web-sized images: 4.4-4.8 -> 3.7-3.9
#: ms of crawl CPU per image).
INLINE_DIGEST_BYTES = 1 << 20

# Stats keys, set when the spider closes: decodes that waited for the budget and for how long in all, the most
# budget pixels ever in flight, and images larger than the whole budget (decoded alone).
DECODE_WAITS = "refwatch/decode_budget/waits"
DECODE_WAIT_SECONDS = "refwatch/decode_budget/wait_seconds"
DECODE_PEAK_PIXELS = "refwatch/decode_budget/peak_pixels"
DECODE_ALONE = "refwatch/decode_budget/alone"


class ImageHashMiddleware:
    def __init__(self, max_pixels: int, threads: int, pdq_dihedral: bool = False,
                 algorithms: tuple[str, ...] = ALGORITHMS,
                 run_in_thread: Callable[..., Deferred[Any]] | None = None,
                 decode_budget: PixelBudget | None = None, stats: StatsCollector | None = None) -> None:
        self.max_pixels = max_pixels
        self.pdq_dihedral = pdq_dihedral
        self.algorithms = algorithms
        self.decode_budget = decode_budget
        self._digests_only = not set(algorithms) & set(PERCEPTUAL)
        self.stats = stats
        self._pool: ThreadPool | None = None
        if run_in_thread is None:
            self._pool = ThreadPool(minthreads=1, maxthreads=max(1, threads), name="refwatch-hash")
            self._pool.start()
            run_in_thread = self._in_pool
        self._run_in_thread = run_in_thread

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ImageHashMiddleware:
        max_pixels = crawler.settings.getint("REFWATCH_MAX_PIXELS")
        middleware = cls(
            max_pixels=max_pixels,
            threads=crawler.settings.getint("REFWATCH_HASH_THREADS"),
            pdq_dihedral=crawler.settings.getbool("REFWATCH_PDQ_DIHEDRAL"),
            algorithms=tuple(crawler.settings.getlist("REFWATCH_HASHES", list(ALGORITHMS))),
            # unset (settings not from crawler.settings): one image at the pixel limit, as there
            decode_budget=PixelBudget(crawler.settings.getint("REFWATCH_DECODE_PIXEL_BUDGET", max_pixels)),
            stats=crawler.stats,
        )
        hold_images_in_one_block(max_pixels)
        crawler.signals.connect(middleware.spider_closed, signal=signals.spider_closed)
        return middleware

    async def process_response(self, request: Request, response: Response) -> Response:
        release = request.meta.pop(BODY_RELEASE_META, None)
        try:
            return await self._hashed(request, response)
        finally:
            if release is not None:
                release()  # hashed, not hashed or failed: the body is dropped (or leaves the download layer)

    async def _hashed(self, request: Request, response: Response) -> Response:
        if REFERENCE_META not in request.meta:
            return response  # not a reference (e.g. robots.txt): Scrapy's own components need the body
        body = response.body
        request.meta[BODY_SIZE_META] = len(body)
        if 200 <= response.status < 300:
            if self._digests_only and len(body) <= INLINE_DIGEST_BYTES:
                digest, dihedral = self._hash(body)  # no pixels to decode: cheaper here than a thread hand-off
            else:
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
                            pdq_dihedral=self.pdq_dihedral, decode_budget=self.decode_budget)
        return digest, digest.pdq_dihedral[1:] if digest.pdq_dihedral else ()

    def _in_pool(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        from twisted.internet import reactor

        assert self._pool is not None
        return threads.deferToThreadPool(reactor, self._pool, function, *args)  # type: ignore[arg-type]

    def spider_closed(self, spider: Spider) -> None:
        if self._pool is not None:
            self._pool.stop()  # lets the running hashes finish
        if self.decode_budget is not None and self.stats is not None:
            seen = self.decode_budget.stats()
            self.stats.set_value(DECODE_WAITS, seen.waits)
            self.stats.set_value(DECODE_WAIT_SECONDS, round(seen.wait_seconds, 3))
            self.stats.set_value(DECODE_PEAK_PIXELS, seen.peak_pixels)
            self.stats.set_value(DECODE_ALONE, seen.alone)


def hold_images_in_one_block(max_pixels: int) -> None:
    """Let Pillow allocate any image of up to ``max_pixels`` in one memory block (a process-wide setting,
    which only ever grows here; ``PILLOW_BLOCK_SIZE`` still works, larger).

    Pillow allocates an image's rows in blocks of 16 MiB. The hashing reads a one-block image in place
    (``crawler.hashing.digest._pixels``) but copies an image of several blocks out whole, through
    ``tobytes``: measured on a 64-megapixel RGB PNG, 10 bytes a pixel at the peak instead of 6 (610 -> 367
    MiB) and 2.2 -> 1.1 s. A block that large is its own mmap, so it goes back to the system when the image
    is freed, where 16 MiB blocks stay in the allocator's heap.
    """
    needed = min(4 * max_pixels + 4096, 1 << 30)  # RGB is kept as RGBX: 4 bytes a pixel, the most of any mode
    needed = -(-needed // 4096) * 4096  # Pillow wants whole pages (any --max-pixels must start a crawl)
    if Image.core.get_block_size() < needed:
        Image.core.set_block_size(needed)
