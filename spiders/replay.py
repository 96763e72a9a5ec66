"""The replay spider: every reference of a snapshot becomes one request, and every request one outcome row.

It reads references lazily (a 5-million-row snapshot replays in flat memory), never drops a duplicate URL
(each reference gets its own row), and turns both answers and failures into ``OutcomeItem`` rows. Hashing
happened earlier, in ``ImageHashMiddleware``; here the response body is already gone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import scrapy
from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.http import Request, Response
from scrapy.utils.httpobj import urlparse_cached
from twisted.python.failure import Failure

from crawler.hashing.digest import Digest
from crawler.items import OutcomeItem
from crawler.outcomes import Outcome, outcome_for_body, outcome_for_exception, outcome_for_status
from crawler.readers import iter_references, open_snapshot
from crawler.references import REFERENCE_META, Reference
from crawler.runs.recheck import recheck_selection
from crawler.runs.context import RunContext, run_context
from crawler.shards.plan import Shard
from crawler.urls import invalid_url_reason
from middlewares.hashing import BODY_SIZE_META, DIGEST_META, DIHEDRAL_META
from middlewares.resolver import NO_SUCH_HOST_STAT, installed_resolver

#: References to a name the resolver already answered "no such name" for, ended without a request.
KNOWN_MISSING_STAT = "refwatch/dns_known_missing"

_MAX_ERROR_CHARS = 300


class ReplaySpider(scrapy.Spider):
    name = "replay"

    def __init__(self, snapshot: str | None = None, run_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._snapshot_arg = snapshot
        self._run_id_arg = run_id
        self.snapshots: list[str] = []
        self.total: int | None = None
        self.run: RunContext
        self.only_refs: frozenset[str] | None = None  # a re-check replays just these references
        self.shard: Shard | None = None  # a sharded run's child crawls one shard of the plan
        self.refs_seen = 0  # references read, re-check skips included
        self.read_to_end = False  # every reference of the snapshots (or the shard) was read

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> ReplaySpider:
        spider: ReplaySpider = super().from_crawler(crawler, *args, **kwargs)
        settings = crawler.settings
        shard = settings.getdict("REFWATCH_SHARD")
        if shard:
            spider.shard = Shard.from_json(shard)
            spider.snapshots = [spider.shard.path]
        elif spider._snapshot_arg:
            spider.snapshots = [p for p in spider._snapshot_arg.split(",") if p]
        else:
            spider.snapshots = settings.getlist("REFWATCH_SNAPSHOTS")
        if not spider.snapshots:
            raise ValueError("replay: no snapshot given (-a snapshot=PATH[,PATH...] or REFWATCH_SNAPSHOTS)")
        # Validate every snapshot before anything starts: bad input fails with one line, nothing written.
        opened = [open_snapshot(path) for path in spider.snapshots]
        totals = [s.total for s in opened]
        spider.total = None if None in totals else sum(t for t in totals if t is not None)
        if spider.shard is not None and not spider.shard.whole_file:
            spider.total = spider.shard.references
        spider.run = run_context(
            settings.get("REFWATCH_OUT"),
            spider._run_id_arg or settings.get("REFWATCH_RUN_ID"),
            settings.get("REFWATCH_QUEUE"),
            settings,
        )
        recheck = settings.get("REFWATCH_RECHECK_RUN")
        if recheck:
            spider.run.pull(f"runs/{recheck}/")
            spider.only_refs = recheck_selection(spider.run.out_dir / "runs" / recheck,
                                                 settings.getlist("REFWATCH_RECHECK_ONLY"))
            spider.total = len(spider.only_refs)
        return spider

    async def start(self) -> AsyncIterator[Any]:
        stats = self.crawler.stats
        assert stats is not None
        only = self.only_refs
        for ref in self._references():
            self.refs_seen += 1
            if only is not None and ref.ref_id not in only:
                continue  # a re-check: the earlier run's row is carried over when the run ends
            stats.inc_value("refwatch/refs_read")
            reason = invalid_url_reason(ref.url)
            if reason is None:
                try:
                    request = Request(
                        ref.url,
                        callback=self.parse,
                        errback=self.failed,
                        dont_filter=True,  # duplicate URLs are distinct references: each gets its row
                        meta={REFERENCE_META: ref},
                    )
                except ValueError as exc:
                    reason = str(exc)
            if reason is not None:
                yield self._row(ref, Outcome.INVALID_URL, error=reason)
                continue
            # A dead domain is often referenced many times: once the resolver has answered "no such name" for
            # it (definitive, cached), its other references end here as the errback would end them, without the
            # ~1 ms of scheduler, downloader and middlewares a request costs (bench/deadlink_bench.py). The
            # resolver is looked up each time: Scrapy installs it only when the reactor starts.
            resolver = installed_resolver()
            if resolver is not None:
                no_such_host = resolver.known_missing(urlparse_cached(request).hostname or "")
                if no_such_host is not None:
                    stats.inc_value(KNOWN_MISSING_STAT)
                    stats.inc_value(NO_SUCH_HOST_STAT)
                    yield self._failure_row(request, no_such_host)
                    continue
            # Lazy start (Scrapy's documented pattern): wait while the downloader is full instead of
            # filling the scheduler with the whole snapshot.
            if self.crawler.engine.needs_backout():
                await self.crawler.signals.wait_for(signals.scheduler_empty)
            yield request
        self.read_to_end = True

    def _references(self) -> Iterator[Reference]:
        shard = self.shard
        if shard is None or shard.whole_file:
            return iter_references(self.snapshots, on_bad_record=self._bad_record)
        assert shard.start is not None
        return open_snapshot(shard.path, on_bad_record=self._bad_record).rows(shard.start, shard.stop)

    def _bad_record(self, path: str, offset: int, reason: str) -> None:
        assert self.crawler.stats is not None
        self.crawler.stats.inc_value("refwatch/bad_records")
        self.logger.warning("skipped a corrupt record in %s at offset %d: %s", path, offset, reason)

    def parse(self, response: Response) -> OutcomeItem:
        ref: Reference = response.meta[REFERENCE_META]
        digest: Digest | None = response.meta.get(DIGEST_META)
        content_type = _header(response, b"Content-Type")
        outcome = outcome_for_status(response.status)
        if outcome is None:
            outcome = outcome_for_body(
                decodable=digest is not None and digest.decodable,
                looks_like_image=digest is not None and digest.looks_like_image,
                content_type=content_type,
            )
        item = self._row(
            ref,
            outcome,
            http_status=response.status,
            final_url=response.url,
            content_type=content_type,
            bytes=response.meta.get(BODY_SIZE_META),
            x_robots_tag=_header(response, b"X-Robots-Tag"),
            redirects=len(response.meta.get("redirect_urls", ())),
            elapsed_ms=_latency_ms(response.meta),
        )
        if digest is not None:
            _apply_digest(item, digest)
            item.pdq_dihedral = response.meta.get(DIHEDRAL_META, ())
            if outcome is Outcome.DECODE_ERROR:
                item.error = _truncate(digest.decode_error)
        return item

    def failed(self, failure: Failure) -> OutcomeItem:
        return self._failure_row(failure.request, failure.value)  # type: ignore[attr-defined]

    def _failure_row(self, request: Request, exc: BaseException) -> OutcomeItem:
        ref: Reference = request.meta[REFERENCE_META]
        outcome = outcome_for_exception(exc, _causes(exc))
        return self._row(
            ref,
            outcome,
            final_url=request.url,
            redirects=len(request.meta.get("redirect_urls", ())),
            elapsed_ms=_latency_ms(request.meta),
            error=_truncate(f"{type(exc).__name__}: {exc}".rstrip(": ")),
        )

    def _row(self, ref: Reference, outcome: Outcome, **fields: Any) -> OutcomeItem:
        return OutcomeItem(
            run_id=self.run.run_id,
            ref_id=ref.ref_id,
            url=ref.url,
            page_url=ref.page_url,
            alt=ref.alt,
            outcome=outcome,
            fetched_at=datetime.now(UTC),
            recorded_md5=ref.recorded_md5,
            recorded_sha256=ref.recorded_sha256,
            recorded_phash=ref.recorded_phash,
            **fields,
        )


def _causes(exc: BaseException, depth: int = 4) -> list[BaseException]:
    """The errors wrapped in ``exc``: Twisted's ``ResponseFailed.reasons`` and ``__cause__``, a few levels deep
    (Scrapy wraps a ``ResponseFailed`` in ``DownloadFailedError``; the reason that names the outcome is inside)."""
    found: list[BaseException] = []
    layer = [exc]
    for _ in range(depth):
        inner: list[BaseException] = []
        for error in layer:
            inner += [getattr(r, "value", r) for r in getattr(error, "reasons", ()) or ()]
            if error.__cause__ is not None:
                inner.append(error.__cause__)
        found += inner
        layer = inner
    return found


def _apply_digest(item: OutcomeItem, digest: Digest) -> None:
    item.bytes = digest.size
    item.md5, item.sha1, item.sha256 = digest.md5, digest.sha1, digest.sha256
    item.phash, item.dhash, item.pdq, item.pdq_quality = digest.phash, digest.dhash, digest.pdq, digest.pdq_quality
    item.width, item.height, item.image_format = digest.width, digest.height, digest.image_format
    item.hash_ms = digest.hash_seconds * 1000.0


def _header(response: Response, name: bytes) -> str | None:
    values = response.headers.getlist(name)
    if not values:
        return None
    return ", ".join(v.decode("latin-1") for v in values)


def _latency_ms(meta: dict[str, Any]) -> float | None:
    latency = meta.get("download_latency")
    return None if latency is None else latency * 1000.0


def _truncate(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"
