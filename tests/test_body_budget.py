"""The body budget (crawler/download/body_budget.py) with plain calls, and in real crawls against a raw server on
loopback: back-pressure, first come first served, the lead's room, no deadlock, bytes given back whatever the
outcome; several big bodies at once never hold more than the budget and every reference gets its outcome."""

from __future__ import annotations

import hashlib
import io
import json
import random
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from crawler.download.body_budget import BodyBudget, BodyHold, HoldState
from tests.helpers import read_request_head, run_refwatch

RS = 100  # read size in the unit tests


class _Download:
    """A download as the budget sees it: pause/resume calls recorded."""

    def __init__(self, budget: BodyBudget, expected: int | None = None, first: int = 0) -> None:
        self.paused = False
        self.resumes: list[float] = []
        self.hold: BodyHold = budget.open(self._pause, self._resume, expected)
        if first:
            self.hold.arrived(first)

    def _pause(self) -> None:
        self.paused = True

    def _resume(self, waited: float) -> None:
        self.paused = False
        self.resumes.append(waited)


def test_a_download_reads_while_it_fits_and_gives_everything_back() -> None:
    budget = BodyBudget(1000, max_body=500, downloads=2, read_size=RS)
    assert budget.keeps_room and budget.committed == 2 * RS
    one = _Download(budget, first=RS)
    for _ in range(3):
        one.hold.arrived(RS)
    assert (one.paused, budget.held, one.hold.granted) == (False, 4 * RS, 5 * RS)  # always one read ahead
    one.hold.finish()
    assert (one.hold.state, one.hold.granted, budget.held) == (HoldState.DONE, 4 * RS, 4 * RS)
    one.hold.release()
    one.hold.release()  # idempotent
    assert (budget.held, budget.committed) == (0, 2 * RS)
    assert budget.stats().peak_bytes == 4 * RS


def test_a_body_of_known_length_is_granted_no_more_than_its_length() -> None:
    budget = BodyBudget(1000, max_body=500, downloads=2, read_size=RS)
    small = _Download(budget, expected=250, first=RS)
    small.hold.arrived(RS)
    assert small.hold.granted == 250


def _feed_until_paused(download: _Download, reads: int = 50) -> int:
    """Deliver whole reads until the download is paused (bounded); returns what it received."""
    for _ in range(reads):
        if download.paused:
            break
        download.hold.arrived(RS)
    assert download.paused
    return download.hold.received


def test_a_refused_download_pauses_and_resumes_when_bytes_come_back() -> None:
    clock = [0.0]
    # two slots (200) and room for the lead to reach max_body plus a read (600 with its own 100): the other
    # download may hold its slot's read and the 300 left
    budget = BodyBudget(1000, max_body=500, downloads=2, read_size=RS, clock=lambda: clock[0])
    lead = _Download(budget, first=RS)
    for _ in range(3):
        lead.hold.arrived(RS)  # the lead: 400 received, 500 granted
    other = _Download(budget, first=RS)
    assert _feed_until_paused(other) == 400 and budget.waiting == 1
    other.hold.arrived(RS)  # the rest of the read it was in: counted, within what it was granted
    assert other.hold.received <= other.hold.granted and budget.held <= budget.capacity
    clock[0] = 2.5
    lead.hold.finish()
    lead.hold.release()  # hashed: the lead's bytes come back
    assert not other.paused and other.resumes == [2.5]
    stats = budget.stats()
    assert (stats.waits, stats.wait_seconds, stats.alone) == (1, 2.5, 0)


def test_waiting_downloads_resume_oldest_first() -> None:
    budget = BodyBudget(1000, max_body=400, downloads=3, read_size=RS)
    lead = _Download(budget, first=RS)
    for _ in range(3):
        lead.hold.arrived(RS)
    order: list[str] = []
    old, young = _Download(budget, first=RS), _Download(budget, first=RS)
    old.hold._resume = lambda waited: order.append("old")  # type: ignore[method-assign]
    young.hold._resume = lambda waited: order.append("young")  # type: ignore[method-assign]
    _feed_until_paused(old)
    _feed_until_paused(young)
    lead.hold.release()
    assert order == ["old", "young"]


