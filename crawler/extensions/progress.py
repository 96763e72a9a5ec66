"""A progress bar on the terminal: references done, rate, and ETA when the snapshot's size is known.

Off unless ``REFWATCH_PROGRESS`` is set (the CLI sets it when standard error is a terminal). It reads the
same stats the metrics do, twice a second, so it costs nothing per reference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scrapy import Spider, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured

from crawler.outcomes import Outcome

if TYPE_CHECKING:
    from rich.progress import Progress

REFRESH_SECONDS = 0.5


class ProgressExtension:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self._progress: Progress | None = None
        self._task: Any = None
        self._loop: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ProgressExtension:
        if not crawler.settings.getbool("REFWATCH_PROGRESS"):
            raise NotConfigured  # off unless asked for: nothing to warn about
        ext = cls(crawler)
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        return ext

    def _done(self) -> tuple[int, int]:
        stats = self.crawler.stats.get_stats() if self.crawler.stats else {}
        done = sum(int(stats.get(f"refwatch/outcome/{o.value}", 0)) for o in Outcome)
        return done, int(stats.get(f"refwatch/outcome/{Outcome.OK.value}", 0))

    def spider_opened(self, spider: Spider) -> None:
        # rich is imported only when the bar is on (~30 ms of every crawl's start-up otherwise)
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        from twisted.internet.task import LoopingCall

        self._progress = Progress(
            TextColumn("[bold]refwatch[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f} refs/s · {task.fields[alive]} alive"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
        )
        self._task = self._progress.add_task("refs", total=getattr(spider, "total", None), rate=0.0, alive=0)
        self._progress.start()
        self._loop = LoopingCall(self._refresh)
        self._loop.start(REFRESH_SECONDS, now=False)

    def _refresh(self) -> None:
        if self._progress is None:
            return
        done, alive = self._done()
        task = self._progress.tasks[0]
        elapsed = task.elapsed or 0.0
        self._progress.update(self._task, completed=done, alive=alive, rate=done / elapsed if elapsed else 0.0)

    def spider_closed(self, spider: Spider) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._progress is not None:
            self._refresh()
            self._progress.stop()
            self._progress = None
