"""A worker's /metrics: its shard crawls' counters (summed), what it did with shards, and the run-wide shard
counts it sees in Redis.

Every worker exports the same Redis view of each active run (``refwatch_shards``, ``refwatch_shard_references``),
so dashboards take the maximum over workers; the counters (attempts, leases) are this worker's own. Labels are
run ids and fixed words only: never a URL, host or hash.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from crawler.runs.counters import crawl_families, duration_families

logger = logging.getLogger(__name__)


class WorkerCollector(Collector):
    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        worker = self.worker
        counters = worker.counters
        attempts = CounterMetricFamily("refwatch_shard_attempts", "Shard attempts this worker ended, by result.",
                                       labels=["result"])
        for result, count in sorted(counters.attempts.items()):
            attempts.add_metric([result], count)
        yield attempts
        yield CounterMetricFamily("refwatch_lease_renewals", "Shard leases this worker renewed.",
                                  value=counters.lease_renewals)
        yield CounterMetricFamily("refwatch_leases_lost", "Shards another worker took over from this one.",
                                  value=counters.leases_lost)
        yield GaugeMetricFamily("refwatch_worker_processes", "Shard crawls this worker runs at once, at most.",
                                value=worker.processes)
        yield GaugeMetricFamily("refwatch_worker_busy_processes", "Shard crawls running now.",
                                value=len(worker._children))
        totals, inflight = worker.crawl_totals()
        yield from crawl_families(totals.stats)
        yield from duration_families(totals.fetch, totals.hashing)
        yield GaugeMetricFamily("refwatch_inflight_requests", "Requests being downloaded now.", value=inflight)
        yield from self._runs()

    def _runs(self) -> Iterator[Metric]:
        shards = GaugeMetricFamily("refwatch_shards", "Shards of each active run, by state (Redis's view).",
                                   labels=["run_id", "state"])
        references = GaugeMetricFamily("refwatch_shard_references", "Planned references of each active run.",
                                       labels=["run_id", "state"])
        dead_total = 0
        try:
            for run_id in self.worker.queue.active_runs():
                counts = self.worker.queue.counts(run_id)
                spec = self.worker.queue.get_run(run_id) or {}
                planned = spec.get("shards") or counts.enqueued
                for state, value in (("planned", planned), ("pending", counts.pending),
                                     ("in_flight", counts.in_flight), ("committed", counts.done),
                                     ("dead", counts.dead)):
                    shards.add_metric([run_id, state], value)
                if spec.get("references") is not None:
                    references.add_metric([run_id, "planned"], spec["references"])
                dead_total += counts.dead
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because Redis is away for a moment
            logger.debug("worker metrics: Redis unavailable: %s", exc)
        yield shards
        yield references
        yield CounterMetricFamily("refwatch_shards_dead_lettered", "Shards dead-lettered in the active runs.",
                                  value=dead_total)


def serve_worker_metrics(worker: Any, port: int, address: str) -> Any:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(worker))
    server, _thread = start_http_server(port, addr=address, registry=registry)
    logger.info("worker metrics at http://%s:%d/metrics", address, server.server_port)
    return server