def test_the_lead_never_waits_for_other_downloads_only_for_bodies_being_hashed() -> None:
    budget = BodyBudget(1000, max_body=500, downloads=2, read_size=RS)
    done = _Download(budget, first=RS)
    for _ in range(2):
        done.hold.arrived(RS)
    done.hold.finish()  # 300 held, waiting to be hashed
    lead = _Download(budget, first=RS)
    for _ in range(4):
        lead.hold.arrived(RS)  # up to the limit: 500 received
        assert not lead.paused
    lead.hold.arrived(RS)  # 600 > max_body: the reader cancels it; nothing more is asked for
    assert budget.held == 900 and budget.committed <= budget.capacity
    lead.hold.release()
    done.hold.release()
    assert budget.held == 0


def test_other_downloads_leave_the_lead_its_room_beside_bodies_being_hashed() -> None:
    """A second download stops where the lead could no longer reach ``max_body`` beside everything held: the
    lead then reads to the size limit without waiting for hashing (it did wait, and oversized bodies that must
    be read to the limit timed out beside slow-to-hash images)."""
    budget = BodyBudget(1000, max_body=500, downloads=3, read_size=RS)
    done = _Download(budget, first=RS)
    done.hold.arrived(RS)
    done.hold.finish()  # 200 held, waiting to be hashed
    lead, second = _Download(budget, first=RS), _Download(budget, first=RS)
    lead.hold.arrived(RS)
    _feed_until_paused(second)
    assert second.paused
    for _ in range(4):  # 200 -> 600 received, past max_body: never paused
        assert not lead.paused
        lead.hold.arrived(RS)
    assert not lead.paused and budget.committed <= budget.capacity


def test_a_body_larger_than_a_small_budget_completes_alone() -> None:
    budget = BodyBudget(500, max_body=2000, downloads=2, read_size=RS)
    assert not budget.keeps_room
    big = _Download(budget, first=RS)
    other = _Download(budget, first=RS)
    received = RS
    while received < 1500:  # three times what the budget holds, within max_body
        big.hold.arrived(RS)
        received += RS
        assert not big.paused  # when nothing else could give bytes back, it goes on alone
        if not other.paused:
            other.hold.arrived(RS)
    assert other.paused and budget.stats().alone >= 1
    big.hold.finish()
    big.hold.release()
    assert not other.paused


def test_bytes_are_given_back_from_every_state() -> None:
    budget = BodyBudget(1000, max_body=500, downloads=3, read_size=RS)
    reading = _Download(budget, first=RS)
    for _ in range(4):
        reading.hold.arrived(RS)
    paused = _Download(budget, first=RS)
    _feed_until_paused(paused)
    done = _Download(budget, expected=50, first=50)
    done.hold.finish()
    for hold in (paused.hold, reading.hold, done.hold):  # cancelled, failed, hashed
        hold.release()
    hold = _Download(budget, first=RS).hold
    hold.release()  # released before it finished: finish() after it changes nothing
    hold.finish()
    assert (budget.held, budget.committed, budget.waiting) == (0, 3 * RS, 0)


def _simulate(seed: int, keeps_room: bool) -> BodyBudget:
    """Random downloads (known and unknown lengths, some over the limit) read in random parts, finished,
    hashed in random order; a read once started is delivered whole even if it pauses, as a socket read is."""
    rnd = random.Random(seed)
    max_body, downloads = rnd.choice([500, 1000, 2000]), rnd.randint(1, 6)
    if keeps_room:
        capacity = RS * downloads + max_body + rnd.randint(0, 1500)
    else:
        capacity = rnd.randint(RS * downloads + 1, RS * downloads + max_body - 1)
    budget = BodyBudget(capacity, max_body=max_body, downloads=downloads, read_size=RS)
    assert budget.keeps_room is keeps_room
    sizes = [rnd.choice([rnd.randint(1, 300), rnd.randint(1, max_body), max_body + rnd.randint(1, 2000)])
             for _ in range(25)]
    waiting_for_slot = list(sizes)
    reading: list[tuple[_Download, int]] = []
    hashing: list[_Download] = []
    received: dict[int, int] = {}
    for _ in range(100_000):
        if not (waiting_for_slot or reading or hashing):
            break
        while waiting_for_slot and len(reading) + len(hashing) < downloads:
            size = waiting_for_slot.pop(0)
            expected = size if size <= max_body and rnd.random() < 0.5 else None
            download = _Download(budget, expected, first=min(RS, size, rnd.randint(1, RS)))
            received[download.hold.seq] = download.hold.received
            reading.append((download, size))
        if hashing and rnd.random() < 0.2:
            hashing.pop(rnd.randrange(len(hashing))).hold.release()
            continue
        able = [(d, size) for d, size in reading if not d.paused]
        assert able or hashing, f"deadlock (seed {seed})"
        if not able:
            continue
        download, size = rnd.choice(able)
        left = min(rnd.randint(1, RS), size - download.hold.received)
        while left > 0:
            part = rnd.randint(1, left)
            download.hold.arrived(part)
            left -= part
            if keeps_room:
                assert budget.held <= budget.committed <= budget.capacity, f"seed {seed}"
            if download.hold.received > max_body:
                break
        if download.hold.received > max_body:  # too_large: cancelled
            download.hold.release()
            reading.remove((download, size))
        elif download.hold.received >= size:
            download.hold.finish()
            reading.remove((download, size))
            hashing.append(download)
    assert not (waiting_for_slot or reading or hashing), f"not finished (seed {seed})"
    assert (budget.held, budget.committed) == (0, RS * downloads)
    return budget


