"""The file event queue: atomic files, idempotent publish, receive/ack, malformed files, URL parsing."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from crawler.events import MatchEvent, make_event_id
from crawler.eventqueue import Batch, EventQueue, FileQueue, QueueError, QueueStats, open_queue


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


def set_mtime(path: Path, seconds: int) -> None:
    os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


@pytest.fixture
def queue(tmp_path: Path) -> FileQueue:
    return FileQueue(tmp_path / "q")


def test_publish_writes_one_whole_file_per_event(queue: FileQueue, tmp_path: Path) -> None:
    events = [event(n) for n in range(20)]
    assert queue.publish(events) == 20
    pending = tmp_path / "q" / "pending"
    files = sorted(pending.iterdir())
    assert [f.name for f in files] == sorted(f"{e.event_id}.json" for e in events)
    for f in files:
        assert MatchEvent.from_json(f.read_text(encoding="utf-8")).event_id == f.stem
    assert queue.stats() == QueueStats(pending=20, acknowledged=0, malformed=0)


def test_readers_never_see_partial_files(queue: FileQueue, tmp_path: Path) -> None:
    pending = tmp_path / "q" / "pending"
    done = threading.Event()
    seen: set[str] = set()

    def produce() -> None:
        for n in range(300):
            queue.publish([event(n)])
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    while True:
        finished = done.is_set()
        for path in pending.glob("*.json"):
            MatchEvent.from_json(path.read_bytes())  # raises if a reader ever sees half an event
            seen.add(path.name)
        if finished:  # one last full scan after the producer finished
            break
    producer.join()
    assert len(seen) == 300
    assert not list(pending.glob("*.tmp"))


def test_failed_write_leaves_nothing(queue: FileQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        queue.publish([event(1)])
    assert list((tmp_path / "q" / "pending").iterdir()) == []


def test_leftover_tmp_is_ignored(queue: FileQueue, tmp_path: Path) -> None:
    queue.publish([event(1)])
    (tmp_path / "q" / "pending" / f".{event(2).event_id}.json.abc.tmp").write_text('{"event_id": "trunc')
    batch = queue.receive()
    assert batch.events == (event(1),)
    assert queue.stats() == QueueStats(pending=1, acknowledged=0, malformed=0)


def test_republish_is_idempotent(queue: FileQueue, tmp_path: Path) -> None:
    assert queue.publish([event(1), event(2)]) == 2
    assert queue.publish([event(1), event(2), event(1)]) == 0
    assert len(list((tmp_path / "q" / "pending").glob("*.json"))) == 2
    assert set(queue.receive().events) == {event(1), event(2)}


def test_acknowledged_events_are_not_republished(queue: FileQueue, tmp_path: Path) -> None:
    queue.publish([event(1), event(2)])
    queue.ack(queue.receive())
    assert queue.publish([event(1), event(3)]) == 1
    assert [e.event_id for e in queue.receive().events] == [event(3).event_id]
    assert queue.stats() == QueueStats(pending=1, acknowledged=2, malformed=0)
    assert not (tmp_path / "q" / "pending" / f"{event(1).event_id}.json").exists()


def test_receive_oldest_first_and_max(queue: FileQueue, tmp_path: Path) -> None:
    events = [event(n) for n in range(6)]
    queue.publish(events)
    pending = tmp_path / "q" / "pending"
    # Publish order is 0..5; give them explicit, partly equal mtimes: ties break by name.
    times = [500, 100, 300, 300, 200, 100]
    for e, t in zip(events, times):
        set_mtime(pending / f"{e.event_id}.json", t)
    expected = [e for _, _, e in sorted((t, e.event_id, e) for t, e in zip(times, events))]
    assert queue.receive(max_events=4).events == tuple(expected[:4])
    assert queue.receive().events == tuple(expected)
    with pytest.raises(ValueError):
        queue.receive(max_events=0)


def test_ack_moves_files(queue: FileQueue, tmp_path: Path) -> None:
    queue.publish([event(n) for n in range(5)])
    batch = queue.receive(max_events=3)
    queue.ack(batch)
    queue.ack(batch)  # acking twice is harmless
    assert queue.stats() == QueueStats(pending=2, acknowledged=3, malformed=0)
    for e in batch.events:
        assert (tmp_path / "q" / "acked" / f"{e.event_id}.json").is_file()
    rest = queue.receive()
    assert not set(rest.events) & set(batch.events)
    queue.ack(rest)
    assert queue.receive() == Batch(events=(), token=())
    queue.ack(queue.receive())


def test_ack_rejects_foreign_tokens(queue: FileQueue) -> None:
    with pytest.raises(QueueError):
        queue.ack(Batch(events=(), token=("../escape.json",)))


def test_malformed_files_skipped_counted_logged_once(
    queue: FileQueue, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pending = tmp_path / "q" / "pending"
    queue.publish([event(1), event(2)])
    (pending / "garbage.json").write_text("not json at all")
    wrong_name = pending / "0123456789abcdef0123456789abcdef.json"
    wrong_name.write_text(event(3).to_json())  # valid event, but the file name is not its id
    set_mtime(pending / "garbage.json", 1)
    set_mtime(wrong_name, 2)
    with caplog.at_level(logging.WARNING, logger="crawler.eventqueue"):
        first = queue.receive(max_events=1)
        second = queue.receive()
    assert len(first.events) == 1  # malformed files do not use up the batch
    assert set(second.events) == {event(1), event(2)}
    assert queue.stats() == QueueStats(pending=2, acknowledged=0, malformed=2)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "garbage.json" in caplog.text and wrong_name.name in caplog.text
    assert "not json at all" not in caplog.text
    # Removing malformed files clears the count; republishing over a malformed file makes it a normal event.
    wrong_name.unlink()
    (pending / "garbage.json").unlink()
    assert queue.stats().malformed == 0
    (pending / f"{event(4).event_id}.json").write_text('{"half": ')
    assert queue.receive().events == second.events
    assert queue.stats().malformed == 1
    assert queue.publish([event(4)]) == 0  # it was already there, only broken
    assert event(4) in queue.receive().events
    assert queue.stats() == QueueStats(pending=3, acknowledged=0, malformed=0)


def test_closed_queue_and_context_manager(tmp_path: Path) -> None:
    with FileQueue(tmp_path / "q") as queue:
        queue.publish([event(1)])
        queue.flush()
    with pytest.raises(QueueError, match="closed"):
        queue.publish([event(2)])
    with pytest.raises(QueueError, match="closed"):
        queue.receive()
    queue.close()  # closing twice is fine
    assert queue.stats().pending == 1


def test_unsafe_event_id(queue: FileQueue) -> None:
    for bad in ("../x", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            queue.publish([MatchEvent(**{**_fields(event(1)), "event_id": bad})])


def _fields(e: MatchEvent) -> dict[str, object]:
    return {name: getattr(e, name) for name in MatchEvent.__slots__}


def test_open_queue_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = open_queue(f"file://{tmp_path}/abs")
    assert isinstance(absolute, FileQueue) and isinstance(absolute, EventQueue)
    assert absolute.url == f"file://{tmp_path}/abs"
    assert (tmp_path / "abs" / "pending").is_dir() and (tmp_path / "abs" / "acked").is_dir()

    monkeypatch.chdir(tmp_path)
    open_queue("file://relative/dir")
    assert (tmp_path / "relative" / "dir" / "pending").is_dir()
    open_queue("plain/path")
    assert (tmp_path / "plain" / "path" / "acked").is_dir()
    open_queue("file://with%20space")
    assert (tmp_path / "with space" / "pending").is_dir()

    # Events published through one handle are received through another on the same directory.
    producer = open_queue(f"file://{tmp_path}/shared")
    producer.publish([event(1)])
    producer.close()
    assert open_queue(str(tmp_path / "shared")).receive().events == (event(1),)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://bucket/prefix", r"^s3:// queues are not supported yet$"),
        ("redis://localhost/0", "unsupported queue URL scheme 'redis'"),
        ("", "empty"),
        ("file://", "names no directory"),
        ("file:///tmp/q?x=1", "query"),
    ],
)
def test_open_queue_errors(url: str, message: str) -> None:
    with pytest.raises(QueueError, match=message):
        open_queue(url)


def test_queue_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(QueueError, match="cannot use"):
        FileQueue(tmp_path / "f")
