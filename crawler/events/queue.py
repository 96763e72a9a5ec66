"""The match-event queue, named by URL (``file://DIR``, a plain path, or ``s3://BUCKET/PREFIX``).

One design over an object store (``crawler/storage/base.py``), so a local folder and S3 behave the same and
share one test suite. Producers ``publish``/``flush``/``close``; consumers ``receive``/``ack``; anyone
``stats``. No coordination service: S3's strong read-after-write consistency and conditional writes
(``If-None-Match: *``, ``If-Match: <etag>``) are all it uses.

Layout under the queue's root::

    batches/<UTC yyyymmddThhmmss.fffZ>-<producer>-<seq>-n<events>.jsonl
        immutable: up to ``batch_events`` events as JSON Lines of ``MatchEvent.to_json()``, written once,
        whole, create-only. The name sorts by time and carries the event count, so ``stats`` counts events
        from one listing.
    leases/<batch id>.json     {owner token, expires_at}: a consumer holds the batch until then.
    acked/<batch id>.json      {owner, events, at}: the batch was handled (its object is then deleted).
    malformed/<batch id>.json  {reason}: the batch object is not what its name says; it is never delivered.

Semantics:

- Producer (``crawler/events/producer.py``): ``publish`` buffers and returns at once; a background thread
  writes a batch every ``batch_events`` events or when the oldest is ``batch_seconds`` old, retrying failed
  writes with capped exponential back-off (each failure goes to ``on_error``). ``flush`` blocks until all
  published so far is written; ``close`` does the same within ``close_timeout`` and otherwise raises
  ``QueueCloseError`` with the number of events it could not write. A producer that dies loses its buffer
  only; event ids are deterministic, so redoing the run republishes the same ids.
- Consumer (``crawler/events/consumer.py``): ``receive(max_events, lease_seconds)`` claims whole batch objects
  under a lease; ``ack`` marks them handled. Delivery is at least once: a batch not acknowledged within its
  lease is delivered again, and the same event id may sit in two batches (a redone run), so consumers that
  must not act twice dedupe by ``event_id``. Two consumers never both hold a batch inside its lease where
  conditional writes are atomic (S3, ``LocalStore``); see the consumer's docstring and
  ``tests/test_queue_faults.py`` for what holds on a store where they are not.
- Lease expiry compares wall clocks: consumers on different machines need synchronised clocks (NTP); a skew
  of S seconds shortens or lengthens a lease by S.
- Housekeeping: ``acked/`` markers stay (``stats`` sums them); expire them with a bucket lifecycle rule if
  they grow too many. Malformed batch objects stay in place for a person to inspect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Protocol

from crawler.events.event import MatchEvent
from crawler.storage.base import (
    DEFAULT_BACKOFF,
    Backoff,
    ObjectStore,
    RetryingStore,
    StoreError,
)
from crawler.storage.factory import open_store, store_options
from crawler.events.consumer import BatchReader
from crawler.events.queue_model import Batch, QueueCloseError, QueueError, QueueStats
from crawler.events.producer import BatchWriter

__all__ = ["Batch", "EventQueue", "QueueCloseError", "QueueError", "QueueStats", "open_queue", "queue_options"]

DEFAULT_LEASE_SECONDS = 300.0


class EventQueue:
    """A queue over one object store: a producer (thread started on first publish) and a consumer in one."""

    def __init__(self, store: ObjectStore, *, on_error: Callable[[BaseException], None] | None = None,
                 on_written: Callable[[int], None] | None = None, batch_events: int = 500,
                 batch_seconds: float = 2.0, close_timeout: float = 300.0,
                 backoff: Backoff = DEFAULT_BACKOFF, consumer_attempts: int = 6) -> None:
        self.store = store
        self._close_timeout = close_timeout
        self._writer = BatchWriter(store, batch_events=batch_events, batch_seconds=batch_seconds,
                                   on_error=on_error, on_written=on_written, backoff=backoff)
        self._reader = BatchReader(RetryingStore(store, attempts=consumer_attempts, backoff=backoff,
                                                 on_error=on_error))
        self._closed = False

    @property
    def url(self) -> str:
        return self.store.url

    def __enter__(self) -> EventQueue:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def check(self) -> None:
        """Raise ``StoreError`` now if the store cannot be reached (bucket, credentials, endpoint, folder)."""
        self.store.check()

    def publish(self, events: Iterable[MatchEvent]) -> int:
        """Queue ``events`` (buffered; written in the background); return how many this producer had not taken."""
        self._check_open()
        return self._writer.publish(events)

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything published so far is durable (QueueError after ``timeout``, default close's)."""
        self._check_open()
        self._writer.flush(self._close_timeout if timeout is None else timeout)

    def close(self) -> None:
        """Write what is buffered (within ``close_timeout``) and stop; QueueCloseError if events are left over."""
        if self._closed:
            return
        self._closed = True
        self._writer.close(self._close_timeout)

    def receive(self, max_events: int = 1000, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Batch:
        """Claim up to ``max_events`` events in whole batch objects (at least one object if any is free)."""
        self._check_open()
        return self._reader.receive(max_events, lease_seconds)

    def ack(self, batch: Batch) -> None:
        """Mark a received batch handled so it is not delivered again."""
        self._check_open()
        self._reader.ack(batch)

    def peek(self, max_events: int = 1000) -> tuple[MatchEvent, ...]:
        """Unacknowledged events, oldest first, without claiming them."""
        return self._reader.peek(max_events)

    def stats(self) -> QueueStats:
        return self._reader.stats()

    def _check_open(self) -> None:
        if self._closed:
            raise QueueError(f"queue {self.url} is closed")


def open_queue(url: str, *, endpoint_url: str | None = None, sse: str | None = None,
               sse_kms_key_id: str | None = None, **options: Any) -> EventQueue:
    """The queue a URL names; ``options`` are ``EventQueue``'s. Nothing remote is contacted (``check`` does)."""
    try:
        store = open_store(url, endpoint_url=endpoint_url, sse=sse, sse_kms_key_id=sse_kms_key_id)
    except StoreError as exc:
        raise QueueError(str(exc)) from None
    return EventQueue(store, **options)


class SettingsLike(Protocol):
    def get(self, name: str, default: Any = None) -> Any: ...


def queue_options(settings: SettingsLike) -> dict[str, Any]:
    """``open_queue``'s keyword arguments from the ``REFWATCH_*`` settings (a Scrapy ``Settings`` or a dict)."""
    try:
        return {
            **store_options(settings),
            "batch_events": int(settings.get("REFWATCH_QUEUE_BATCH_EVENTS", 500)),
            "batch_seconds": float(settings.get("REFWATCH_QUEUE_BATCH_SECONDS", 2.0)),
            "close_timeout": float(settings.get("REFWATCH_QUEUE_CLOSE_TIMEOUT", 300.0)),
        }
    except (TypeError, ValueError) as exc:
        raise QueueError(f"bad queue setting: {exc}") from None