@pytest.mark.parametrize("keeps_room", [True, False])
def test_random_crawls_never_deadlock_and_give_everything_back(keeps_room: bool) -> None:
    for seed in range(400):
        budget = _simulate(seed, keeps_room)
        if keeps_room:  # the budget is never passed, and nobody ever had to go on alone
            assert budget.stats().alone == 0
            assert budget.stats().peak_bytes <= budget.capacity


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        BodyBudget(0, max_body=10, downloads=1)
    with pytest.raises(ValueError):
        BodyBudget(10, max_body=10, downloads=0)


# --- real crawls ------------------------------------------------------------------------------------------

MiB = 1024 * 1024
MAX_BYTES = 3 * MiB
CONCURRENCY = 16
# Slot reserves (16 x 64 KiB) and room for one body at MAX_BYTES, plus 2 MiB that the other downloads share:
# nine big images and four oversized streams at once do not fit, so downloads are paused.
BUDGET = CONCURRENCY * 64 * 1024 + MAX_BYTES + 2 * MiB
STREAM_LIMIT = 5 * MiB  # the most an oversized answer sends before it gives up (bounded loops)


def _noise_png(seed: int) -> bytes:
    """A ~1.2 MB PNG of noise (incompressible, so the body is big), made here from a seed."""
    out = io.BytesIO()
    Image.frombytes("RGB", (640, 640), random.Random(seed).randbytes(640 * 640 * 3)).save(out, "PNG")
    return out.getvalue()


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(20)
        head = read_request_head(sock)
        if head is None:
            return
        path = head.split(b" ", 2)[1].decode()
        try:
            self._answer(sock, path)
        except OSError:
            pass  # the crawl hung up (too large, timed out)

    def _answer(self, sock: socket.socket, path: str) -> None:
        kind, _, arg = path.strip("/").partition("/")
        if kind == "img":
            body = self.server.images[int(arg)]
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % len(body) + body)
        elif kind == "chunked-img":  # an honest image without a length
            body = self.server.images[int(arg)]
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
            for start in range(0, len(body), 32768):
                block = body[start:start + 32768]
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
            sock.sendall(b"0\r\n\r\n")
        elif kind == "stream":  # an oversized chunked body
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n")
            block = b"\x00" * 65536
            for _ in range(STREAM_LIMIT // len(block)):
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
        elif kind == "announced":  # a Content-Length over the limit: refused before the body is read
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                         % (MAX_BYTES + 1))
        elif kind == "redirect":  # a body on a redirect, dropped by RedirectMiddleware
            body = b"x" * 200_000
            sock.sendall(b"HTTP/1.1 302 Found\r\nLocation: /img/%s\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % (arg.encode(), len(body)) + body)
        elif kind == "status":  # an error page with a body (404: not hashed; 503: retried, then server_error)
            body = b"<html>" + b"e" * 300_000 + b"</html>"
            sock.sendall(b"HTTP/1.1 %s Error\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % (arg.encode(), len(body)) + body)
        elif kind == "slow":  # half a body, then silence: timeout
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 400000\r\n\r\n"
                         + b"\x89PNG" + b"\x00" * 199_996)
            self.server.stopping.wait(15)
        elif kind == "reset":  # half a body, then the connection is reset
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 400000\r\n\r\n"
                         + b"\x00" * 100_000)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        elif kind == "garbage":  # a 200 that is not an image: decode_error
            body = b"not an image " * 20_000
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % len(body) + body)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, images: list[bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.images = images
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def url(self, path: str) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{path}"


IMAGES = 9


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    started = _Server([_noise_png(seed) for seed in range(IMAGES)])
    started.thread.start()
    try:
        yield started
    finally:
        started.stopping.set()
        started.shutdown()
        started.server_close()
        started.thread.join(timeout=10)


def _crawl(server: _Server, tmp_path: Path, refs: dict[str, str], *extra: str) -> tuple[dict[str, dict], dict]:
    snapshot = tmp_path / "snap.csv"
    snapshot.write_text("id,url\n" + "".join(f"{ref},{server.url(path)}\n" for ref, path in refs.items()))
    stats_file = tmp_path / "stats.json"
    result = run_refwatch("crawl", str(snapshot), "--out", str(tmp_path / "out"), "--run-id", "budget",
                          "--allow-private-networks", "--json", "--no-progress", "--max-bytes", str(MAX_BYTES),
                          "--concurrency", str(CONCURRENCY), "--per-host", str(CONCURRENCY),
                          "-s", f"REFWATCH_STATS_FILE={stats_file}", *extra, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["ref_id"]: row for row in
            pq.read_table(tmp_path / "out" / "runs" / "budget" / "outcomes").to_pylist()}
    return rows, json.loads(stats_file.read_text())["stats"]


def test_big_bodies_at_once_never_hold_more_than_the_budget(server: _Server, tmp_path: Path) -> None:
    refs = {f"img-{i}": f"/img/{i}" for i in range(IMAGES - 2)}
    refs |= {f"chunked-img-{i}": f"/chunked-img/{i}" for i in range(IMAGES - 2, IMAGES)}
    refs |= {f"stream-{i}": f"/stream/{i}" for i in range(4)}
    refs |= {"announced": "/announced/0"}
    rows, stats = _crawl(server, tmp_path, refs, "--timeout", "20", "-s", f"REFWATCH_BODY_BUDGET={BUDGET}")
    assert sorted(rows) == sorted(refs)
    for ref, row in rows.items():
        if "img" in ref:
            i = int(ref.rsplit("-", 1)[1])
            assert (row["outcome"], row["sha256"]) == ("ok", hashlib.sha256(server.images[i]).hexdigest()), ref
        else:
            assert row["outcome"] == "too_large", ref
    assert sum(len(image) for image in server.images) + 4 * MAX_BYTES > 2 * BUDGET  # more than fits at once
    assert stats["refwatch/body_budget/waits"] > 0  # back-pressure happened...
    assert 0 < stats["refwatch/body_budget/peak_bytes"] <= BUDGET  # ...and the budget was never passed
    assert stats["refwatch/body_budget/alone"] == 0
    assert stats["refwatch/body_budget/held_at_close"] == 0


def test_every_outcome_gives_its_bytes_back(server: _Server, tmp_path: Path) -> None:
    refs = {"ok": "/img/0", "ok-chunked": "/chunked-img/1", "stream": "/stream/0", "announced": "/announced/0",
            "redirect": "/redirect/2", "404": "/status/404", "503": "/status/503", "slow": "/slow/0",
            "reset": "/reset/0", "garbage": "/garbage/0"}
    rows, stats = _crawl(server, tmp_path, refs, "--timeout", "3", "--retries", "1",
                         "-s", f"REFWATCH_BODY_BUDGET={BUDGET}")
    outcomes = {ref: row["outcome"] for ref, row in rows.items()}
    assert outcomes == {"ok": "ok", "ok-chunked": "ok", "stream": "too_large", "announced": "too_large",
                        "redirect": "ok", "404": "not_found", "503": "server_error", "slow": "timeout",
                        "reset": outcomes["reset"], "garbage": "decode_error"}
    assert outcomes["reset"] in ("connection_error", "http_error")
    assert stats["refwatch/body_budget/peak_bytes"] > 0
    assert stats["refwatch/body_budget/held_at_close"] == 0  # nothing leaked, whatever the outcome
