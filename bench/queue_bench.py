"""Event-queue throughput over S3: push N events through the producer, drain them with the consumer API.

Starts ``moto_server`` on a free loopback port (the same launcher the tests use), publishes ``--events``
synthetic match events the way a crawl does (a few per ``publish`` call), flushes, then drains them with
``receive``/``ack`` until the queue is empty, and checks every event id came back. Prints events/s for each
side and the S3 requests per 1,000 events, counted with a botocore ``before-send`` hook on each side's
client (every HTTP request, retries included).

    python bench/queue_bench.py                      # 100,000 events, batches of 500, receive(1000)
    python bench/queue_bench.py --events 20000 --batch-events 100 --max-events 200

moto is an in-memory Python server on the same machine, so the rates say what the queue's own code and
request pattern cost, not what AWS S3 (tens of ms per request, but parallel) would give.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crawler.events.event import MatchEvent, make_event_id  # noqa: E402
from crawler.events.queue import EventQueue, open_queue  # noqa: E402
from tests.s3server import MotoServer, s3_environment  # noqa: E402


def make_events(n: int) -> list[MatchEvent]:
    events = []
    for i in range(n):
        url = f"https://img.example.org/{i}.jpg"
        matched = f"{i:016x}"
        events.append(MatchEvent(
            event_id=make_event_id("bench", url, "ngo", "phash", matched), run_id="bench", ref_id=f"ref-{i}",
            url=url, page_url=f"https://example.org/page/{i // 10}", list_name="ngo", entry_id=f"ngo:{i}",
            label="synthetic", algorithm="phash", distance=i % 9, observed_hash=matched, matched_hash=matched,
            detected_at="2026-11-24T12:00:00.000Z"))
    return events


def count_requests(queue: EventQueue) -> Counter[str]:
    """Requests the queue's S3 client sends, by operation."""
    counts: Counter[str] = Counter()

    def before_send(event_name: str, **kwargs: Any) -> None:
        counts[event_name.rsplit(".", 1)[-1]] += 1  # before-send.s3.<Operation>

    queue.store.client.meta.events.register("before-send.s3", before_send)  # type: ignore[attr-defined]
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-events", type=int, default=500, help="producer batch size (default 500)")
    parser.add_argument("--per-publish", type=int, default=3, help="events per publish call, as per reference")
    parser.add_argument("--max-events", type=int, default=1000, help="consumer receive size (default 1000)")
    args = parser.parse_args()

    events = make_events(args.events)
    with MotoServer() as server, s3_environment(server.endpoint):
        bucket = server.new_bucket()
        url = f"s3://{bucket}/bench"
        producer = open_queue(url, endpoint_url=server.endpoint, batch_events=args.batch_events)
        sent = count_requests(producer)
        start = time.perf_counter()
        for i in range(0, len(events), args.per_publish):
            producer.publish(events[i:i + args.per_publish])
        producer.flush()
        produce_s = time.perf_counter() - start
        producer.close()

        consumer = open_queue(url, endpoint_url=server.endpoint)
        received = count_requests(consumer)
        seen: set[str] = set()
        start = time.perf_counter()
        while True:
            batch = consumer.receive(max_events=args.max_events)
            if not batch.events:
                break
            seen.update(e.event_id for e in batch.events)
            consumer.ack(batch)
        drain_s = time.perf_counter() - start
        stats = consumer.stats()
        consumer.close()

    missing = len({e.event_id for e in events} - seen)
    per_k = 1000 / len(events)
    print(f"events: {len(events):,}  batch objects of {args.batch_events}  receive({args.max_events})")
    print(f"producer: {len(events) / produce_s:,.0f} events/s ({produce_s:.2f} s), "
          f"{sum(sent.values()) * per_k:.2f} S3 requests per 1,000 events {dict(sent)}")
    print(f"consumer: {len(events) / drain_s:,.0f} events/s ({drain_s:.2f} s), "
          f"{sum(received.values()) * per_k:.2f} S3 requests per 1,000 events {dict(received)}")
    print(f"missing after drain: {missing}; acknowledged {stats.acknowledged:,}, pending {stats.pending}")
    return 0 if missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
