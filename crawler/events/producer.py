"""The producer side of the event queue: buffer published events, write them as immutable batch objects.

``publish`` only appends to a buffer (it never blocks on the store, so the crawl's reactor never waits for
S3); one background thread writes a batch when ``batch_events`` events are waiting or the oldest has waited
``batch_seconds``, in order, one object at a time, each whole and create-only (``If-None-Match: *``).
A failed write is reported to ``on_error`` and retried with capped exponential back-off and jitter until it
lands or ``close`` gives up. Retrying keeps the batch's name: if an earlier attempt did land (the answer was
lost), the retry's 412 means "already written", because a name is never reused (random producer id +
sequence number). A crash loses at most the buffer; events are deterministic, so a redo republishes them.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from crawler.events.event import MatchEvent
from crawler.storage.base import (
    DEFAULT_BACKOFF,
    Backoff,
    ObjectStore,
    PreconditionFailed,
)
from crawler.events.queue_model import (
    BATCHES,
    BatchName,
    QueueCloseError,
    QueueError,
    encode_events,
)

logger = logging.getLogger(__name__)

ErrorCallback = Callable[[BaseException], None]
WrittenCallback = Callable[[int], None]


class BatchWriter:
    """Buffers events and writes them in batches from one daemon thread, started by the first ``publish``.

    It remembers the ids of the events it took, for its whole life (about 100 bytes each; matches are rare),
    so that one crawl publishing a match twice (a URL listed twice) queues it once.
    """

    def __init__(self, store: ObjectStore, *, batch_events: int = 500, batch_seconds: float = 2.0,
                 on_error: ErrorCallback | None = None, on_written: WrittenCallback | None = None,
                 backoff: Backoff = DEFAULT_BACKOFF, clock: Callable[[], float] = time.time) -> None:
        if not 1 <= batch_events <= 999_999:
            raise QueueError(f"batch size must be 1 to 999999 events, not {batch_events}")
        if batch_seconds <= 0:
            raise QueueError(f"batch age must be positive, not {batch_seconds}")
        self._store = store
        self._batch_events = batch_events
        self._batch_seconds = batch_seconds
        self._on_error = on_error
        self._on_written = on_written
        self._backoff = backoff
        self._clock = clock
        self._producer = secrets.token_hex(8)
        self._seq = 0
        self._cond = threading.Condition()
        self._buffer: deque[tuple[float, MatchEvent]] = deque()  # (time published, event)
        self._seen: set[str] = set()  # event ids this producer has taken: a repeat is not queued twice
        self._accepted = self._written = self._flush_upto = 0
        self._stopping = False
        self._give_up = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None

    @property
    def written(self) -> int:
        """Events durably written so far."""
        return self._written

    def publish(self, events: Iterable[MatchEvent]) -> int:
        """Buffer the events this producer has not taken before; return how many that was. Never blocks."""
        new = 0
        with self._cond:
            if self._stopping:
                raise QueueError(f"{self._store.url}: the queue is closed")
            now = self._clock()
            for event in events:
                if event.event_id not in self._seen:
                    self._seen.add(event.event_id)
                    self._buffer.append((now, event))
                    new += 1
            if new:
                self._accepted += new
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="refwatch-queue-writer", daemon=True)
                    self._thread.start()
                self._cond.notify_all()
        return new

    def flush(self, timeout: float | None = None) -> None:
        """Block until every event published before this call is written; QueueError after ``timeout`` s."""
        with self._cond:
            target = self._accepted
            self._flush_upto = max(self._flush_upto, target)
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._written >= target, timeout):
                raise QueueError(f"{self._store.url}: {target - self._written} events not written after "
                                 f"{timeout:g} s (last error: {self._last_error})")

    def close(self, timeout: float) -> None:
        """Write everything still buffered, waiting up to ``timeout`` s; QueueCloseError says what is lost."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._written >= self._accepted, timeout)
            unwritten = self._accepted - self._written
        self._give_up.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if unwritten:
            raise QueueCloseError(f"{self._store.url}: {unwritten} match events could not be written to the queue "
                                  f"within {timeout:g} s (last error: {self._last_error}); redo the run with "
                                  f"the same run id to publish them", unwritten)

    def _due(self) -> bool:
        if not self._buffer:
            return False
        return (len(self._buffer) >= self._batch_events or self._stopping or self._flush_upto > self._written
                or self._clock() - self._buffer[0][0] >= self._batch_seconds)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due():
                    if self._stopping and not self._buffer:
                        return
                    wait = self._batch_seconds - (self._clock() - self._buffer[0][0]) if self._buffer else None
                    self._cond.wait(timeout=None if wait is None else max(wait, 0.005))
                taken = [self._buffer.popleft() for _ in range(min(len(self._buffer), self._batch_events))]
            name = BatchName.new(datetime.fromtimestamp(taken[0][0], UTC), self._producer, self._seq, len(taken))
            self._seq += 1
            if not self._write(name, encode_events(event for _, event in taken)):
                return  # close gave up; what is left is reported by close
            with self._cond:
                self._written += len(taken)
                self._cond.notify_all()
            _call(self._on_written, len(taken))

    def _write(self, name: BatchName, data: bytes) -> bool:
        """Write one batch object, retrying until it lands (True) or ``close`` gives up (False)."""
        attempt = 0
        while True:
            try:
                self._store.put(name.key(BATCHES), data, if_none_match=True)
                return True
            except PreconditionFailed:
                logger.debug("batch %s was already written by an earlier attempt", name.id)
                return True
            except Exception as exc:  # noqa: BLE001 - every failure is reported and retried, none lost
                self._last_error = str(exc) or type(exc).__name__
                _call(self._on_error, exc)
                delay = self._backoff.delay(attempt)
                attempt += 1
                logger.warning("queue write of %d events failed (attempt %d): %s; retrying in %.1f s",
                               name.count, attempt, self._last_error, delay)
                if self._give_up.wait(delay):
                    return False


def _call(callback: Callable[..., None] | None, *args: object) -> None:
    """Run a stats callback; its failure must not stop the writer."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        logger.exception("queue callback failed")
