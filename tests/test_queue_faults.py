"""The faults the S3 event queue must survive, each its own test, against a real moto_server on loopback.

What these tests prove:

- A producer SIGKILLed mid-crawl loses only its unwritten buffer, and redoing the run (same run id) leaves
  every matched reference with exactly its matches' distinct event ids in the queue, none missing (copies of
  an id written before the kill may appear twice: delivery is at least once, dedupe by ``event_id``).
- A crawl whose queue writes fail past ``REFWATCH_QUEUE_CLOSE_TIMEOUT`` exits 1 and says how many events it
  could not write; S3 answering 500/503 or dropping connections for a while costs retries (counted in
  ``refwatch/queue/errors``, the metric ``refwatch_queue_errors_total``), not events; an endpoint that is
  down (connection refused) and comes back is waited for.
- A consumer killed between receive and ack gets its batch delivered again after the lease, not before.
- Two consumers draining at once, each with its own S3 client, deliver every event, and no batch is held by
  two consumers at once inside a lease (checked from recorded claim and ack times and owner tokens).
- The claim protocol's read-back, driven through every order of two claimers' write and read-back on a
  store whose conditional writes are deliberately not atomic (both succeed): one claimer proceeds whenever
  the second write lands before the first claimer reads back; only when a whole claim (write and read-back)
  fits between the other claimer's check and write do both proceed, and the test pins that case down.
- Malformed objects in the prefix are skipped, reported by ``refwatch queue stats`` and never stop a drain.

What they cannot prove: moto's conditional writes are not atomic (measured for issue 4: with 16 threads
racing on one key, two writers both succeeded in 21 of 150 trials), so the two-consumer test shows the
protocol working against a real HTTP S3 API, not that S3 itself serialises writes; that part rests on S3's
documented atomic conditional writes (and is proven for ``LocalStore`` by ``test_objectstore.py``). Clock
skew between consumer machines (leases compare wall clocks) is not exercised.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crawler.events.queue import EventQueue, open_queue
from crawler.extensions.metrics import MetricsExtension, StatsCollector
from crawler.hashing.digest import hash_bytes
from crawler.storage.local import LocalStore
from crawler.storage.base import Backoff, ObjectStore, TransientStoreError
from crawler.events.consumer import BatchReader
from crawler.events.queue_model import BATCHES, LEASES, BatchName, Lease
from crawler.sample.web import SampleWeb
from tests.helpers import REPO_ROOT, free_port, run_refwatch
from tests.s3server import FaultProxy, MotoServer
from tests.test_crawl_e2e import read_rows, write_snapshot
from tests.test_eventqueue import event

LISTED = 3  # the sample image the hash list holds (md5, phash, pdq: three events per matched reference)


@pytest.fixture
def s3_queue(s3_server: MotoServer) -> str:
    return f"s3://{s3_server.new_bucket()}/events"


@pytest.fixture(scope="module")
def hashlist(web: SampleWeb, tmp_path_factory: pytest.TempPathFactory) -> Path:
    digest = hash_bytes(web.image_bytes(LISTED))
    path = tmp_path_factory.mktemp("lists") / "known.csv"
    path.write_text(f"algorithm,hash,id,label\nmd5,{digest.md5},k-md5,synthetic\n"
                    f"phash,{digest.phash},k-phash,synthetic\npdq,{digest.pdq},k-pdq,synthetic\n")
    return path


def crawl_args(snapshot: Path, hashlist: Path, out: Path, queue: str, endpoint: str, *extra: str) -> list[str]:
    return ["crawl", str(snapshot), "--hashlist", f"known={hashlist}", "--out", str(out), "--run-id", "fault",
            "--queue", queue, "--s3-endpoint-url", endpoint, "--allow-private-networks", "--json",
            "--no-progress", "--timeout", "1", "--retries", "0", *extra]


@contextmanager
def child_process(args: list[str], **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """A Python child process in the checkout, SIGKILLed when the block ends (the fault these tests play)."""
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, **popen)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def queued_events(queue: str, endpoint: str) -> list[dict[str, Any]]:
    """Every event in the queue, read without claiming."""
    return [json.loads(e.to_json()) for e in open_queue(queue, endpoint_url=endpoint).peek(10**6)]


def test_producer_killed_mid_crawl_then_redone(web: SampleWeb, s3_server: MotoServer, s3_queue: str,
                                               hashlist: Path, tmp_path: Path) -> None:
    matched = [(f"m{n:02d}", web.url(f"/img/{LISTED}.jpg?copy={n}")) for n in range(20)]
    slow = [(f"slow{n}", web.url("/slow/5")) for n in range(2)]  # 2 s (--timeout 1) to kill the crawl in
    snapshot = write_snapshot(tmp_path / "s.csv", matched[:10] + slow + matched[10:])
    out = tmp_path / "out"
    # 30 events before the slow references: four batches of 7 are written, 2 events wait for 60 s.
    args = crawl_args(snapshot, hashlist, out, s3_queue, s3_server.endpoint,
                      "-s", "REFWATCH_QUEUE_BATCH_EVENTS=7", "-s", "REFWATCH_QUEUE_BATCH_SECONDS=60",
                      "-s", "REFWATCH_OUTCOMES_BATCH_ROWS=5")
    store = open_queue(s3_queue, endpoint_url=s3_server.endpoint).store
    with child_process(["-m", "crawler.cli.main", *args, "--concurrency", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 30
        parts = out / "runs" / "fault" / "outcomes"
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(store.list(BATCHES))) >= 4 and len(list(parts.glob("part-*.parquet"))) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the crawl ended before it could be killed"
    before = queued_events(s3_queue, s3_server.endpoint)
    assert 0 < len(before) < 60 and len(before) % 7 == 0  # whole batches only; the buffer was lost
    killed_rows = read_rows(out / "runs" / "fault")
    assert any(r["matched"] for r in killed_rows)  # outcome rows recorded the matches: a redo republishes

    redo = run_refwatch(*args, "--concurrency", "4")  # the same run; the slow references time out together
    assert redo.returncode == 0, redo.stderr[-3000:]
    rows = {r["ref_id"]: r for r in read_rows(out / "runs" / "fault")}
    events = queued_events(s3_queue, s3_server.endpoint)
    ids_by_ref: dict[str, set[str]] = defaultdict(set)
    for e in events:
        ids_by_ref[e["ref_id"]].add(e["event_id"])
    matched_refs = {ref for ref, row in rows.items() if row["matched"]}
    assert matched_refs == {ref for ref, _ in matched}
    assert set(ids_by_ref) == matched_refs
    for ref in matched_refs:
        assert len(ids_by_ref[ref]) == rows[ref]["match_count"] == 3, ref
    assert {e["event_id"] for e in before} <= {e["event_id"] for e in events}
    assert len(events) == 60 + len(before)  # what was written before the kill is there twice


def test_queue_write_failures_crawl_exits_1_then_5xx_are_retried(web: SampleWeb, s3_server: MotoServer,
                                                                   s3_queue: str, hashlist: Path,
                                                                   tmp_path: Path) -> None:
    snapshot = write_snapshot(tmp_path / "s.csv", [(f"m{n}", web.url(f"/img/{LISTED}.jpg?c={n}")) for n in range(4)]
                              + [("other", web.url("/img/1.jpg"))])
    out = tmp_path / "out"
    with FaultProxy(s3_server.port) as proxy:
        args = crawl_args(snapshot, hashlist, out, s3_queue, proxy.endpoint, "-s", "REFWATCH_QUEUE_BATCH_EVENTS=3",
                          "-s", "REFWATCH_QUEUE_CLOSE_TIMEOUT=0.5")
        proxy.inject([], method="PUT", path_contains="/batches/")
        proxy.failing = 503  # S3 refuses every batch write, for longer than the crawl is willing to wait
        failed = run_refwatch(*args)
        assert failed.returncode == 1, failed.stderr[-3000:]
        summary = json.loads(failed.stdout)
        assert summary["events_unwritten"] == 12 and summary["events_published"] == 0
        assert summary["queue_errors"] >= 1
        assert "12 match events could not be written" in failed.stderr
        assert all(r["matched"] for r in read_rows(out / "runs" / "fault") if r["ref_id"] != "other")

        proxy.failing = None  # now S3 fails for a while only: 503, a dropped connection, 500
        proxy.inject([503, "drop", 500], method="PUT", path_contains="/batches/")
        redone = run_refwatch(*args[:-2])  # the default close timeout
    assert redone.returncode == 0, redone.stderr[-3000:]
    summary = json.loads(redone.stdout)
    assert summary["queue_errors"] == 3 and summary["events_published"] == 12 and summary["events_unwritten"] == 0
    assert summary["queue_batches_written"] == 4
    events = queued_events(s3_queue, s3_server.endpoint)
    assert len(events) == len({e["event_id"] for e in events}) == 12


def test_queue_errors_are_a_metric() -> None:
    from prometheus_client import CollectorRegistry
    from scrapy.utils.test import get_crawler

    crawler = get_crawler()
    crawler.stats.set_value("refwatch/queue/errors", 4)
    crawler.stats.set_value("refwatch/queue/batches_written", 2)
    registry = CollectorRegistry()
    registry.register(StatsCollector(crawler, MetricsExtension(crawler, None, "127.0.0.1")))
    assert registry.get_sample_value("refwatch_queue_errors_total") == 4
    assert registry.get_sample_value("refwatch_queue_batches_written_total") == 2


def test_endpoint_down_then_back(s3_server: MotoServer, s3_queue: str) -> None:
    port = free_port()  # nothing listens here yet: connections are refused
    errors: list[BaseException] = []
    producer = open_queue(s3_queue, endpoint_url=f"http://127.0.0.1:{port}", batch_events=2,
                          backoff=Backoff(base=0.05, cap=0.2), on_error=errors.append)
    producer.publish([event(n) for n in range(4)])
    time.sleep(0.5)
    assert errors and all(isinstance(e, TransientStoreError) and "cannot reach" in str(e) for e in errors)
    with FaultProxy(s3_server.port, port=port):
        producer.flush(timeout=10)
        producer.close()
    assert len(queued_events(s3_queue, s3_server.endpoint)) == 4


_CONSUMER = """
import sys, time
from crawler.events.queue import open_queue
batch = open_queue(sys.argv[1], endpoint_url=sys.argv[2]).receive(lease_seconds=float(sys.argv[3]))
print(len(batch.events), flush=True)
time.sleep(60)
"""


def test_consumer_killed_before_ack_gets_its_batch_back_after_the_lease(s3_server: MotoServer, s3_queue: str) -> None:
    with open_queue(s3_queue, endpoint_url=s3_server.endpoint) as producer:
        producer.publish([event(n) for n in range(5)])
    lease = 1.0
    with child_process(["-c", _CONSUMER, s3_queue, s3_server.endpoint, str(lease)], stdout=subprocess.PIPE,
                       text=True) as child:
        assert child.stdout is not None and child.stdout.readline().strip() == "5"
        received_at = time.monotonic()
    consumer = open_queue(s3_queue, endpoint_url=s3_server.endpoint)
    assert consumer.receive().events == ()  # still leased to the dead consumer
    assert consumer.stats().in_flight == 5
    batch = consumer.receive()
    while not batch.events and time.monotonic() - received_at < lease + 10:
        time.sleep(0.1)
        batch = consumer.receive()
    assert time.monotonic() - received_at >= lease - 0.5
    assert sorted(e.ref_id for e in batch.events) == [f"ref-{n}" for n in range(5)]
    consumer.ack(batch)
    assert consumer.stats().acknowledged == 5


@dataclass(frozen=True)
class Holding:
    batch_id: str
    owner: str
    claimed: float
    acked: float


@pytest.mark.parametrize("backend", ["s3", "file"])
def test_two_consumers_drain_concurrently(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if backend == "s3":
        s3 = request.getfixturevalue("s3_server")
        url, endpoint = f"s3://{s3.new_bucket()}/events", s3.endpoint
    else:
        url, endpoint = f"file://{tmp_path}/q", None
    with open_queue(url, endpoint_url=endpoint, batch_events=2) as producer:
        producer.publish([event(n) for n in range(24)])
    holdings: list[Holding] = []
    delivered: list[str] = []
    lock = threading.Lock()

    def drain() -> None:
        consumer = open_queue(url, endpoint_url=endpoint)  # each its own store client
        for _ in range(100):  # bounded
            claimed = time.monotonic()
            batch = consumer.receive(max_events=2, lease_seconds=30)
            if not batch.events:
                return
            time.sleep(0.005)  # "handle" the events
            consumer.ack(batch)
            acked = time.monotonic()
            with lock:
                delivered.extend(e.event_id for e in batch.events)
                holdings.extend(Holding(c.batch.id, c.owner, claimed, acked) for c in batch.token)

    threads = [threading.Thread(target=drain) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert set(delivered) == {event(n).event_id for n in range(24)}
    by_batch: dict[str, list[Holding]] = defaultdict(list)
    for h in holdings:
        by_batch[h.batch_id].append(h)
    for batch_id, held in by_batch.items():
        for a in held:
            for b in held:
                if a.owner < b.owner:  # two claims of one batch must not overlap in time
                    assert a.acked <= b.claimed or b.acked <= a.claimed, batch_id
    assert open_queue(url, endpoint_url=endpoint).stats().acknowledged == 24


class _NonAtomic:
    """A store whose conditional writes always succeed (a lost race is never refused): moto at its worst."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.url = store.url

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        return self.store.put(key, data)


