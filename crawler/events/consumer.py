"""The consumer side of the event queue: claim whole batch objects under a lease, acknowledge them, count.

Claiming a batch writes ``leases/<id>.json`` = {random owner token, expiry}: create-only when there is no
lease, replace-if-match (the expired lease's etag) to take over an expired one. Whatever the write answered,
the consumer then reads the lease back and goes on only if it names its own token. On a store whose
conditional writes are atomic (S3, ``LocalStore``) the write alone decides; on one that is not (moto), the
read-back turns a race both writes "won" into a skip for all but the last writer, unless the later write
lands only after the earlier writer has read back (``tests/test_queue_faults.py`` drives each order).

``ack`` writes ``acked/<id>.json`` (create-only), then deletes the batch object, then the lease: while the
batch exists its lease still guards it, so a consumer that claims it after the lease is gone finds no batch.
A batch whose ack marker exists is skipped (and its object deleted: an ack was cut short). Consumers try the
oldest few candidates in random order, so that several consumers do not all race for the same batch.
A batch object that is not what its name says is marked ``malformed/<id>.json``, logged once by key (never
content) and never delivered; objects with names the queue does not write are counted by ``stats``.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from crawler.events.event import MatchEvent
from crawler.storage.base import NoSuchKey, ObjectStore, PreconditionFailed
from crawler.events.queue_model import (
    ACKED,
    BATCHES,
    LEASES,
    MALFORMED,
    Batch,
    BatchName,
    Claim,
    Lease,
    QueueError,
    QueueStats,
    decode_events,
    encode_marker,
    marker_owner,
)

logger = logging.getLogger(__name__)

_FOLDERS = (BATCHES, LEASES, ACKED, MALFORMED)


@dataclass(frozen=True)
class _Listing:
    """Unfinished batches, oldest first, and which of them have a lease object."""

    candidates: list[BatchName]
    leased: set[str]


class BatchReader:
    """``receive``/``ack``/``peek``/``stats`` over a store; any number of readers may share one queue."""

    def __init__(self, store: ObjectStore, *, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, window: int = 8) -> None:
        self._store = store
        self._clock = clock
        self._rng = rng or random.Random()
        self._window = window
        self._logged: set[str] = set()  # malformed keys already logged by this reader

    def receive(self, max_events: int = 1000, lease_seconds: float = 300.0) -> Batch:
        """Claim whole batch objects, oldest first, until ``max_events`` (at least one object if any is free)."""
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, not {max_events}")
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, not {lease_seconds}")
        listing = self._listing()
        claims: list[Claim] = []
        events: list[MatchEvent] = []
        for name in self._shuffled(listing.candidates):
            if events and len(events) + name.count > max_events:
                continue
            claimed = self._claim(name, name.id in listing.leased, lease_seconds)
            if claimed is not None:
                claims.append(claimed[0])
                events.extend(claimed[1])
                if len(events) >= max_events:
                    break
        return Batch(events=tuple(events), token=tuple(claims))

    def ack(self, batch: Batch) -> None:
        """Acknowledge every batch object of a received ``Batch``; acknowledging twice is harmless."""
        for claim in batch.token:
            if not isinstance(claim, Claim):
                raise QueueError("batch token does not belong to this queue")
            now = self._clock()
            if now > claim.expires_at:
                logger.warning("batch %s acknowledged %.1f s after its lease expired: another consumer may have "
                               "received it too", claim.batch.id, now - claim.expires_at)
            marker = encode_marker(claim.owner, claim.batch.count, now)
            try:
                self._store.put(claim.batch.key(ACKED), marker, if_none_match=True)
            except PreconditionFailed:
                if self._owner_of(claim.batch.key(ACKED)) != claim.owner:
                    logger.warning("batch %s had already been acknowledged by another consumer", claim.batch.id)
            self._store.delete(claim.batch.key(BATCHES))
            self._store.delete(claim.batch.key(LEASES))

    def peek(self, max_events: int = 1000) -> tuple[MatchEvent, ...]:
        """Unacknowledged events, oldest first, read without claiming (in-flight ones included)."""
        events: list[MatchEvent] = []
        for name in self._listing().candidates:
            if len(events) >= max_events:
                break
            try:
                events.extend(decode_events(self._store.get(name.key(BATCHES)).data, name.count))
            except NoSuchKey:
                continue
            except ValueError as exc:
                self._log_malformed(name.key(BATCHES), str(exc))
        return tuple(events[:max_events])

    def stats(self) -> QueueStats:
        """Events pending, in flight and acknowledged, and malformed objects, from one listing of the queue."""
        now = self._clock()
        batches: dict[str, BatchName] = {}
        done: set[str] = set()
        leases: list[BatchName] = []
        acknowledged = malformed = 0
        for info in self._store.list(""):
            folder = info.key[:info.key.find("/") + 1]
            name = BatchName.from_key(info.key, folder) if folder in _FOLDERS else None
            if name is None:
                malformed += 1
                self._log_malformed(info.key, "not a name this queue writes")
            elif folder == BATCHES:
                batches[name.id] = name
            elif folder == LEASES:
                leases.append(name)
            else:
                done.add(name.id)
                if folder == ACKED:
                    acknowledged += name.count
                else:
                    malformed += 1
        unfinished = {batch_id: name for batch_id, name in batches.items() if batch_id not in done}
        in_flight = sum(unfinished[n.id].count for n in leases if n.id in unfinished and self._lease_live(n, now))
        oldest = min(unfinished.values(), default=None)
        return QueueStats(
            pending=sum(n.count for n in unfinished.values()) - in_flight,
            in_flight=in_flight,
            acknowledged=acknowledged,
            malformed=malformed,
            oldest_pending_age_seconds=None if oldest is None else round(now - oldest.created.timestamp(), 3),
        )

    def _listing(self) -> _Listing:
        """Batch objects not acknowledged or malformed; acked batches still present are deleted (a cut-short ack)."""
        batches: list[BatchName] = []
        for info in self._store.list(BATCHES):
            name = BatchName.from_key(info.key, BATCHES)
            if name is None:
                self._log_malformed(info.key, "not a name this queue writes")
            else:
                batches.append(name)
        if not batches:
            return _Listing([], set())
        oldest = batches[0].id  # markers of batches older than the oldest batch object cannot matter
        acked = self._ids(ACKED, oldest)
        malformed = self._ids(MALFORMED, oldest)
        for name in batches:
            if name.id in acked:
                self._store.delete(name.key(BATCHES))
        leased = self._ids(LEASES, None)
        return _Listing([b for b in batches if b.id not in acked and b.id not in malformed], leased)

    def _ids(self, folder: str, start_after_id: str | None) -> set[str]:
        start = None if start_after_id is None else folder + start_after_id
        return {name.id for name in self._names(folder, start)}

    def _names(self, folder: str, start_after: str | None) -> Iterator[BatchName]:
        for info in self._store.list(folder, start_after):
            name = BatchName.from_key(info.key, folder)
            if name is not None:
                yield name

    def _shuffled(self, candidates: list[BatchName]) -> Iterator[BatchName]:
        """Oldest first, but in random order within each window of a few, to spread concurrent consumers."""
        for start in range(0, len(candidates), self._window):
            window = candidates[start:start + self._window]
            self._rng.shuffle(window)
            yield from window

    def _claim(self, name: BatchName, leased: bool, lease_seconds: float) -> tuple[Claim, tuple[MatchEvent, ...]] | None:
        """Take the batch's lease and read the batch, or None if it is held, gone, lost to a race or malformed."""
        lease_key = name.key(LEASES)
        now = self._clock()
        lease = Lease(secrets.token_hex(16), now + lease_seconds)
        try:
            if leased and not self._take_over(lease_key, lease, now):
                return None
            if not leased:
                self._store.put(lease_key, lease.encode(now), if_none_match=True)
        except PreconditionFailed:
            pass  # most likely lost; but a retried write of ours may have landed: the read-back decides
        if self._owner_of(lease_key, lease=True) != lease.owner:
            return None
        try:
            events = decode_events(self._store.get(name.key(BATCHES)).data, name.count)
        except NoSuchKey:  # acknowledged and deleted since the listing
            self._store.delete(lease_key)
            return None
        except ValueError as exc:
            self._log_malformed(name.key(BATCHES), str(exc))
            try:
                self._store.put(name.key(MALFORMED), encode_marker(lease.owner, 0, now, reason=str(exc)),
                                if_none_match=True)
            except PreconditionFailed:
                pass
            self._store.delete(lease_key)
            return None
        return Claim(name, lease.owner, lease.expires_at), events

    def _take_over(self, lease_key: str, lease: Lease, now: float) -> bool:
        """Replace an expired (or unreadable) lease, conditionally on its etag; False if it is still live."""
        try:
            current = self._store.get(lease_key)
        except NoSuchKey:  # released since the listing
            self._store.put(lease_key, lease.encode(now), if_none_match=True)
            return True
        held = Lease.decode(current.data)
        if held is not None and held.expires_at > now:
            return False
        self._store.put(lease_key, lease.encode(now), if_match=current.etag)
        return True

    def _owner_of(self, key: str, *, lease: bool = False) -> str | None:
        try:
            data = self._store.get(key).data
        except NoSuchKey:
            return None
        if lease:
            held = Lease.decode(data)
            return None if held is None else held.owner
        return marker_owner(data)

    def _lease_live(self, name: BatchName, now: float) -> bool:
        try:
            held = Lease.decode(self._store.get(name.key(LEASES)).data)
        except NoSuchKey:
            return False
        return held is not None and held.expires_at > now

    def _log_malformed(self, key: str, reason: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            logger.warning("Skipping malformed queue object %s: %s", key, reason)
