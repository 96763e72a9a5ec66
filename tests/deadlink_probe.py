"""A crawl in a child process with two test-only components, for tests/test_deadlinks.py.

* ``ScriptedResolver``: refwatch's real resolver whose system call answers as a DNS server would for test
  names (``*.nxdomain.test``: NXDOMAIN; ``*.servfail.test``: a temporary failure; ``hK.loopback.test``:
  127.0.0.K) and asks the system for any other name, so a test gets these answers at once and without
  network, whatever resolver the machine has.
* ``EngineProbe``: counts the engine's heartbeats (a looping call at the engine's own interval, started when
  the engine starts, as the engine's is) and writes them with the crawl's stats to a JSON file when the spider
  closes: the heartbeat count when the last reference was scheduled tells whether the crawl waited for them.
  It also counts the ticks of Twisted's ``HostnameEndpoint`` attempt loop (``iterateEndpoint``, one per
  address tried and one more, ``attemptDelay`` later, to notice that all failed): how many times a
  connection waited for the attempt delay.

    python -m tests.deadlink_probe STATS.json NAME=VALUE ...   (settings; REFWATCH_SNAPSHOTS as a JSON list)
"""

from __future__ import annotations

import json
import socket
import sys
from functools import partial
from pathlib import Path
from typing import Any

from scrapy import signals
from scrapy.core.engine import ExecutionEngine
from scrapy.crawler import Crawler
from twisted.internet.task import LoopingCall

from middlewares.resolver import RefwatchResolver, lookup_ipv4


def scripted_gethostbyname(name: str) -> str:
    if name.endswith(".nxdomain.test"):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    if name.endswith(".servfail.test"):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    label = name.split(".")[0]
    if name.endswith(".loopback.test") and label[1:].isdigit():  # hK.loopback.test: 127.0.0.K
        return f"127.0.0.{int(label[1:])}"
    return socket.gethostbyname(name)


class ScriptedResolver(RefwatchResolver):
    def __init__(self, reactor: Any, cache_size: int, timeout: float) -> None:
        super().__init__(reactor, cache_size, timeout, lookup=partial(lookup_ipv4, gethostbyname=scripted_gethostbyname))


class _AttemptTicks:
    """Counts the calls of every ``LoopingCall`` named ``iterateEndpoint`` (HostnameEndpoint's attempt loop)."""

    count = 0
    installed = False

    @classmethod
    def install(cls) -> None:
        if cls.installed:
            return
        cls.installed = True
        call = LoopingCall.__call__

        def counting_call(loop: LoopingCall) -> None:
            if getattr(loop.f, "__name__", "") == "iterateEndpoint":
                cls.count += 1
            call(loop)

        LoopingCall.__call__ = counting_call  # type: ignore[method-assign]  # this child process only


class EngineProbe:
    def __init__(self, crawler: Crawler, path: Path) -> None:
        self.crawler = crawler
        self.path = path
        self.heartbeats = 0
        self.at_last_request = 0
        self.ticker = LoopingCall(self._tick)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> EngineProbe:
        probe = cls(crawler, Path(crawler.settings["PROBE_STATS"]))
        _AttemptTicks.install()  # here, not in main(): this module is also __main__, with its own class
        crawler.signals.connect(probe.engine_started, signals.engine_started)
        crawler.signals.connect(probe.request_scheduled, signals.request_scheduled)
        crawler.signals.connect(probe.spider_closed, signals.spider_closed)
        return probe

    def _tick(self) -> None:
        self.heartbeats += 1

    def engine_started(self) -> None:
        self.ticker.start(ExecutionEngine._SLOT_HEARTBEAT_INTERVAL, now=True)

    def request_scheduled(self, request: Any, spider: Any) -> None:
        if "retry_times" not in request.meta:  # a reference's first request, not a retry
            self.at_last_request = self.heartbeats

    def spider_closed(self, spider: Any, reason: str) -> None:
        if self.ticker.running:
            self.ticker.stop()
        assert self.crawler.stats is not None
        stats = {k: v for k, v in self.crawler.stats.get_stats().items() if isinstance(v, (int, float, str))}
        self.path.write_text(json.dumps({"stats": stats, "heartbeats": self.heartbeats,
                                         "heartbeats_at_last_request": self.at_last_request,
                                         "attempt_ticks": _AttemptTicks.count}))


def main(argv: list[str]) -> int:
    from crawler.runner import project_settings, run_crawl

    overrides: dict[str, Any] = dict(arg.split("=", 1) for arg in argv[1:])
    overrides["REFWATCH_SNAPSHOTS"] = json.loads(overrides["REFWATCH_SNAPSHOTS"])
    overrides["PROBE_STATS"] = argv[0]
    settings = project_settings(overrides)
    extensions = dict(settings.getdict("EXTENSIONS"))
    extensions["tests.deadlink_probe.EngineProbe"] = 900
    settings.set("EXTENSIONS", extensions, priority="cmdline")
    run_crawl(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