class _Sequenced:
    """One claimer's view of the store: its lease reads and writes wait for their turn in a shared script
    (``A.put``, ``B.get``, ...), and its listing waits until both claimers have listed."""

    def __init__(self, store: Any, name: str, script: list[str], cond: threading.Condition,
                 listed: threading.Barrier) -> None:
        self.store, self.name, self.script, self.cond, self.listed = store, name, script, cond, listed
        self.url = store.url

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.store, attr)

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[Any]:
        infos = [*self.store.list(prefix, start_after)]
        if prefix == LEASES:  # the last listing of a receive: both claimers have seen the same state
            self.listed.wait(timeout=10)
        return iter(infos)

    def put(self, key: str, data: bytes, **conditions: Any) -> str:
        return self._turn("put", key, lambda: self.store.put(key, data, **conditions))

    def get(self, key: str) -> Any:
        return self._turn("get", key, lambda: self.store.get(key))

    def _turn(self, op: str, key: str, call: Callable[[], Any]) -> Any:
        if not key.startswith(LEASES):
            return call()
        step = f"{self.name}.{op}"
        with self.cond:
            assert self.cond.wait_for(lambda: self.script[0] == step, timeout=10), (step, self.script)
        try:
            return call()
        finally:
            with self.cond:
                self.script.pop(0)
                self.cond.notify_all()


