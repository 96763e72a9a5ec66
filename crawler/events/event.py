"""Match events: what a hash-list match becomes on the event queue.

An event names the reference, the list entry and both hashes; it never carries image bytes. Its id is
derived from (run, url, list, algorithm, matched hash), so a retried fetch or a replayed run produces the
same id and the queue stores it once. The JSON form is the stored contract: compact, fixed keys, with the
Python field ``list_name`` serialized as ``"list"``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # the matcher pulls in numba; a queue consumer must not pay for it
    from crawler.matching.matcher import Match

#: JSON keys in their serialized order.
EVENT_KEYS: Final = (
    "event_id", "run_id", "ref_id", "url", "page_url", "list", "entry_id", "label",
    "algorithm", "distance", "observed_hash", "matched_hash", "detected_at", "source",
)
_OPTIONAL_KEYS: Final = frozenset({"page_url", "label"})


@dataclass(frozen=True, slots=True)
class MatchEvent:
    """One match of one fetched image against one hash-list entry."""

    event_id: str
    run_id: str
    ref_id: str
    url: str
    page_url: str | None
    list_name: str
    entry_id: str
    label: str | None
    algorithm: str
    distance: int
    observed_hash: str
    matched_hash: str
    detected_at: str
    source: str = "live"

    def __post_init__(self) -> None:
        # Checked here so events built in code and events read back from a queue obey the same rules.
        for key, value in self._items():
            if key == "distance":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError("event field 'distance' must be a non-negative int")
            elif value is None:
                if key not in _OPTIONAL_KEYS:
                    raise ValueError(f"event field {key!r} must not be null")
            elif not isinstance(value, str):
                raise ValueError(f"event field {key!r} must be a string, not {type(value).__name__}")
        if not self.event_id:
            raise ValueError("event field 'event_id' must not be empty")
        _parse_utc(self.detected_at)

    def _items(self) -> list[tuple[str, Any]]:
        return [(key, getattr(self, "list_name" if key == "list" else key)) for key in EVENT_KEYS]

    def to_json(self) -> str:
        """One compact JSON object with exactly the keys of ``EVENT_KEYS``, in that order."""
        return json.dumps(dict(self._items()), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> MatchEvent:
        """Parse ``to_json`` output; ValueError (never echoing the text) if it is not a valid event.

        Unknown keys are ignored so an older consumer can read events from a newer producer; ``source``
        may be absent (it defaults to ``"live"``).
        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"event is not valid JSON ({exc.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise ValueError("event is not a JSON object")
        missing = [key for key in EVENT_KEYS if key not in data and key != "source"]
        if missing:
            raise ValueError(f"event lacks keys: {', '.join(missing)}")
        fields = {("list_name" if key == "list" else key): data[key] for key in EVENT_KEYS if key in data}
        return cls(**fields)


def make_event_id(run_id: str, url: str, list_name: str, algorithm: str, matched_hash: str,
                  source: str = "live") -> str:
    """Deterministic id: the same inputs always give the same id, so a retry never makes a second event.

    A match of the snapshot's recorded hash (``source="recorded"``) is another event than the same hash
    matched from live bytes; live ids are what they were before sources existed.
    """
    parts = (run_id, url, list_name, algorithm, matched_hash) + (() if source == "live" else (source,))
    key = "\x1f".join(parts)
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def format_utc(moment: datetime) -> str:
    """ISO-8601 in UTC with a ``Z`` suffix and millisecond precision; naive datetimes are refused."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("detected_at must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_utc(text: str) -> datetime:
    if not text.endswith("Z"):
        raise ValueError("event field 'detected_at' must be ISO-8601 UTC ending in 'Z'")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("event field 'detected_at' is not an ISO-8601 time") from None


def events_for(
    run_id: str,
    ref_id: str,
    url: str,
    page_url: str | None,
    matches: Iterable[Match],
    detected_at: datetime | None = None,
    source: str = "live",
) -> list[MatchEvent]:
    """The events for one reference's matches, all stamped with one time (now if not given).

    ``source`` says where the matched hash came from: ``live`` (the bytes fetched now) or ``recorded`` (the
    hash the snapshot recorded when it was made). Matches sharing an event id (two entries of one list
    with the same hash) give one event, the first.
    """
    stamp = format_utc(detected_at if detected_at is not None else datetime.now(UTC))
    events: dict[str, MatchEvent] = {}
    for match in matches:
        event_id = make_event_id(run_id, url, match.list_name, match.algorithm, match.matched_hash, source)
        if event_id in events:
            continue
        events[event_id] = MatchEvent(
            event_id=event_id,
            run_id=run_id,
            ref_id=ref_id,
            url=url,
            page_url=page_url,
            list_name=match.list_name,
            entry_id=match.entry_id,
            label=match.label,
            algorithm=match.algorithm,
            distance=match.distance,
            observed_hash=match.observed_hash,
            matched_hash=match.matched_hash,
            detected_at=stamp,
            source=source,
        )
    return list(events.values())
