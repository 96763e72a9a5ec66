"""Write outcome rows to ``<out>/runs/<run_id>/outcomes/part-*.parquet``, incrementally.

Rows are buffered and written as a new part file every ``REFWATCH_OUTCOMES_BATCH_ROWS`` rows or
``REFWATCH_OUTCOMES_FLUSH_SECONDS``; each part is written to a temporary name and renamed, so a crash loses
at most the unflushed batch and never leaves a half-written file. Writes run in one background thread, in
order. Redoing a run (same run id) first removes the parts of the earlier attempt: outputs are keyed by
run, so a redo overwrites rather than duplicates.

This pipeline is the last one: it also keeps the per-outcome stats that metrics and the summary read.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from scrapy.crawler import Crawler
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.threads import deferToThread

from crawler.domains import url_domain
from crawler.items import OutcomeItem
from crawler.runs.context import start_manifest
from crawler.runs.finish import finish_run
from crawler.runs.history import Manifest
from crawler.shards.commit import ShardCommit, attempt_dir, commit_shard, discard_attempt, run_store

logger = logging.getLogger(__name__)

OUTCOME_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("ref_id", pa.string()),
        ("url", pa.string()),
        ("page_url", pa.string()),
        ("alt", pa.string()),
        ("outcome", pa.string()),
        ("http_status", pa.int16()),
        ("final_url", pa.string()),
        ("content_type", pa.string()),
        ("bytes", pa.int64()),
        ("md5", pa.string()),
        ("sha1", pa.string()),
        ("sha256", pa.string()),
        ("phash", pa.string()),
        ("dhash", pa.string()),
        ("pdq", pa.string()),
        ("pdq_quality", pa.int16()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("image_format", pa.string()),
        ("x_robots_tag", pa.string()),
        ("redirects", pa.int8()),
        ("matched", pa.bool_()),
        ("match_count", pa.int32()),
        ("drift", pa.string()),
        ("placeholder_reason", pa.string()),
        ("recorded_md5", pa.string()),
        ("recorded_sha256", pa.string()),
        ("recorded_phash", pa.string()),
        ("recorded_matched", pa.bool_()),
        ("domain", pa.string()),
        ("carried_from", pa.string()),
        ("fetched_at", pa.timestamp("ms", tz="UTC")),
        ("elapsed_ms", pa.float32()),
        ("hash_ms", pa.float32()),
        ("error", pa.string()),
    ]
)


#: Columns the writer derives, and those only the end-of-run pass fills in.
_DERIVED = frozenset({"domain", "placeholder_reason"})
_COLUMNS = tuple(name for name in OUTCOME_SCHEMA.names if name not in _DERIVED)


def write_part(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write one part file whole: to a temporary name first, then renamed into place."""
    table = pa.Table.from_pylist(rows, schema=OUTCOME_SCHEMA)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