def _race(store: Any, script: list[str]) -> set[str]:
    """Two claimers, A and B, receive the queue's one batch with their lease steps in the script's order."""
    cond, listed = threading.Condition(), threading.Barrier(2)
    remaining = [*script, "end"]
    winners: set[str] = set()

    def claim(name: str) -> None:
        reader = BatchReader(_Sequenced(store, name, remaining, cond, listed))  # type: ignore[arg-type]
        if reader.receive(lease_seconds=60).events:
            winners.add(name)

    threads = [threading.Thread(target=claim, args=(name,)) for name in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert remaining == ["end"], f"the claimers did not follow the script: {remaining}"
    return winners


RACES = [  # (lease steps in order, an expired lease to take over?, claimers that proceed if not atomic)
    (["A.put", "B.put", "A.get", "B.get"], False, 1),  # both writes land before either reads back: B wins
    (["A.put", "B.put", "B.get", "A.get"], False, 1),
    (["B.put", "A.put", "B.get", "A.get"], False, 1),
    (["A.put", "A.get", "B.put", "B.get"], False, 2),  # B's write lands after A read back: undetectable
    (["A.get", "B.get", "A.put", "B.put", "A.get", "B.get"], True, 1),  # both take over one expired lease
    (["A.get", "B.get", "A.put", "A.get", "B.put", "B.get"], True, 2),
]


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "non-atomic"])
@pytest.mark.parametrize(("script", "expired", "non_atomic_winners"), RACES)
def test_claim_read_back_decides_races(tmp_path: Path, atomic: bool, script: list[str], expired: bool,
                                       non_atomic_winners: int) -> None:
    local = LocalStore(tmp_path / "q")
    with EventQueue(local) as producer:
        producer.publish([event(1), event(2)])
    if expired:  # a consumer died holding the batch; its lease ran out a second ago
        (name,) = [BatchName.from_key(i.key, BATCHES) for i in local.list(BATCHES)]
        assert name is not None
        local.put(name.key(LEASES), Lease("dead", time.time() - 1).encode(time.time() - 61))
    winners = _race(local if atomic else _NonAtomic(local), script)
    # Atomic (S3, LocalStore): the second conditional write is refused and its read-back shows the winner.
    assert len(winners) == (1 if atomic else non_atomic_winners), winners


