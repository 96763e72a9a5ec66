"""A budget of pixels decoded at once, shared by every hashing thread of a process.

Decoding is where a crawl's memory peaks: an image's decoded pixels and the arrays hashed from them need
6 bytes a pixel for an RGB image and up to 25 for the costliest (an RGBA JPEG 2000), so two 64-megapixel images
decoded side by side needed more than the whole memory target of a crawl process. Each hashing thread
reserves an image's pixels here once it knows them (Pillow reads the size from the header, before any pixel
is decoded) and gives them back when the pixels are freed:

* an image that does not fit waits, first come first served: a big image at the head of the line is not
  overtaken by a stream of small ones that would each fit (no starvation), at the price of small images
  queued behind it waiting too;
* an image larger than the whole budget (but within the per-image limit, which is checked before and
  bounds any image's cost by the largest RGB image's: ``crawler.hashing.digest.pixel_limit``) is decoded
  alone: it waits for everything in flight to finish, and nothing starts beside it. At the defaults the
  budget is that largest image, so nothing is ever alone; only a budget set below the limit makes it so;
* pixels are given back however the decode ends (``reserve`` is a context manager).

A thread holds at most one reservation at a time, and every decode ends, so nobody waits forever. Pure
threading: no reactor, no Pillow; tests drive it with plain threads.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BudgetStats:
    """What a budget has seen so far: reservations that had to wait and for how long, the most pixels ever
    in flight, and the images larger than the whole budget (decoded alone)."""

    waits: int
    wait_seconds: float
    peak_pixels: int
    alone: int


class PixelBudget:
    """At most ``capacity`` pixels reserved at once, except one reservation larger than it, held alone."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a pixel budget must be at least 1 pixel, got {capacity}")
        self.capacity = capacity
        self._lock = threading.Condition(threading.Lock())
        self._in_flight = 0
        self._line: deque[object] = deque()  # tickets of the reservations waiting, oldest first
        self._waits = 0
        self._wait_seconds = 0.0
        self._peak = 0
        self._alone = 0

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` of the budget for the ``with`` block, after waiting for them if they do not fit."""
        if pixels < 0:
            raise ValueError(f"cannot reserve a negative number of pixels: {pixels}")
        self._acquire(pixels)
        try:
            yield
        finally:
            self._release(pixels)

    @property
    def in_flight(self) -> int:
        """Pixels reserved right now."""
        with self._lock:
            return self._in_flight

    @property
    def waiting(self) -> int:
        """Reservations waiting right now."""
        with self._lock:
            return len(self._line)

    def stats(self) -> BudgetStats:
        with self._lock:
            return BudgetStats(self._waits, self._wait_seconds, self._peak, self._alone)

    def _fits(self, pixels: int) -> bool:
        return self._in_flight == 0 or self._in_flight + pixels <= self.capacity

    def _acquire(self, pixels: int) -> None:
        with self._lock:
            if not self._line and self._fits(pixels):
                self._take(pixels)
                return
            ticket = object()
            self._line.append(ticket)
            started = time.monotonic()
            try:
                while not (self._line[0] is ticket and self._fits(pixels)):
                    self._lock.wait()
            finally:
                # Admitted or not (an exception inside wait()), the ticket leaves the line, and whoever is
                # next may fit now.
                self._line.remove(ticket)
                self._lock.notify_all()
            self._waits += 1
            self._wait_seconds += time.monotonic() - started
            self._take(pixels)

    def _take(self, pixels: int) -> None:
        if pixels > self.capacity:
            self._alone += 1
        self._in_flight += pixels
        self._peak = max(self._peak, self._in_flight)

    def _release(self, pixels: int) -> None:
        with self._lock:
            self._in_flight -= pixels
            self._lock.notify_all()
