"""A small object store named by URL: a local directory (``file://DIR`` or a path) or S3 (``s3://BUCKET/PREFIX``).

The event queue, and run outputs on S3, need the same few operations from both places, so both speak this
interface: ``get``, ``put`` (optionally conditional: ``if_none_match`` creates only, ``if_match`` replaces
only the version named by its etag), ``delete`` and a sorted, lazily paginated ``list``. Keys are
``/``-separated and relative to the store's root (the S3 prefix); no segment may be empty, ``.``/``..`` or
start with ``.`` (the local store keeps its temporary and lock files under such names).

Two implementations, each in its own module and imported only when a URL names it (by ``open_store`` in
``crawler/storage/factory.py``): ``LocalStore`` (``crawler/storage/local.py``: atomic files, conditional
writes under a lock or as hard links) and ``S3Store`` (``crawler/storage/s3.py``: boto3, S3's own
conditional writes).

Errors are ``StoreError`` naming the store's URL, never an object's content; ``TransientStoreError`` marks
those a retry may cure (connection refused, timeouts, 5xx, throttling). ``RetryingStore`` retries those with
capped exponential back-off and jitter.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar, runtime_checkable

logger = logging.getLogger(__name__)

SSE_MODES = ("AES256", "aws:kms")
_T = TypeVar("_T")


class StoreError(Exception):
    """A store that cannot be used as asked: bad URL, missing bucket, no credentials, I/O failure."""


class TransientStoreError(StoreError):
    """A failure a later retry may cure: endpoint unreachable, timeout, 5xx, throttling."""


class NoSuchKey(StoreError):
    """The key does not exist."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the key exists (``if_none_match``) or is not the version named (``if_match``)."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    data: bytes
    etag: str  # without quotes


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None  # None where the listing does not carry it without reading the object (LocalStore)
    last_modified: datetime


@runtime_checkable
class ObjectStore(Protocol):
    """What the queue and the run outputs need from a store. Implementations are thread-safe."""

    @property
    def url(self) -> str: ...

    def get(self, key: str) -> StoredObject:
        """The object's bytes and etag; ``NoSuchKey`` if absent."""
        ...

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """Write the whole object, atomically; return its etag. ``PreconditionFailed`` if a condition fails."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; absent already is fine."""
        ...

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (and sorts after ``start_after``), in key order."""
        ...

    def check(self) -> None:
        """Raise ``StoreError`` now if the store cannot be reached or used (bucket, credentials, folder)."""
        ...


def check_key(key: str) -> str:
    """``key`` if it is a relative ``/``-separated key this package accepts, else ``ValueError``."""
    parts = key.split("/")
    if not key or any(not p or p.startswith(".") or "\x00" in p or "\\" in p for p in parts):
        raise ValueError(f"not a valid object key: {key!r}")
    return key


def content_etag(data: bytes) -> str:
    """The md5 hex digest, which is what S3 gives a plain (single-part, unencrypted) put."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class Backoff:
    """Capped exponential back-off with jitter: attempt n waits a random 50-100% of min(cap, base * 2**n)."""

    base: float = 0.2
    cap: float = 10.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        return (rng or random).uniform(0.5, 1.0) * min(self.cap, self.base * 2 ** min(attempt, 32))


DEFAULT_BACKOFF = Backoff()


class RetryingStore:
    """Another store, with transient failures retried a few times; each failure goes to ``on_error``.

    Conditional writes are retried too: a retry of a write that did land answers ``PreconditionFailed``,
    so callers of conditional writes read back what they meant to write (the queue does).
    """

    def __init__(self, store: ObjectStore, *, attempts: int = 6, backoff: Backoff = DEFAULT_BACKOFF,
                 on_error: Callable[[BaseException], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = store
        self._attempts = attempts
        self._backoff = backoff
        self._on_error = on_error
        self._sleep = sleep

    @property
    def url(self) -> str:
        return self.store.url

    def get(self, key: str) -> StoredObject:
        return self._retry(self.store.get, key)

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        return self._retry(lambda: self.store.put(key, data, if_none_match=if_none_match, if_match=if_match))

    def delete(self, key: str) -> None:
        self._retry(self.store.delete, key)

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        # Retrying a half-consumed listing could repeat keys; the listing is materialised per attempt instead.
        yield from self._retry(lambda: list(self.store.list(prefix, start_after)))

    def check(self) -> None:
        self.store.check()

    def _retry(self, call: Callable[..., _T], *args: object) -> _T:
        for attempt in range(self._attempts):
            try:
                return call(*args)
            except TransientStoreError as exc:
                if self._on_error is not None:
                    self._on_error(exc)
                if attempt + 1 == self._attempts:
                    raise
                delay = self._backoff.delay(attempt)
                logger.warning("%s (attempt %d of %d; retrying in %.1f s)", exc, attempt + 1, self._attempts, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")