def test_malformed_objects_never_stop_a_drain(s3_server: MotoServer, s3_queue: str) -> None:
    with open_queue(s3_queue, endpoint_url=s3_server.endpoint, batch_events=2) as producer:
        producer.publish([event(n) for n in range(4)])
    store = open_queue(s3_queue, endpoint_url=s3_server.endpoint).store
    first = next(BatchName.from_key(i.key, BATCHES) for i in store.list(BATCHES))
    assert first is not None
    broken = BatchName(first.stamp, "0" * 16, 0, 2)  # a name the queue could have written, content it could not
    store.put(broken.key(BATCHES), b"\x00\xffcontent that is not JSON")
    store.put("batches/notes.txt", b"a person's notes")
    store.put("README", b"what this prefix is")
    cli = ("--queue", s3_queue, "--s3-endpoint-url", s3_server.endpoint)
    drained = run_refwatch("queue", "drain", *cli, "--json")
    assert drained.returncode == 0, drained.stderr
    assert sorted(json.loads(line)["ref_id"] for line in drained.stdout.splitlines()) == [f"ref-{n}" for n in range(4)]
    assert broken.key(BATCHES) in drained.stderr and "content that is not" not in drained.stderr
    after = run_refwatch("queue", "stats", *cli)
    assert after.returncode == 0
    assert "pending       0 events" in after.stdout and "acknowledged  4 events" in after.stdout
    assert "malformed     3 objects" in after.stdout


def test_unreachable_queue_is_bad_input(s3_server: MotoServer, web: SampleWeb, hashlist: Path,
                                        tmp_path: Path) -> None:
    drain = run_refwatch("queue", "drain", "--queue", "s3://no-such-bucket-here/q",
                         "--s3-endpoint-url", s3_server.endpoint)
    assert drain.returncode == 2
    assert drain.stderr.strip() == (f"refwatch: error: s3://no-such-bucket-here/q: bucket 'no-such-bucket-here' "
                                    f"does not exist at {s3_server.endpoint}")
    snapshot = write_snapshot(tmp_path / "s.csv", [("m", web.url(f"/img/{LISTED}.jpg"))])
    endpoint = f"http://127.0.0.1:{free_port()}"
    crawl = run_refwatch(*crawl_args(snapshot, hashlist, tmp_path / "out", "s3://bucket/q", endpoint))
    assert crawl.returncode == 2 and not (tmp_path / "out").exists()
    assert crawl.stderr.strip() == f"refwatch: error: s3://bucket/q: cannot reach the S3 endpoint {endpoint} " \
                                   "(EndpointConnectionError)"
