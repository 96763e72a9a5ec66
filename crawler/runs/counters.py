"""A crawl's live counters as Prometheus families, from a plain stats dict: one definition for the crawl's
own ``/metrics`` and for a worker's, which sums the counters of the shard crawls it runs.

The stats keys are the crawl's (``refwatch/outcome/ok``, ...); ``Buckets`` is a histogram that can be written
to JSON and added up, so a worker can merge its children's durations. Labels are outcome words, configured
list names and algorithm names — never a URL, host or hash.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from crawler.outcomes import Outcome

FETCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HASH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

#: (metric name, help, stats key) of the plain counters.
SIMPLE_COUNTERS = (
    ("refwatch_refs_read", "References read from snapshots.", "refwatch/refs_read"),
    ("refwatch_bad_records", "Corrupt snapshot records skipped.", "refwatch/bad_records"),
    ("refwatch_response_bytes", "Bytes of response bodies hashed.", "refwatch/response_bytes"),
    ("refwatch_events_published", "Match events written to the queue.", "refwatch/events_published"),
    ("refwatch_queue_batches_written", "Event batch objects written to the queue.", "refwatch/queue/batches_written"),
    ("refwatch_queue_errors", "Failed queue writes (each one retried).", "refwatch/queue/errors"),
    ("refwatch_backoffs", "Host back-offs after a 429 or 503.", "refwatch/backoff"),
    ("refwatch_politeness_waits", "Requests that waited for a host's shared slot or back-off.",
     "refwatch/politeness/waits"),
    ("refwatch_politeness_wait_seconds", "Seconds requests waited for shared politeness.",
     "refwatch/politeness/wait_seconds"),
)


def crawl_families(stats: Mapping[str, Any]) -> Iterator[Metric]:
    fetches = CounterMetricFamily("refwatch_fetches", "References fetched, by final outcome.", labels=["outcome"])
    for outcome in Outcome:
        fetches.add_metric([outcome.value], stats.get(f"refwatch/outcome/{outcome.value}", 0))
    yield fetches
    matches = CounterMetricFamily(
        "refwatch_matches", "Hash-list matches, by list, algorithm and where the hash came from (live bytes, "
        "or the hash the snapshot recorded).", labels=["list", "algorithm", "source"])
    for prefix, source in (("refwatch/matches/", "live"), ("refwatch/recorded_matches/", "recorded")):
        for key, value in sorted(stats.items()):
            if key.startswith(prefix):
                list_name, algorithm = key[len(prefix):].rsplit("/", 1)
                matches.add_metric([list_name, algorithm, source], value)
    yield matches
    for name, documentation, key in SIMPLE_COUNTERS:
        yield CounterMetricFamily(name, documentation, value=stats.get(key, 0))
    yield GaugeMetricFamily("refwatch_queue_unwritten_events", "Match events that could not be written to the queue.",
                            value=stats.get("refwatch/queue/unwritten_events", 0))


def add_stats(total: dict[str, Any], more: Mapping[str, Any]) -> None:
    """Add ``more``'s numeric counters into ``total`` (a worker's sum over its shard crawls)."""
    for key, value in more.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value


@dataclass
class Buckets:
    """A histogram's cumulative-free bucket counts, sum and count: observed, merged, written as JSON."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # one per bound, plus +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def add(self, other: Buckets) -> None:
        if other.bounds != self.bounds:
            raise ValueError("cannot add histograms with other buckets")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def to_json(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": self.counts, "sum": self.total}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Buckets:
        return cls(tuple(data["bounds"]), list(data["counts"]), float(data["sum"]))

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip((*map(_le, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return HistogramMetricFamily(name, documentation, buckets=cumulative, sum_value=self.total)


def _le(bound: float) -> str:
    return repr(float(bound))


def duration_families(fetch: Buckets, hashing: Buckets) -> Iterable[Metric]:
    yield fetch.family("refwatch_fetch_duration_seconds", "Time to download a reference.")
    yield hashing.family("refwatch_hash_duration_seconds", "Time to hash a fetched body in memory.")