class OutcomeWriterPipeline:
    def __init__(self, crawler: Crawler, batch_rows: int, flush_seconds: float) -> None:
        self.crawler = crawler
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self._rows: list[dict[str, Any]] = []
        self._parts = 0
        self._last_flush = time.monotonic()
        self._dir: Path | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refwatch-outcomes")
        self._pending: list[Future[None]] = []
        self._manifest: Manifest | None = None
        self._rows_written = 0
        self._part_names: list[str] = []
        shard = crawler.settings.getdict("REFWATCH_SHARD")
        self._shard_id: str | None = str(shard["shard_id"]) if shard else None
        self._attempt = crawler.settings.get("REFWATCH_SHARD_ATTEMPT") or ""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> OutcomeWriterPipeline:
        # Arrow's default allocator (mimalloc) kept freed part buffers: RSS crept ~10 MiB per 100k rows in
        # bench/crawl_bench.py --flat-memory; the system allocator gave them back (+2.8 MiB per 100k).
        pa.set_memory_pool(pa.system_memory_pool())
        s = crawler.settings
        return cls(crawler, s.getint("REFWATCH_OUTCOMES_BATCH_ROWS"), s.getfloat("REFWATCH_OUTCOMES_FLUSH_SECONDS"))

    def open_spider(self) -> None:
        run = self.crawler.spider.run  # type: ignore[union-attr]
        if self._shard_id is not None:  # one shard of a sharded run: its own attempt folder, no manifest
            if not self._attempt:
                raise ValueError("a shard crawl needs REFWATCH_SHARD_ATTEMPT")
            self._dir = attempt_dir(run, self._shard_id, self._attempt)
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir.mkdir(parents=True, exist_ok=True)
            return
        if run.remote is not None:
            run.remote.pull_manifests()  # the output's runs, to find this run's series when it ends
        self._manifest = start_manifest(run, self.crawler.settings, list(self.crawler.spider.snapshots))  # type: ignore[union-attr]
        self._dir = run.outcomes_dir
        self._dir.mkdir(parents=True, exist_ok=True)
        stale = sorted(self._dir.glob("part-*.parquet")) + sorted(self._dir.glob(".part-*.tmp"))
        if stale:
            logger.info("run %s is being redone: replacing %d earlier outcome files", run.run_id, len(stale))
            for path in stale:
                path.unlink()

    def process_item(self, item: OutcomeItem) -> OutcomeItem:
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value(f"refwatch/outcome/{item.outcome}")
        if item.bytes:
            stats.inc_value("refwatch/response_bytes", item.bytes)
        row = {name: getattr(item, name) for name in _COLUMNS}
        row["outcome"] = str(item.outcome)
        row["domain"] = url_domain(item.url)
        self._rows.append(row)
        self._rows_written += 1
        if len(self._rows) >= self.batch_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self._flush()
        return item

    async def close_spider(self) -> None:
        """Write the last rows, then the end-of-run pass in a thread (seconds per million references: the
        reactor stays free), its counts applied to the stats back on the reactor."""
        self._flush()
        assert self.crawler.stats is not None
        try:
            updates = await maybe_deferred_to_future(deferToThread(self._drain_and_finish))
        except Exception as exc:  # noqa: BLE001 - any failure leaves the run unfinished, and says so
            # The manifest stays "running": the report, re-checks and export-clean skip the run; a redo fixes it.
            run = self.crawler.spider.run  # type: ignore[union-attr]
            logger.error("run %s: its outputs could not be written (%s: %s); redo it with --run-id %s",
                         run.run_id, type(exc).__name__, exc, run.run_id)
            self.crawler.stats.set_value("refwatch/outputs_failed", 1)
            return
        for key, (how, value) in updates.items():
            if how == "inc":
                self.crawler.stats.inc_value(key, value)
            else:
                self.crawler.stats.set_value(key, value)

    def _drain_and_finish(self) -> dict[str, tuple[str, int]]:
        self._executor.shutdown(wait=True)
        for future in self._pending:
            future.result()  # surface a failed write or upload instead of losing it silently
        return self._finish()

    def _finish(self) -> dict[str, tuple[str, int]]:
        if self._shard_id is not None:
            return self._commit_shard()
        assert self._manifest is not None
        return finish_run(self.crawler.spider.run, self._manifest, self.crawler.settings)  # type: ignore[union-attr]

    def _flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._rows:
            return
        assert self._dir is not None
        rows, self._rows = self._rows, []
        path = self._dir / f"part-{self._parts:05d}.parquet"
        self._parts += 1
        self._part_names.append(path.name)
        self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]
        self._pending.append(self._executor.submit(self._write_and_publish, path, rows))

    def _write_and_publish(self, path: Path, rows: list[dict[str, Any]]) -> None:
        write_part(path, rows)
        self.crawler.spider.run.publish(path)  # type: ignore[union-attr]  # uploaded whole, as soon as written

    def _commit_shard(self) -> dict[str, tuple[str, int]]:
        """Commit this attempt if it is whole: every reference of the shard read and each one a row (or a
        re-check skip, or a corrupt record). Another attempt's commit first, or an attempt cut short
        (SIGTERM, a lost lease), discards this one's parts: the shard is someone else's or is done again."""
        spider: Any = self.crawler.spider
        run = spider.run
        stats: dict[str, Any] = dict(self.crawler.stats.get_stats()) if self.crawler.stats else {}
        assert self._shard_id is not None
        bad = int(stats.get("refwatch/bad_records", 0))
        refs_read = int(stats.get("refwatch/refs_read", 0))
        skipped = spider.refs_seen - refs_read  # a re-check's references it does not fetch
        planned = spider.shard.references
        whole = (spider.read_to_end and self._rows_written + skipped == spider.refs_seen
                 and (planned is None or spider.refs_seen + bad == planned))
        if not whole:
            logger.warning("shard %s attempt %s is incomplete (%d rows of %d references read%s): not committed",
                           self._shard_id, self._attempt, self._rows_written, spider.refs_seen,
                           "" if planned is None else f", {planned} planned")
            discard_attempt(run, self._shard_id, self._attempt)
            return {"refwatch/shard/incomplete": ("set", 1)}
        counters = {k: v for k, v in stats.items() if k.startswith("refwatch/") and isinstance(v, int | float)}
        commit = ShardCommit(shard_id=self._shard_id, attempt=self._attempt, rows=self._rows_written,
                             refs_read=spider.refs_seen, bad_records=bad, parts=tuple(self._part_names),
                             stats=counters)
        if commit_shard(run_store(run), run.run_id, commit):
            return {"refwatch/shard/committed": ("set", 1)}
        logger.info("shard %s was committed by another attempt: discarding attempt %s", self._shard_id, self._attempt)
        discard_attempt(run, self._shard_id, self._attempt)
        return {"refwatch/shard/lost": ("set", 1)}
