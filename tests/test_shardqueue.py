"""The shard queue (``crawler/coordination/shardqueue.py``) against a real ``redis-server``: leases, take-over,
fencing, dead letters, release, counts, run states, the end-of-run lock, and a Redis crash with AOF.

Leases are short (0.4 s) so the tests are quick; every wait is bounded.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis

from crawler.coordination.shard_model import PARKING_CONSUMER, RunState, ShardCounts, shard_counts
from crawler.coordination.shardqueue import Claim, ShardQueue

LEASE = 0.4


@pytest.fixture()
def queue(redis_server) -> ShardQueue:
    return ShardQueue.from_url(redis_server.url, lease_seconds=LEASE, max_deliveries=3)


def seeded(queue: ShardQueue, run_id: str = "run1", shards: int = 3) -> list[str]:
    queue.put_run(run_id, {"settings": {"REFWATCH_HASHES": "sha256"}, "shards": shards})
    ids = [f"s{i:05d}" for i in range(shards)]
    assert queue.enqueue(run_id, ids) == shards
    return ids


def claim_within(queue: ShardQueue, consumer: str, seconds: float) -> Claim | None:
    """Poll ``claim`` until it hands something out or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (claim := queue.claim(consumer)) is not None:
            return claim
        time.sleep(0.05)
    return None


def drain(queue: ShardQueue, consumer: str) -> list[Claim]:
    claims = []
    for _ in range(100):
        if (claim := queue.claim(consumer)) is None:
            return claims
        claims.append(claim)
    raise AssertionError("claim kept handing shards out")


# -- enqueue ---------------------------------------------------------------------------------------------------


def test_enqueue_is_idempotent_and_never_enqueues_skipped_shards(queue: ShardQueue) -> None:
    queue.put_run("run1", {"shards": 5})
    assert queue.enqueue("run1", ["s00000", "s00001", "s00001", "s00002"]) == 3
    # seeding again: only the shards not enqueued before and not committed (skip) are added
    assert queue.enqueue("run1", ["s00000", "s00001", "s00002", "s00003", "s00004"], skip={"s00004"}) == 1
    assert queue.enqueue("run1", ["s00000", "s00003"]) == 0
    assert queue.client.xlen("refwatch:run:run1:shards") == 4
    assert queue.counts("run1") == ShardCounts(enqueued=4, pending=4, in_flight=0, done=0, dead=0)
    handed = sorted(c.shard_id for c in drain(queue, "w1"))
    assert handed == ["s00000", "s00001", "s00002", "s00003"]


def test_bad_names_are_refused(queue: ShardQueue) -> None:
    with pytest.raises(ValueError, match="run id"):
        queue.put_run("a:b", {})
    with pytest.raises(ValueError, match="consumer"):
        queue.claim(PARKING_CONSUMER)
    with pytest.raises(ValueError, match="shard id"):
        queue.enqueue("run1", ["s1", ""])


# -- leases ----------------------------------------------------------------------------------------------------


def test_two_consumers_never_hold_the_same_shard_while_the_lease_is_live(queue: ShardQueue) -> None:
    ids = seeded(queue, shards=6)
    got: dict[str, list[str]] = {"a": [], "b": []}
    for _ in range(3):
        for consumer in ("a", "b"):
            claim = queue.claim(consumer)
            assert claim is not None and claim.deliveries == 1 and claim.consumer == consumer
            got[consumer].append(claim.shard_id)
    assert sorted(got["a"] + got["b"]) == ids
    assert set(got["a"]).isdisjoint(got["b"])
    assert queue.claim("c") is None  # all six are held, none lapsed
    assert queue.counts("run1") == ShardCounts(enqueued=6, pending=0, in_flight=6, done=0, dead=0)


