"""Match each fetched image's hashes against the hash lists; every match becomes a queued event.

The matcher is built once when the spider opens. Hash-list contents and matched URLs are never logged
above DEBUG: an INFO line names the run, the reference id, the list and the algorithm only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured
from scrapy.utils.defer import maybe_deferred_to_future

from crawler.events.event import events_for
from crawler.matching.loading import load_hashlists
from crawler.items import OutcomeItem
from crawler.pipelines.eventpublisher import EventPublisher

if TYPE_CHECKING:
    from crawler.matching.matcher import Match, Matcher

logger = logging.getLogger(__name__)


class MatchPipeline:
    def __init__(self, crawler: Crawler, matcher: Matcher) -> None:
        self.crawler = crawler
        self.matcher = matcher
        self.queue: EventPublisher | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> MatchPipeline:
        settings = crawler.settings
        specs = settings.getlist("REFWATCH_HASHLISTS")
        if not specs:
            raise NotConfigured  # no hash lists: nothing to match
        from crawler.matching.matcher import Matcher  # numba-backed: loaded only when there is something to match

        lists = settings.get("REFWATCH_LOADED_HASHLISTS") or load_hashlists(  # loaded by runner.check_inputs
            specs, settings.get("REFWATCH_HASHLIST_ALGORITHM"),
            skip_bad_lines=settings.getbool("REFWATCH_HASHLIST_SKIP_BAD_LINES"))
        radii = settings.getdict("REFWATCH_RADII")
        matcher = Matcher(lists, radii={k: int(v) for k, v in radii.items()},
                          pdq_min_quality=settings.getint("REFWATCH_PDQ_MIN_QUALITY"))
        for (list_name, algorithm), count in sorted(matcher.counts().items()):
            logger.info("hash list %s: %d %s entries", list_name, count, algorithm)
        return cls(crawler, matcher)

    def open_spider(self) -> None:
        self.queue = EventPublisher(self.crawler, self.crawler.spider.run.queue_url)  # type: ignore[union-attr]

    async def close_spider(self) -> None:
        if self.queue is not None:
            await maybe_deferred_to_future(self.queue.close())  # closed in a thread: the reactor runs on

    def process_item(self, item: OutcomeItem) -> OutcomeItem:
        live = self._live_matches(item) if item.md5 is not None else []
        recorded = self._recorded_matches(item)
        item.matched = bool(live)
        item.match_count = len(live)
        item.recorded_matched = bool(recorded)
        if live or recorded:
            where = "both" if live and recorded else "live_only" if live else "recorded_only"
            stats = self.crawler.stats
            assert stats is not None
            stats.inc_value(f"refwatch/match_sources/{where}")
        for matches, source in ((live, "live"), (recorded, "recorded")):
            if matches:
                self._publish(item, matches, source)
        return item

    def _live_matches(self, item: OutcomeItem) -> list[Match]:
        return self.matcher.match(item.hashes(), pdq_quality=item.pdq_quality, pdq_dihedral=item.pdq_dihedral)

    def _recorded_matches(self, item: OutcomeItem) -> list[Match]:
        """Matches of the hashes the snapshot recorded (LAION's md5 sidecars): the audit of a reference that
        may be dead now, and the audits' undercount accounting."""
        recorded = {"md5": item.recorded_md5, "sha256": item.recorded_sha256, "phash": item.recorded_phash}
        if not any(recorded.values()):
            return []
        return self.matcher.match(recorded)

    def _publish(self, item: OutcomeItem, matches: list[Match], source: str) -> None:
        stats = self.crawler.stats
        assert stats is not None and self.queue is not None
        if source == "live":
            stats.inc_value("refwatch/matched_references")
        else:
            stats.inc_value("refwatch/recorded_matched_references")
        for m in matches:
            prefix = "refwatch/matches" if source == "live" else "refwatch/recorded_matches"
            stats.inc_value(f"{prefix}/{m.list_name}/{m.algorithm}")
            logger.info("match: run %s ref %s list %s %s distance %d (%s)",
                        item.run_id, item.ref_id, m.list_name, m.algorithm, m.distance, source)
            logger.debug("match detail: url %s entry %s", item.url, m.entry_id)
        events = events_for(item.run_id, item.ref_id, item.url, item.page_url, matches, source=source)
        self.queue.publish(events)  # refwatch/events_published counts them once written
