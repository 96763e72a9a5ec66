"""The event queue's semantics, the same tests on a local folder and on S3 (moto_server on loopback).

Batches by count and by age, whole immutable objects, receive/ack with leases, redelivery after a lease,
malformed objects, stats, retried writes and a close that says what it could not write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crawler.events.queue import (
    Batch,
    EventQueue,
    QueueCloseError,
    QueueError,
    open_queue,
)
from crawler.events.event import MatchEvent, make_event_id
from crawler.storage.base import Backoff, ObjectStore, TransientStoreError
from crawler.storage.factory import open_store
from crawler.events.queue_model import ACKED, BATCHES, BatchName, decode_events
from crawler.storage.s3 import S3Store
from crawler.storage.s3 import s3_client as make_s3_client
from tests.s3server import MotoServer


def event(n: int, run_id: str = "run-1") -> MatchEvent:
    url = f"https://example.org/{n}.jpg"
    matched = f"{n:016x}"
    return MatchEvent(
        event_id=make_event_id(run_id, url, "ngo", "phash", matched),
        run_id=run_id,
        ref_id=f"ref-{n}",
        url=url,
        page_url=None,
        list_name="ngo",
        entry_id=f"ngo:{n}",
        label=None,
        algorithm="phash",
        distance=0,
        observed_hash=matched,
        matched_hash=matched,
        detected_at="2024-06-11T10:00:00.000Z",
    )


class Backend:
    """One queue location and ways to open queues and raw stores on it."""

    def __init__(self, url: str, endpoint: str | None, client: Any = None) -> None:
        self.url = url
        self.endpoint = endpoint
        self.client = client  # one S3 client for every queue of a test: making one costs ~0.1 s
        self.queues: list[EventQueue] = []

    def queue(self, **options: Any) -> EventQueue:
        return self.wrapped(lambda store: store, **options)

    def store(self) -> ObjectStore:
        if self.client is None:
            return open_store(self.url, endpoint_url=self.endpoint)
        bucket, prefix = self.url.removeprefix("s3://").split("/", 1)
        return S3Store(bucket, prefix, self.client)

    def wrapped(self, wrap: Callable[[ObjectStore], ObjectStore], **options: Any) -> EventQueue:
        """A queue (small batches, fast retries) over this back-end's store as ``wrap`` changes it."""
        options = {"batch_events": 3, "batch_seconds": 60.0, "close_timeout": 10.0,
                   "backoff": Backoff(base=0.01, cap=0.05), **options}
        q = EventQueue(wrap(self.store()), **options)
        self.queues.append(q)
        return q


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "file":
        b = Backend(f"file://{tmp_path}/q", None)
    else:
        s3 = request.getfixturevalue("s3_server")
        b = Backend(f"s3://{s3.new_bucket()}/queue", s3.endpoint, request.getfixturevalue("s3_client"))
    yield b
    for q in b.queues:
        try:
            q.close()
        except QueueError:
            pass


@pytest.fixture(scope="module")
def s3_client(s3_server: MotoServer) -> Any:
    """A client configured as refwatch configures its own (no botocore retries)."""
    return make_s3_client("s3://tests", s3_server.endpoint)


def batch_names(store: ObjectStore) -> list[BatchName]:
    return [n for n in (BatchName.from_key(i.key, BATCHES) for i in store.list(BATCHES)) if n is not None]


def test_batches_by_count_whole_and_in_order(backend: Backend) -> None:
    q = backend.queue(batch_events=3)
    events = [event(n) for n in range(7)]
    assert q.publish(events) == 7
    q.flush()
    store = backend.store()
    names = batch_names(store)
    assert [n.count for n in names] == [3, 3, 1]
    assert len({n.producer for n in names}) == 1 and [n.seq for n in names] == [0, 1, 2]
    written = [e for n in names for e in decode_events(store.get(n.key(BATCHES)).data, n.count)]
    assert written == events
    stats = q.stats()
    assert (stats.pending, stats.in_flight, stats.acknowledged, stats.malformed) == (7, 0, 0, 0)
    assert stats.oldest_pending_age_seconds is not None and 0 <= stats.oldest_pending_age_seconds < 30


def test_batch_written_by_age_without_flush(backend: Backend) -> None:
    written: list[int] = []
    q = backend.queue(batch_events=100, batch_seconds=0.2, on_written=written.append)
    q.publish([event(1), event(2)])
    deadline = time.monotonic() + 10
    while not written and time.monotonic() < deadline:
        time.sleep(0.05)
    assert written == [2]
    assert [n.count for n in batch_names(backend.store())] == [2]