def test_consumers_claiming_at_once_each_get_different_shards(redis_server) -> None:
    queue = ShardQueue.from_url(redis_server.url, lease_seconds=30.0)
    ids = seeded(queue, shards=40)
    got: dict[str, list[str]] = {}

    def work(consumer: str) -> None:
        got[consumer] = [c.shard_id for c in drain(queue, consumer)]

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    handed = [shard for shards in got.values() for shard in shards]
    assert len(got) == 4 and sorted(handed) == ids  # each shard exactly once


def test_a_dead_consumers_shard_is_taken_over_after_the_lease(queue: ShardQueue) -> None:
    seeded(queue, shards=1)
    first = queue.claim("a")
    assert first is not None
    assert queue.claim("b") is None  # "a" is silent, but its lease is still live
    started = time.monotonic()
    second = claim_within(queue, "b", 5 * LEASE)
    assert second is not None
    assert time.monotonic() - started >= LEASE * 0.8
    assert (second.shard_id, second.entry_id, second.consumer, second.deliveries) == (
        first.shard_id, first.entry_id, "b", 2)


def test_renew_keeps_the_shard_past_several_leases(redis_server) -> None:
    lease = 0.6  # renewed every 0.1 s: a wide margin on a busy machine
    queue = ShardQueue.from_url(redis_server.url, lease_seconds=lease)
    seeded(queue, shards=1)
    claim = queue.claim("a")
    assert claim is not None
    deadline = time.monotonic() + 3 * lease
    while time.monotonic() < deadline:
        assert queue.renew(claim) is True
        assert queue.claim("b") is None
        time.sleep(0.1)
    # the heartbeat stops: "b" takes it over, and "a" is fenced off
    taken = claim_within(queue, "b", 5 * lease)
    assert taken is not None and taken.shard_id == claim.shard_id and taken.deliveries == 2
    assert queue.renew(claim) is False


def test_renew_returns_false_once_another_consumer_took_the_entry(queue: ShardQueue) -> None:
    seeded(queue, shards=1)
    mine = queue.claim("a")
    assert mine is not None
    theirs = claim_within(queue, "b", 5 * LEASE)
    assert theirs is not None and theirs.entry_id == mine.entry_id
    assert queue.renew(mine) is False
    assert queue.release(mine) is False  # not ours to give back either
    assert queue.renew(theirs) is True
    assert queue.claim("c") is None  # b's renewed lease holds


def test_a_shard_is_dead_lettered_after_max_deliveries(redis_server) -> None:
    queue = ShardQueue.from_url(redis_server.url, lease_seconds=LEASE, max_deliveries=2)
    seeded(queue, shards=1)
    assert queue.claim("a") is not None
    second = claim_within(queue, "b", 5 * LEASE)
    assert second is not None and second.deliveries == 2
    queue.enqueue("run1", ["s00001"])
    time.sleep(LEASE * 1.5)
    third = queue.claim("c")  # s00000 would be delivered a third time: dead-lettered; c gets the new shard
    assert third is not None and third.shard_id == "s00001" and third.deliveries == 1
    [letter] = queue.dead_letters("run1")
    assert (letter.run_id, letter.shard_id, letter.entry_id, letter.deliveries, letter.last_consumer) == (
        "run1", "s00000", second.entry_id, 2, "b")
    assert letter.at_ms > 1_600_000_000_000  # Redis server time
    assert queue.renew(second) is False
    assert queue.counts("run1") == ShardCounts(enqueued=2, pending=0, in_flight=1, done=0, dead=1)
    assert queue.claim("d") is None
    # a late commit by "b" still counts: the output store decided
    assert queue.ack(second) is False
    assert queue.counts("run1") == ShardCounts(enqueued=2, pending=0, in_flight=1, done=1, dead=0)


