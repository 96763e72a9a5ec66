"""What the event queue stores and hands out: object names, encodings, leases, batches, stats, errors.

Pure values and functions, no I/O, so the layout (documented in ``crawler/events/queue.py``) lives in one place
and both the producer and the consumer read and write it the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from crawler.events.event import MatchEvent, format_utc

BATCHES: Final = "batches/"
LEASES: Final = "leases/"
ACKED: Final = "acked/"
MALFORMED: Final = "malformed/"
_BATCH_SUFFIX, _MARKER_SUFFIX = ".jsonl", ".json"
_BATCH_ID = re.compile(r"(?P<stamp>\d{8}T\d{6}\.\d{3}Z)-(?P<producer>[0-9a-f]{16})-(?P<seq>\d{6,})-n(?P<count>\d{1,6})")
_STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"


class QueueError(Exception):
    """A queue the user must fix (bad URL or options), or one that could not do what was asked."""


class QueueCloseError(QueueError):
    """``close`` ran out of time: ``unwritten`` published events are not in the queue."""

    def __init__(self, message: str, unwritten: int) -> None:
        super().__init__(message)
        self.unwritten = unwritten


@dataclass(frozen=True, order=True, slots=True)
class BatchName:
    """A batch object's name: ``<UTC ms>-<producer>-<seq>-n<events>``; sorting by it sorts by time.

    The event count is in the name so that ``stats`` counts events from one listing, without reading objects.
    """

    stamp: str
    producer: str
    seq: int
    count: int

    @classmethod
    def new(cls, created: datetime, producer: str, seq: int, count: int) -> BatchName:
        stamp = created.astimezone(UTC).strftime(_STAMP_FORMAT)[:-4] + "Z"  # microseconds -> milliseconds
        return cls(stamp, producer, seq, count)

    @classmethod
    def parse(cls, batch_id: str) -> BatchName | None:
        m = _BATCH_ID.fullmatch(batch_id)
        if m is None:
            return None
        name = cls(m["stamp"], m["producer"], int(m["seq"]), int(m["count"]))
        if name.id != batch_id:  # e.g. zero-padded past 6 digits: not a name a producer writes
            return None
        try:
            name.created  # noqa: B018 - a date that does not exist (month 13) makes the name malformed
        except ValueError:
            return None
        return name

    @classmethod
    def from_key(cls, key: str, folder: str) -> BatchName | None:
        """The name in ``<folder><id><suffix>`` (suffix ``.jsonl`` for batches, ``.json`` for the rest)."""
        suffix = _BATCH_SUFFIX if folder == BATCHES else _MARKER_SUFFIX
        if not key.startswith(folder) or not key.endswith(suffix):
            return None
        return cls.parse(key[len(folder):-len(suffix)])

    @property
    def id(self) -> str:
        return f"{self.stamp}-{self.producer}-{self.seq:06d}-n{self.count}"

    @property
    def created(self) -> datetime:
        return datetime.strptime(self.stamp, _STAMP_FORMAT).replace(tzinfo=UTC)

    def key(self, folder: str) -> str:
        return f"{folder}{self.id}{_BATCH_SUFFIX if folder == BATCHES else _MARKER_SUFFIX}"


def encode_events(events: Iterable[MatchEvent]) -> bytes:
    """JSON Lines of ``MatchEvent.to_json()``."""
    return "".join(event.to_json() + "\n" for event in events).encode("utf-8")


def decode_events(data: bytes, expected: int) -> tuple[MatchEvent, ...]:
    """The events of a batch object; ValueError (never quoting the data) unless it holds ``expected`` events."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    events = tuple(MatchEvent.from_json(line) for line in lines if line.strip())
    if len(events) != expected:
        raise ValueError(f"holds {len(events)} events, its name says {expected}")
    return events


@dataclass(frozen=True, slots=True)
class Lease:
    """A consumer's claim on a batch: its random ``owner`` token, valid until ``expires_at`` (epoch seconds)."""

    owner: str
    expires_at: float

    def encode(self, claimed_at: float) -> bytes:
        return json.dumps({"owner": self.owner, "claimed_at": _utc(claimed_at), "expires_at": _utc(self.expires_at),
                           "expires_at_epoch": self.expires_at}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Lease | None:
        """The lease, or None if the object is not one (a broken lease is treated as expired)."""
        try:
            doc = json.loads(data)
            return cls(str(doc["owner"]), float(doc["expires_at_epoch"]))
        except (ValueError, TypeError, KeyError):
            return None


@dataclass(frozen=True, slots=True)
class Claim:
    """One batch object a consumer holds: what ``ack`` needs to acknowledge it."""

    batch: BatchName
    owner: str
    expires_at: float


def encode_marker(owner: str, events: int, at: float, **extra: str) -> bytes:
    """An ``acked/`` or ``malformed/`` marker: who wrote it, when, how many events."""
    return json.dumps({"owner": owner, "events": events, "at": _utc(at), **extra}, separators=(",", ":")).encode()


def marker_owner(data: bytes) -> str | None:
    try:
        return str(json.loads(data)["owner"])
    except (ValueError, TypeError, KeyError):
        return None


@dataclass(frozen=True)
class Batch:
    """Events handed to a consumer; pass the whole batch back to ``ack`` once they are safely handled.

    ``token`` is opaque to callers: the claims (batch objects and lease owner tokens) ``ack`` needs.
    """

    events: tuple[MatchEvent, ...]
    token: tuple[Claim, ...]


@dataclass(frozen=True)
class QueueStats:
    """Events pending (not claimed), in flight (under a live lease) and acknowledged; malformed objects.

    ``oldest_pending_age_seconds`` is the age of the oldest unacknowledged batch (pending or in flight), None
    when there is none.
    """

    pending: int
    in_flight: int
    acknowledged: int
    malformed: int
    oldest_pending_age_seconds: float | None

    def as_dict(self) -> dict[str, int | float | None]:
        return {"pending": self.pending, "in_flight": self.in_flight, "acknowledged": self.acknowledged,
                "malformed": self.malformed, "oldest_pending_age_seconds": self.oldest_pending_age_seconds}


def _utc(epoch: float) -> str:
    return format_utc(datetime.fromtimestamp(epoch, UTC))
