"""A budget of body bytes held at once by all downloads of one crawl process, with back-pressure.

Each download may hold up to ``--max-bytes`` (50 MiB) while its body streams and until it is hashed, and 64 are
in flight: a few hostile hosts streaming big bodies pushed a crawl past its 700 MiB memory target. Here a
download asks for bytes before it reads them; one that is refused is paused (its socket is no longer read,
so TCP slows the sender down) until bytes come back, then resumed. Bytes come back when the body is dropped:
after hashing, or when the download fails, is cancelled, times out or is too large.

How it counts. A socket read delivers at most ``read_size`` bytes (Twisted reads 64 KiB at a time) and a
pause takes effect only after the read being delivered, so a download reads only while it has been granted a
whole read ahead of what it received; it asks for more after each delivery and is paused when refused. The
first bytes of a body arrive with its response head, before anything could pause it, so every download slot
(``downloads``: Scrapy's ``CONCURRENT_REQUESTS``, which also counts the bodies waiting to be hashed) keeps one
read in reserve, and a slot's claim is never below one read. The budget is the sum of the claims: granted
bytes of every body held, and one read for each empty slot. A body of known length is granted no more than
that length.

Who may read, and why nothing deadlocks. The download granted the most (the lead; ties: any) may always take
what actually fits. Every other download takes bytes only if the budget keeps room for the lead to reach
``max_body`` (plus one read) beside everything held (the bodies waiting to be hashed too), and only in turn: a
download is not served before an older one that waits (first come first served, by download age, which is
also the order of their timeouts). So the lead never waits for another download, and for bodies being hashed
only when they alone leave it no room, which always ends: some body always makes progress, and the bytes held
never pass the budget. This needs the budget to hold the slot reserve plus one
body at ``max_body`` (``keeps_room``; the defaults, 96 MiB against 4 MiB + 50 MiB, do). A smaller budget, or
no ``max_body``, cannot keep that room: then, when no download is reading and no body waits to be hashed
(nothing could give bytes back), the lead reads on alone past the budget (counted in ``alone``), so a body
larger than the whole budget still completes, others waiting.

Not counted: the bytes a decompressed body inflates to (bounded by ``--max-bytes`` per response, and freed as
soon as it is hashed), and the ~2x of the moment Scrapy joins a body's buffer.

Pure: no reactor and no threads (every call comes from the reactor thread); a download is told to pause and
resume through two callables, so tests drive it with plain calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

#: Bytes one socket read delivers at most (``twisted.internet.abstract.FileDescriptor.bufferSize``).
READ_SIZE = 64 * 1024


class HoldState(Enum):
    READING = "reading"
    PAUSED = "paused"  # refused bytes: its transport is paused until they are granted
    DONE = "done"  # the body is whole; its bytes stay held until release()
    RELEASED = "released"


@dataclass(frozen=True, slots=True)
class BodyBudgetStats:
    """What a budget has seen: pauses and their total length, the most body bytes held at once, downloads let
    on alone past the budget (only when it is smaller than a body at the size limit), and bytes held now."""

    waits: int
    wait_seconds: float
    peak_bytes: int
    alone: int
    held: int


class BodyHold:
    """One download's account: the bytes it received and was granted. ``release()`` may be called any number
    of times, from any state."""

    __slots__ = ("_budget", "seq", "expected", "granted", "received", "state", "_pause", "_resume", "_paused_at")

    def __init__(self, budget: BodyBudget, seq: int, expected: int | None, pause: Callable[[], None],
                 resume: Callable[[float], None]) -> None:
        self._budget = budget
        self.seq = seq  # download age: lower is older
        self.expected = expected
        self.granted = 0
        self.received = 0
        self.state = HoldState.READING
        self._pause = pause
        self._resume = resume
        self._paused_at = 0.0

    @property
    def paused(self) -> bool:
        return self.state is HoldState.PAUSED

    def arrived(self, size: int) -> None:
        """``size`` body bytes were delivered (and are now held)."""
        self._budget._arrived(self, size)

    def finish(self) -> None:
        """The body ended (whole or not): it reads no more, and what it received stays held until released."""
        self._budget._finish(self)

    def release(self) -> None:
        """The body was dropped: give its bytes back."""
        self._budget._release(self)


class BodyBudget:
    """Body bytes held at once by every download of a crawl process: at most ``capacity`` (see the module
    docstring for the one exception, a budget smaller than a body at ``max_body``)."""

    def __init__(self, capacity: int, *, max_body: int, downloads: int, read_size: int = READ_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1 or downloads < 1 or read_size < 1 or max_body < 0:
            raise ValueError(f"a body budget needs capacity, downloads and read_size >= 1 and max_body >= 0, got "
                             f"{capacity}, {downloads}, {read_size}, {max_body}")
        self.capacity = capacity
        self.max_body = max_body
        self.downloads = downloads
        self.read_size = read_size
        #: Whether the budget holds every slot's first read plus one body at max_body: then it is never passed.
        self.keeps_room = max_body > 0 and read_size * downloads + max_body <= capacity
        self._clock = clock
        self._holds: dict[int, BodyHold] = {}  # every hold not released, by seq (oldest first)
        self._open: dict[int, BodyHold] = {}  # the downloads among them (reading or paused)
        self._claims = 0  # sum over _holds of max(read_size, granted)
        self._held = 0  # sum over _holds of received
        self._next_seq = 0
        self._alone: BodyHold | None = None
        self._settling = False
        self._again = False
        self._waits = 0
        self._wait_seconds = 0.0
        self._peak = 0
        self._alone_count = 0

    # --- what tests and stats read ---------------------------------------------------------------------

    @property
    def held(self) -> int:
        """Body bytes received and not given back."""
        return self._held

    @property
    def committed(self) -> int:
        """What the budget counts against its capacity: every hold's claim and one read per empty slot."""
        return self._claims + self.read_size * max(0, self.downloads - len(self._holds))

    @property
    def waiting(self) -> int:
        return sum(1 for hold in self._open.values() if hold.state is HoldState.PAUSED)

    def stats(self) -> BodyBudgetStats:
        return BodyBudgetStats(self._waits, self._wait_seconds, self._peak, self._alone_count, self._held)

    # --- a download's life -----------------------------------------------------------------------------

    def open(self, pause: Callable[[], None], resume: Callable[[float], None],
             expected: int | None = None) -> BodyHold:
        """A body starts: its first read (already arriving with the head) is granted from its slot's reserve.
        ``pause()`` / ``resume(seconds_waited)`` are called when it must stop and may go on reading;
        ``expected`` is its length when the server announced one."""
        hold = BodyHold(self, self._next_seq, expected, pause, resume)
        self._next_seq += 1
        self._holds[hold.seq] = hold
        self._open[hold.seq] = hold
        self._claims += self.read_size  # its slot's reserve, now its claim
        self._grant(hold, self._want(hold))
        return hold

    def _arrived(self, hold: BodyHold, size: int) -> None:
        if hold.state is HoldState.RELEASED or hold.state is HoldState.DONE:
            return  # bytes delivered after the end are not kept by the reader
        hold.received += size
        self._held += size
        self._peak = max(self._peak, self._held)
        if hold.received > hold.granted:  # a delivery larger than one read (TLS can): counted, it is held
            self._grant(hold, hold.received - hold.granted)
        if hold.state is HoldState.READING:
            self._top_up(hold)

    def _finish(self, hold: BodyHold) -> None:
        if hold.state is not HoldState.READING and hold.state is not HoldState.PAUSED:
            return
        self._stop_waiting(hold)
        del self._open[hold.seq]
        self._set_granted(hold, hold.received)  # the read ahead it did not use comes back
        hold.state = HoldState.DONE
        if hold is self._alone:
            self._alone = None
        self._settle()

    def _release(self, hold: BodyHold) -> None:
        if hold.state is HoldState.RELEASED:
            return
        self._stop_waiting(hold)
        self._open.pop(hold.seq, None)
        del self._holds[hold.seq]
        self._claims -= max(self.read_size, hold.granted)
        self._held -= hold.received
        hold.state = HoldState.RELEASED
        if hold is self._alone:
            self._alone = None
        self._settle()

    # --- granting ----------------------------------------------------------------------------------------

    def _want(self, hold: BodyHold) -> int:
        """Bytes ``hold`` needs granted to have one read ahead (never past its announced length)."""
        if self.max_body and hold.received > self.max_body:
            return 0  # over the size limit: the reader cancels it as soon as this delivery is stored
        target = hold.received + self.read_size
        if hold.expected is not None:
            target = max(hold.received, min(target, hold.expected))
        return target - hold.granted

    def _set_granted(self, hold: BodyHold, granted: int) -> None:
        self._claims += max(self.read_size, granted) - max(self.read_size, hold.granted)
        hold.granted = granted

    def _grant(self, hold: BodyHold, want: int) -> None:
        if want > 0:
            self._set_granted(hold, hold.granted + want)

    def _lead_granted(self, excluding: BodyHold) -> int:
        return max((h.granted for h in self._open.values() if h is not excluding), default=0)

    def _may_take(self, hold: BodyHold, want: int) -> bool:
        if hold is self._alone:
            return True
        grown = hold.granted + want
        committed = self.committed + max(self.read_size, grown) - max(self.read_size, hold.granted)
        others = self._lead_granted(hold)
        if hold.granted >= others:  # the lead: it takes what fits, its room is for it
            return committed <= self.capacity
        if any(h.seq < hold.seq and h.state is HoldState.PAUSED for h in self._open.values()):
            return False  # an older download waits: first come, first served
        if committed > self.capacity:
            return False
        if not self.keeps_room:
            return True
        # The room is kept beside everything held, bodies waiting to be hashed included. Kept beside the
        # downloads only, it let those bodies fill it: then the lead waited for hashing (a largest legal PNG
        # takes a second) while a second download sat on the rest, and oversized bodies that had to be read
        # to --max-bytes timed out instead of ending too_large (tests/test_memory.py, every kind at once).
        room = self.max_body + self.read_size - max(self.read_size, others, grown)  # it may overtake the lead
        return committed + room <= self.capacity

    def _top_up(self, hold: BodyHold) -> None:
        want = self._want(hold)
        if want <= 0 or self._may_take(hold, want):
            self._grant(hold, want)
            return
        hold.state = HoldState.PAUSED
        hold._paused_at = self._clock()
        self._waits += 1
        hold._pause()
        self._settle()  # the last reader pausing may leave nothing able to give bytes back

    def _stop_waiting(self, hold: BodyHold) -> float:
        if hold.state is not HoldState.PAUSED:
            return 0.0
        waited = max(0.0, self._clock() - hold._paused_at)
        self._wait_seconds += waited
        return waited

    def _settle(self) -> None:
        """Resume what fits now, leads first, then by age; if nothing can give bytes back, let the lead on
        alone. Re-entrant calls (a resume that delivers at once) are folded into the running one."""
        if self._settling:
            self._again = True
            return
        self._settling = True
        try:
            self._again = True
            while self._again:
                self._again = False
                for hold, waited in self._wake():
                    hold._resume(waited)
        finally:
            self._settling = False

    def _wake(self) -> list[tuple[BodyHold, float]]:
        paused = [h for h in self._open.values() if h.state is HoldState.PAUSED]
        if not paused:
            return []
        lead = max(self._open.values(), key=lambda h: (h.granted, -h.seq))
        paused.sort(key=lambda h: (h is not lead, h.seq))
        resumed: list[tuple[BodyHold, float]] = []
        for hold in paused:
            want = self._want(hold)
            if want > 0 and not self._may_take(hold, want):
                if hold is lead:
                    continue
                break  # younger downloads wait behind this one
            resumed.append(self._resume(hold, want))
        stalled = not any(h.state is HoldState.READING for h in self._open.values())
        if stalled and len(self._holds) == len(self._open) and lead.state is HoldState.PAUSED:
            # Nothing reads and no body waits to be hashed: nothing will give bytes back. Only possible when
            # the budget cannot keep room for a body at max_body (keeps_room false), or more bodies are held
            # than there are download slots.
            self._alone = lead
            self._alone_count += 1
            resumed.append(self._resume(lead, self._want(lead)))
        return resumed

    def _resume(self, hold: BodyHold, want: int) -> tuple[BodyHold, float]:
        waited = self._stop_waiting(hold)
        self._grant(hold, want)
        hold.state = HoldState.READING
        return hold, waited