def test_release_makes_the_shard_claimable_at_once(redis_server) -> None:
    queue = ShardQueue.from_url(redis_server.url, lease_seconds=30.0)  # a lease no test waits out
    seeded(queue, shards=1)
    mine = queue.claim("a")
    assert mine is not None and queue.claim("b") is None
    assert queue.release(mine) is True
    assert queue.counts("run1") == ShardCounts(enqueued=1, pending=1, in_flight=0, done=0, dead=0)
    started = time.monotonic()
    theirs = queue.claim("b")
    assert time.monotonic() - started < 1.0
    assert theirs is not None
    assert (theirs.shard_id, theirs.entry_id, theirs.deliveries) == (mine.shard_id, mine.entry_id, 1)
    assert queue.renew(mine) is False and queue.renew(theirs) is True
    assert queue.counts("run1") == ShardCounts(enqueued=1, pending=0, in_flight=1, done=0, dead=0)


# -- ack and counts --------------------------------------------------------------------------------------------


def test_ack_counts_each_shard_done_once(queue: ShardQueue) -> None:
    seeded(queue, shards=3)
    claims = drain(queue, "a")
    assert len(claims) == 3
    assert queue.ack(claims[0]) is True and queue.ack(claims[1]) is True
    assert queue.ack(claims[1]) is False  # acked already
    counts = queue.counts("run1")
    assert counts == ShardCounts(enqueued=3, pending=0, in_flight=1, done=2, dead=0)
    assert not counts.settled
    assert queue.renew(claims[0]) is False  # an acked shard has no lease left to renew
    assert queue.enqueue("run1", [c.shard_id for c in claims]) == 0
    assert queue.ack(claims[2]) is True
    assert queue.counts("run1").settled


def test_a_fenced_workers_late_ack_counts_the_shard_once(queue: ShardQueue) -> None:
    seeded(queue, shards=1)
    stale = queue.claim("a")
    assert stale is not None
    fresh = claim_within(queue, "b", 5 * LEASE)
    assert fresh is not None
    # "a" committed first (the create-only marker let only one commit through); its ack settles the shard
    assert queue.ack(stale) is True
    assert queue.ack(fresh) is False
    assert queue.counts("run1") == ShardCounts(enqueued=1, pending=0, in_flight=0, done=1, dead=0)


def test_shard_counts_count_parked_entries_as_pending() -> None:
    assert shard_counts(enqueued=10, delivered_unacked=4, parked=1, done=3, dead=1) == ShardCounts(
        enqueued=10, pending=3, in_flight=3, done=3, dead=1)


# -- runs ------------------------------------------------------------------------------------------------------


def test_runs_states_and_which_runs_are_claimed_from(queue: ShardQueue) -> None:
    spec = {"settings": {"CONCURRENT_REQUESTS": 64}, "plan": {"shards": 2, "rows": 2000}}
    queue.put_run("older", spec)
    queue.put_run("newer", {"plan": {"shards": 1}})
    assert queue.active_runs() == ["older", "newer"]
    assert queue.get_run("older") == spec and queue.get_run("missing") is None
    assert queue.state("older") is RunState.RUNNING and queue.state("missing") is None
    queue.enqueue("older", ["s00000"])
    queue.enqueue("newer", ["s00000"])

    queue.set_state("older", RunState.FINISHED)
    assert queue.active_runs() == ["newer"]
    claim = queue.claim("w")
    assert claim is not None and claim.run_id == "newer"
    assert queue.claim("w") is None  # the finished run's shard is not handed out

    queue.set_state("older", "running")
    assert queue.active_runs() == ["older", "newer"]  # back in its first place
    claim = queue.claim("w")
    assert claim is not None and claim.run_id == "older"
    queue.set_state("newer", RunState.FINALIZING)
    assert queue.active_runs() == ["older", "newer"]
    queue.set_state("newer", RunState.FAILED)
    assert queue.active_runs() == ["older"] and queue.state("newer") is RunState.FAILED
    with pytest.raises(KeyError):
        queue.set_state("missing", RunState.RUNNING)
    with pytest.raises(ValueError):
        queue.set_state("older", "paused")


