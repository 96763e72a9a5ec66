"""Match events: the JSON contract, deterministic ids, and building events from matches."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from crawler.events.event import EVENT_KEYS, MatchEvent, events_for, make_event_id
from crawler.matching.matcher import Match

PHASH = "8f3a00c4e1b2d977"
NEAR = "8f3a00c4e1b2d976"
MD5 = "9e107d9d372bb6826bd81d3542a419d6"


def sample_event(**changes: object) -> MatchEvent:
    event = MatchEvent(
        event_id=make_event_id("run-1", "https://example.org/a.jpg", "ngo", "phash", PHASH),
        run_id="run-1",
        ref_id="ref-7",
        url="https://example.org/a.jpg",
        page_url="https://example.org/page",
        list_name="ngo",
        entry_id="ngo:17",
        label="series ü",
        algorithm="phash",
        distance=1,
        observed_hash=NEAR,
        matched_hash=PHASH,
        detected_at="2024-06-11T10:00:00.000Z",
    )
    return replace(event, **changes)  # type: ignore[arg-type]


def test_to_json_keys_exactly_and_compact() -> None:
    text = sample_event().to_json()
    data = json.loads(text)
    assert tuple(data) == EVENT_KEYS
    assert set(data) == {
        "event_id", "run_id", "ref_id", "url", "page_url", "list", "entry_id", "label",
        "algorithm", "distance", "observed_hash", "matched_hash", "detected_at", "source",
    }
    assert data["list"] == "ngo"
    assert data["source"] == "live"
    assert data["distance"] == 1
    assert "\n" not in text and ": " not in text and ", " not in text


@pytest.mark.parametrize("changes", [{}, {"page_url": None, "label": None}, {"source": "replay"}])
def test_round_trip(changes: dict[str, object]) -> None:
    event = sample_event(**changes)
    assert MatchEvent.from_json(event.to_json()) == event
    assert MatchEvent.from_json(event.to_json().encode("utf-8")) == event


def test_from_json_tolerates_unknown_keys_and_missing_source() -> None:
    data = json.loads(sample_event().to_json())
    del data["source"]
    data["future_field"] = 1
    assert MatchEvent.from_json(json.dumps(data)) == sample_event()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("list"),
        lambda d: d.pop("page_url"),
        lambda d: d.update(distance="1"),
        lambda d: d.update(distance=True),
        lambda d: d.update(distance=-1),
        lambda d: d.update(url=None),
        lambda d: d.update(matched_hash=123),
        lambda d: d.update(event_id=""),
        lambda d: d.update(detected_at="2024-06-11T10:00:00+00:00"),
        lambda d: d.update(detected_at="yesterdayZ"),
    ],
)
def test_from_json_rejects_bad_events(mutate) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(sample_event().to_json())
    mutate(data)
    with pytest.raises(ValueError):
        MatchEvent.from_json(json.dumps(data))


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '"x"', b"\xff\xfe"])
def test_from_json_rejects_non_objects(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        MatchEvent.from_json(text)


def test_make_event_id_deterministic_and_sensitive() -> None:
    args = ("run-1", "https://example.org/a.jpg", "ngo", "phash", PHASH)
    first = make_event_id(*args)
    assert first == make_event_id(*args)
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    for i in range(len(args)):
        changed = list(args)
        changed[i] += "x"
        assert make_event_id(*changed) != first
    # The separator keeps field boundaries: moving text between fields changes the id.
    assert make_event_id("ab", "c", "l", "md5", MD5) != make_event_id("a", "bc", "l", "md5", MD5)


def matches() -> list[Match]:
    return [
        Match("ngo", "md5", "ngo:1", None, 0, MD5, MD5),
        Match("ngo", "phash", "ngo:2", "x", 1, NEAR, PHASH),
        Match("ngo", "phash", "ngo:3", "dup", 1, NEAR, PHASH),  # same hash twice in one list
        Match("other", "phash", "o:9", None, 1, NEAR, PHASH),
    ]


def test_events_for() -> None:
    when = datetime(2024, 6, 11, 12, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    events = events_for("run-1", "ref-7", "https://e.org/a.jpg", None, matches(), detected_at=when)
    assert [(e.list_name, e.algorithm, e.entry_id) for e in events] == [
        ("ngo", "md5", "ngo:1"), ("ngo", "phash", "ngo:2"), ("other", "phash", "o:9"),
    ]
    assert {e.detected_at for e in events} == {"2024-06-11T10:30:05.123Z"}
    assert all(e.source == "live" and e.page_url is None and e.ref_id == "ref-7" for e in events)
    assert events[1].event_id == make_event_id("run-1", "https://e.org/a.jpg", "ngo", "phash", PHASH)
    assert events[1].observed_hash == NEAR and events[1].distance == 1 and events[1].label == "x"
    # A retry later produces the same ids.
    again = events_for("run-1", "ref-7", "https://e.org/a.jpg", None, matches())
    assert [e.event_id for e in again] == [e.event_id for e in events]


def test_events_for_default_time_is_now_utc() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    (event,) = events_for("r", "ref", "https://e.org/a.jpg", None, matches()[:1])
    assert event.detected_at.endswith("Z")
    assert datetime.fromisoformat(event.detected_at) >= before


def test_events_for_refuses_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        events_for("r", "ref", "u", None, matches(), detected_at=datetime(2024, 1, 1))


def test_events_carry_no_image_bytes() -> None:
    (event,) = events_for("r", "ref", "https://e.org/a.jpg", None, matches()[:1])
    values = json.loads(event.to_json()).values()
    assert all(v is None or isinstance(v, (str, int)) for v in values)
    assert len(event.to_json()) < 1024