def test_receive_ack_round_trip(backend: Backend) -> None:
    producer = backend.queue()
    producer.publish([event(n) for n in range(5)])
    producer.close()
    consumer = backend.queue()
    batch = consumer.receive(max_events=100)
    assert sorted(e.ref_id for e in batch.events) == [f"ref-{n}" for n in range(5)]
    assert consumer.receive().events == ()  # all leased
    assert consumer.stats().in_flight == 5 and consumer.stats().pending == 0
    consumer.ack(batch)
    consumer.ack(batch)  # acking twice is harmless
    assert consumer.receive().events == ()
    stats = consumer.stats()
    assert (stats.pending, stats.in_flight, stats.acknowledged, stats.malformed) == (0, 0, 5, 0)
    assert stats.oldest_pending_age_seconds is None
    assert batch_names(backend.store()) == []


def test_batches_are_never_split(backend: Backend) -> None:
    producer = backend.queue(batch_events=3)
    producer.publish([event(n) for n in range(9)])
    producer.flush()
    consumer = backend.queue()
    one = consumer.receive(max_events=1)
    assert len(one.events) == 3 and len(one.token) == 1  # at least one whole object
    four = consumer.receive(max_events=4)
    assert len(four.events) == 3  # a second object would pass the limit
    assert len(consumer.receive(max_events=100).events) == 3
    with pytest.raises(ValueError):
        consumer.receive(max_events=0)