def test_the_end_of_run_pass_goes_to_exactly_one_of_two_consumers(queue: ShardQueue) -> None:
    seeded(queue, shards=1)
    start = threading.Barrier(2)
    granted: dict[str, bool] = {}

    def attempt(consumer: str) -> None:
        start.wait(timeout=5)
        granted[consumer] = queue.try_finalize("run1", consumer, lease_seconds=LEASE)

    threads = [threading.Thread(target=attempt, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert sorted(granted.values()) == [False, True]
    holder = next(name for name, ok in granted.items() if ok)
    other = "b" if holder == "a" else "a"
    assert queue.state("run1") is RunState.FINALIZING
    assert queue.try_finalize("run1", holder, LEASE) is True  # the holder renews
    assert queue.try_finalize("run1", other, LEASE) is False
    assert queue.end_finalize("run1", other) is False
    time.sleep(LEASE * 1.5)  # the holder died: its lock expires
    assert queue.try_finalize("run1", other, LEASE) is True
    queue.set_state("run1", RunState.FINISHED)
    assert queue.end_finalize("run1", other) is True
    assert queue.try_finalize("run1", holder, LEASE) is False  # the pass ran once: nobody takes it again
    assert queue.try_finalize("run1", other, LEASE) is False


# -- waiting and crashes ---------------------------------------------------------------------------------------


def test_a_blocking_claim_waits_for_a_shard_to_arrive(queue: ShardQueue) -> None:
    queue.put_run("run1", {})
    started = time.monotonic()
    assert queue.claim("w", block_ms=300) is None
    assert 0.25 <= time.monotonic() - started < 2.0
    timer = threading.Timer(0.3, queue.enqueue, args=("run1", ["s00007"]))
    timer.start()
    try:
        started = time.monotonic()
        claim = queue.claim("w", block_ms=5000)
        assert claim is not None and claim.shard_id == "s00007"
        assert time.monotonic() - started < 2.0
    finally:
        timer.cancel()


def test_a_blocking_read_over_two_runs_hands_out_one_shard_and_parks_the_other(queue: ShardQueue) -> None:
    """The blocking read watches every active stream with COUNT 1 per stream, so it can bring two entries
    at once (shards arrived in both runs); ``claim`` reaches it only in that race, so it is called directly."""
    for run_id in ("run1", "run2"):
        queue.put_run(run_id, {})
        queue.enqueue(run_id, ["s00000"])
    claim = queue._read_new_any("w", ["run1", "run2"], block_ms=100)
    assert claim is not None and claim.run_id == "run1" and claim.consumer == "w"
    assert queue.counts("run1") == ShardCounts(enqueued=1, pending=0, in_flight=1, done=0, dead=0)
    assert queue.counts("run2") == ShardCounts(enqueued=1, pending=1, in_flight=0, done=0, dead=0)
    other = queue.claim("v")
    assert other is not None and (other.run_id, other.shard_id, other.deliveries) == ("run2", "s00000", 1)
    assert queue.claim("v") is None


def test_shards_and_claims_survive_a_redis_crash(redis_server) -> None:
    queue = ShardQueue.from_url(redis_server.url, lease_seconds=30.0)
    ids = seeded(queue, shards=5)
    held = queue.claim("a")
    acked = queue.claim("a")
    assert held is not None and acked is not None and queue.ack(acked)
    time.sleep(1.5)  # appendfsync everysec: let the writes reach the disk
    redis_server.kill()
    with pytest.raises(redis.ConnectionError):
        queue.client.ping()
    redis_server.start()

    queue = ShardQueue.from_url(redis_server.url, lease_seconds=30.0)
    assert queue.active_runs() == ["run1"] and queue.state("run1") is RunState.RUNNING
    assert queue.counts("run1") == ShardCounts(enqueued=5, pending=3, in_flight=1, done=1, dead=0)
    assert queue.renew(held) is True  # the pending claim and its owner survived
    rest = drain(queue, "b")
    assert sorted(c.shard_id for c in rest) == sorted(set(ids) - {held.shard_id, acked.shard_id})
    assert queue.enqueue("run1", ids) == 0
