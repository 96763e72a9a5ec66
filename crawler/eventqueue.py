"""The match-event queue, named by URL: producers ``publish``/``flush``/``close``, consumers ``receive``/``ack``.

Only ``file://DIR`` exists so far: one JSON file per event in ``DIR/pending/``, moved to ``DIR/acked/`` when
acknowledged. Files are named by the deterministic event id, so re-publishing overwrites instead of
duplicating, and an event already acknowledged is not published again. Each file is written to a ``.tmp``
file beside it, fsynced and renamed, so a reader sees a whole event or none. Delivery is at-least-once: a
consumer that dies between ``receive`` and ``ack`` sees the same events again.

The interface is shaped for a later ``s3://BUCKET/PREFIX`` back-end that batches on ``flush`` and leases on
``receive``: a ``Batch`` carries an opaque back-end ``token`` that ``ack`` hands back.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from crawler.events import MatchEvent

logger = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_SUFFIX = ".json"


class QueueError(Exception):
    """A queue URL or queue directory the user must fix, or use of a closed queue."""


@dataclass(frozen=True)
class Batch:
    """Events handed to a consumer; pass the whole batch back to ``ack`` once they are safely handled.

    ``token`` is opaque to callers: what the back-end needs to acknowledge (file names for ``FileQueue``).
    """

    events: tuple[MatchEvent, ...]
    token: tuple[str, ...]


@dataclass(frozen=True)
class QueueStats:
    """Queue depth: events waiting, events acknowledged, and malformed entries skipped."""

    pending: int
    acknowledged: int
    malformed: int


@runtime_checkable
class EventQueue(Protocol):
    """What every queue back-end offers; one producer per process, consumers may run elsewhere."""

    @property
    def url(self) -> str: ...

    def publish(self, events: Iterable[MatchEvent]) -> int:
        """Queue ``events``; return how many were new (not already pending or acknowledged)."""
        ...

    def flush(self) -> None:
        """Make everything published so far durable."""
        ...

    def close(self) -> None:
        """Flush and release resources; the queue cannot be used afterwards."""
        ...

    def receive(self, max_events: int = 1000) -> Batch:
        """Up to ``max_events`` unacknowledged events, oldest first."""
        ...

    def ack(self, batch: Batch) -> None:
        """Mark a received batch handled so it is not received again."""
        ...

    def stats(self) -> QueueStats: ...


def open_queue(url: str) -> EventQueue:
    """The queue a URL names: ``file:///abs/dir``, ``file://relative/dir`` or a plain directory path."""
    if "://" not in url and not url.startswith("file:"):
        if not url.strip():
            raise QueueError("empty queue URL")
        return FileQueue(url, url=url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        raise QueueError("s3:// queues are not supported yet")
    if scheme != "file":
        raise QueueError(f"unsupported queue URL scheme {parts.scheme!r} (use file://DIR)")
    if parts.query or parts.fragment:
        raise QueueError(f"file:// queue URL must not have a query or fragment: {url}")
    # netloc + path is the path, so file://relative/dir is the relative directory relative/dir.
    path = unquote(parts.netloc + parts.path)
    if not path:
        raise QueueError(f"file:// queue URL names no directory: {url}")
    return FileQueue(path, url=url)


class FileQueue:
    """A queue in a local directory: ``pending/<event_id>.json`` until acked, then ``acked/<event_id>.json``.

    Thread-safe within one process (one lock); meant for one producer and one consumer at a time.
    """

    def __init__(self, directory: str | os.PathLike[str], *, url: str | None = None) -> None:
        self._root = Path(directory)
        self._pending = self._root / "pending"
        self._acked = self._root / "acked"
        self._url = url if url is not None else f"file://{self._root.resolve()}"
        self._lock = threading.Lock()
        self._closed = False
        # Malformed pending files seen, name -> mtime_ns, so each is logged once and not re-read until it changes.
        self._malformed: dict[str, int] = {}
        try:
            self._pending.mkdir(parents=True, exist_ok=True)
            self._acked.mkdir(exist_ok=True)
        except OSError as exc:
            raise QueueError(f"cannot use {self._root} as a queue directory: {exc.strerror or exc}") from None
        logger.info("Event queue at %s", self._root)

    @property
    def url(self) -> str:
        return self._url

    def __enter__(self) -> FileQueue:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        self.close()

    def publish(self, events: Iterable[MatchEvent]) -> int:
        """Write each event atomically; return how many were new (already pending or acked are not)."""
        new = delivered = 0
        with self._lock:
            self._check_open()
            for event in events:
                name = _file_name(event.event_id)
                if (self._acked / name).exists():
                    delivered += 1
                    continue
                existed = (self._pending / name).exists()
                self._write_atomic(name, event.to_json())
                self._malformed.pop(name, None)
                new += not existed
        if new or delivered:
            logger.debug("Published %d new events (%d already acknowledged)", new, delivered)
        return new

    def flush(self) -> None:
        """fsync the directories so the renames done by ``publish``/``ack`` survive a crash."""
        with self._lock:
            self._check_open()
            self._sync_dirs()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._sync_dirs()
            self._closed = True

    def receive(self, max_events: int = 1000) -> Batch:
        """Up to ``max_events`` pending events, oldest first (by mtime, then name); malformed files skipped."""
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, not {max_events}")
        events: list[MatchEvent] = []
        names: list[str] = []
        with self._lock:
            self._check_open()
            for mtime_ns, name in self._pending_files():
                if len(events) >= max_events:
                    break
                if self._malformed.get(name) == mtime_ns:
                    continue
                event = self._read(name, mtime_ns)
                if event is not None:
                    events.append(event)
                    names.append(name)
        return Batch(events=tuple(events), token=tuple(names))

    def ack(self, batch: Batch) -> None:
        """Move the batch's files to ``acked/``; a file already gone (acked before) is fine."""
        with self._lock:
            self._check_open()
            for name in batch.token:
                if Path(name).name != name or not name.endswith(_SUFFIX):
                    raise QueueError("batch token does not belong to a file queue")
                try:
                    os.replace(self._pending / name, self._acked / name)
                except FileNotFoundError:
                    if not (self._acked / name).exists():
                        logger.warning("Cannot ack %s: no longer pending", name)

    def stats(self) -> QueueStats:
        """Counts from the directories; ``malformed`` counts pending files this queue found malformed."""
        with self._lock:
            pending = self._pending_files()
            malformed = sum(1 for mtime_ns, name in pending if self._malformed.get(name) == mtime_ns)
            acknowledged = sum(1 for entry in os.scandir(self._acked) if entry.name.endswith(_SUFFIX))
        return QueueStats(pending=len(pending) - malformed, acknowledged=acknowledged, malformed=malformed)

    def _check_open(self) -> None:
        if self._closed:
            raise QueueError(f"queue {self._url} is closed")

    def _write_atomic(self, name: str, text: str) -> None:
        """Write to a ``.tmp`` file in ``pending/``, fsync, then rename: the event appears whole or not at all."""
        fd, tmp = tempfile.mkstemp(dir=self._pending, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._pending / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _pending_files(self) -> list[tuple[int, str]]:
        """``(mtime_ns, name)`` of pending ``*.json`` files, oldest first; ``.tmp`` files are ignored."""
        files: list[tuple[int, str]] = []
        with os.scandir(self._pending) as entries:
            for entry in entries:
                if not entry.name.endswith(_SUFFIX) or entry.name.startswith("."):
                    continue
                try:
                    files.append((entry.stat().st_mtime_ns, entry.name))
                except FileNotFoundError:  # acked by someone else between listing and stat
                    continue
        files.sort()
        return files

    def _read(self, name: str, mtime_ns: int) -> MatchEvent | None:
        """The event in a pending file, or None (logged once, by file name only) if it is malformed."""
        try:
            event = MatchEvent.from_json((self._pending / name).read_bytes())
            if _file_name(event.event_id) != name:
                raise ValueError("event_id does not match the file name")
        except FileNotFoundError:
            return None
        except ValueError as exc:
            if name not in self._malformed:
                logger.warning("Skipping malformed event file %s: %s", self._pending / name, exc)
            self._malformed[name] = mtime_ns
            return None
        self._malformed.pop(name, None)
        return event

    def _sync_dirs(self) -> None:
        for directory in (self._pending, self._acked):
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _file_name(event_id: str) -> str:
    """``<event_id>.json``; ids that could escape the directory or hide as dot-files are refused."""
    if not _SAFE_ID.fullmatch(event_id):
        raise ValueError("event_id is not safe as a file name (letters, digits, '_', '-', '.')")
    return event_id + _SUFFIX