def test_unacknowledged_batch_comes_back_after_its_lease(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    producer = backend.queue()
    producer.publish([event(1), event(2)])
    producer.flush()
    first, second = backend.queue(), backend.queue()
    held = first.receive(lease_seconds=0.3)
    assert len(held.events) == 2
    assert second.receive().events == ()
    time.sleep(0.4)
    again = second.receive(lease_seconds=30)
    assert again.events == held.events and again.token[0].owner != held.token[0].owner
    with caplog.at_level(logging.WARNING, logger="crawler.events.consumer"):
        first.ack(held)  # too late: the warning says it may have been delivered twice
    assert "after its lease expired" in caplog.text
    second.ack(again)
    assert "already been acknowledged by another consumer" in caplog.text
    assert second.stats().acknowledged == 2


def test_publish_dedupes_within_a_producer_not_across(backend: Backend) -> None:
    one = backend.queue()
    assert one.publish([event(1), event(2), event(1)]) == 2
    assert one.publish([event(2)]) == 0
    one.flush()
    redo = backend.queue()  # a redone run: same deterministic ids, another producer
    assert redo.publish([event(1)]) == 1
    redo.flush()
    got = backend.queue().receive(100).events
    assert sorted(e.ref_id for e in got) == ["ref-1", "ref-1", "ref-2"]  # at least once: dedupe by event_id


def test_close_writes_everything_and_closes(backend: Backend) -> None:
    q = backend.queue(batch_events=100)
    q.publish([event(n) for n in range(4)])
    q.close()  # no flush: close writes what is buffered
    q.close()  # twice is fine
    with pytest.raises(QueueError, match="closed"):
        q.publish([event(9)])
    with pytest.raises(QueueError, match="closed"):
        q.receive()
    assert q.stats().pending == 4
    with backend.queue() as other:
        assert len(other.peek()) == 4  # peek does not claim
        assert len(other.receive().events) == 4


def test_failed_writes_are_retried_and_reported(backend: Backend) -> None:
    errors: list[BaseException] = []
    failing = _FailingPuts(fail=3)
    q = backend.wrapped(failing.wrap, on_error=errors.append)
    q.publish([event(n) for n in range(4)])
    q.flush(timeout=10)
    assert len(errors) == 3 and all(isinstance(e, TransientStoreError) for e in errors)
    assert len(backend.queue().receive(100).events) == 4


def test_close_says_how_many_events_it_could_not_write(backend: Backend) -> None:
    errors: list[BaseException] = []
    q = backend.wrapped(_FailingPuts(fail=10**6).wrap, on_error=errors.append, close_timeout=0.2)
    q.publish([event(n) for n in range(5)])
    with pytest.raises(QueueCloseError, match="5 match events could not be written") as raised:
        q.close()
    assert raised.value.unwritten == 5 and errors
    stuck = backend.wrapped(_FailingPuts(fail=10**6).wrap, close_timeout=0.1)
    stuck.publish([event(1)])
    with pytest.raises(QueueError, match="1 events not written after 0.1 s"):
        stuck.flush(timeout=0.1)


def test_cut_short_ack_is_finished_by_the_next_receive(backend: Backend) -> None:
    producer = backend.queue()
    producer.publish([event(n) for n in range(6)])
    producer.flush()
    store = backend.store()
    oldest = batch_names(store)[0]
    store.put(oldest.key(ACKED), b'{"owner":"crashed","events":3}')  # marker written, then the consumer died
    consumer = backend.queue()
    got = consumer.receive(100)
    assert sorted(e.ref_id for e in got.events) == [f"ref-{n}" for n in range(3, 6)]
    assert [n.id for n in batch_names(store)] != [] and oldest not in batch_names(store)
    assert consumer.stats().acknowledged == 3


def test_malformed_objects_are_skipped_counted_and_logged_once(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    producer = backend.queue()
    producer.publish([event(1), event(2)])
    producer.flush()
    store = backend.store()
    stamp = batch_names(store)[0]
    bad_content = BatchName(stamp.stamp, "f" * 16, 1, 2)
    wrong_count = BatchName(stamp.stamp, "e" * 16, 1, 5)
    store.put(bad_content.key(BATCHES), b"secret-looking garbage, not JSON\n")
    store.put(wrong_count.key(BATCHES), (event(3).to_json() + "\n").encode())
    store.put("batches/garbage.jsonl", b"{}")
    store.put("notes.txt", b"left by a person")
    consumer = backend.queue()
    with caplog.at_level(logging.WARNING, logger="crawler.events.consumer"):
        assert consumer.stats().malformed == 2  # the two names the queue never writes
        got = consumer.receive(100)
        assert sorted(e.ref_id for e in got.events) == ["ref-1", "ref-2"]
        consumer.ack(got)
        assert consumer.receive(100).events == ()
        stats = consumer.stats()
    assert (stats.pending, stats.acknowledged, stats.malformed) == (0, 2, 4)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for key in (bad_content.key(BATCHES), wrong_count.key(BATCHES), "batches/garbage.jsonl", "notes.txt"):
        assert sum(key in w for w in warnings) == 1, (key, warnings)
    assert "secret-looking" not in caplog.text and "left by a person" not in caplog.text
    assert stats.oldest_pending_age_seconds is None  # malformed batches are not pending


def test_s3_queue_writes_with_server_side_encryption(s3_server) -> None:
    bucket = s3_server.new_bucket()
    q = open_queue(f"s3://{bucket}/q", endpoint_url=s3_server.endpoint, sse="AES256", batch_events=2)
    q.publish([event(1), event(2)])
    q.flush()
    consumer = open_queue(f"s3://{bucket}/q", endpoint_url=s3_server.endpoint, sse="AES256")
    batch = consumer.receive()
    objects = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="q/")["Contents"]
    keys = [o["Key"] for o in objects]
    assert any(k.startswith("q/batches/") for k in keys) and any(k.startswith("q/leases/") for k in keys)
    for key in keys:
        assert s3_server.client().head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"
    consumer.ack(batch)
    q.close()
    consumer.close()


def test_open_queue_urls_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q = open_queue(f"file://{tmp_path}/abs")
    assert isinstance(q, EventQueue) and q.url == f"file://{tmp_path}/abs" and (tmp_path / "abs").is_dir()
    monkeypatch.chdir(tmp_path)
    relative = open_queue("plain/path")
    relative.publish([event(1)])
    assert len(open_queue("file://plain/path").receive().events) == 0  # not flushed: nothing was written
    monkeypatch.chdir(tmp_path / "abs")  # the queue stays where it was opened
    relative.close()
    assert len(open_queue(str(tmp_path / "plain" / "path")).receive().events) == 1
    s3 = open_queue("s3://bucket/prefix")  # nothing is contacted until used
    assert s3.url == "s3://bucket/prefix"
    for url, message in [("gopher://x/y", "unsupported URL scheme 'gopher'"), ("", "empty"),
                         ("file://", "names no folder"), ("file:///tmp/q?x=1", "query")]:
        with pytest.raises(QueueError, match=message):
            open_queue(url)
    (tmp_path / "f").write_text("x")
    with pytest.raises(QueueError, match="cannot use"):
        open_queue(str(tmp_path / "f"))
    with pytest.raises(QueueError, match="batch size"):
        open_queue(str(tmp_path / "q"), batch_events=0)


def test_ack_rejects_foreign_tokens(tmp_path: Path) -> None:
    with pytest.raises(QueueError, match="does not belong"):
        open_queue(str(tmp_path)).ack(Batch(events=(), token=("../escape.json",)))  # type: ignore[arg-type]


class _FailingPuts:
    """Wraps a store so that its first ``fail`` puts raise TransientStoreError (an S3 answering 503)."""

    def __init__(self, fail: int) -> None:
        self.fail = fail

    def wrap(self, store: ObjectStore) -> ObjectStore:
        outer = self

        class Failing:
            url = store.url

            def __getattr__(self, name: str) -> Any:
                return getattr(store, name)

            def put(self, key: str, data: bytes, **conditions: Any) -> str:
                if outer.fail > 0:
                    outer.fail -= 1
                    raise TransientStoreError(f"{store.url}: S3 answered 503 SlowDown")
                return store.put(key, data, **conditions)

        return Failing()  # type: ignore[return-value]
