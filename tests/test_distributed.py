"""Many workers, one crawl: ``refwatch seed`` / ``worker`` / ``status`` against a real redis-server, the
sample web on loopback and a local output folder — and the faults a fleet meets: workers killed or paused
past their lease, a shard committed before its ack, a crash in the end-of-run pass, Redis killed and
restarted. Each time: the run finishes and every planned reference is one row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawler.shards.plan import read_plan
from tests.helpers import REPO_ROOT, run_refwatch

LEASE = "3"  # seconds: short, so a dead worker's shard is taken over quickly


def _snapshot(web, path: Path, n: int, slow_every: int = 0) -> Path:
    urls = []
    for i in range(n):
        if slow_every and i % slow_every == 0:
            urls.append(web.url(f"/slow/0.4?i={i}"))
        elif i % 5 == 3:
            urls.append(web.url("/status/404"))
        else:
            urls.append(web.url(f"/img/{i}.jpg"))
    pq.write_table(pa.table({"SAMPLE_ID": pa.array(range(n), pa.int64()), "URL": urls}), path, row_group_size=8)
    return path


def _seed(redis_url: str, snapshot: Path, out: Path, run_id: str, shard_size: int = 8, *extra: str) -> dict:
    seeded = run_refwatch("seed", str(snapshot), "--redis", redis_url, "--out", str(out), "--run-id", run_id,
                          "--shard-size", str(shard_size), "--allow-private-networks", "--json", *extra)
    assert seeded.returncode == 0, seeded.stderr[-2000:]
    return json.loads(seeded.stdout)


def _worker(redis_url: str, *extra: str) -> subprocess.Popen[str]:
    """A worker in its own process group, so a test can kill it with its shard crawls, as a machine dies."""
    return subprocess.Popen([sys.executable, "-m", "crawler.cli.main", "worker", "--redis", redis_url,
                             "--lease", LEASE, "--exit-when-idle", *extra], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _finish(workers: list[subprocess.Popen[str]], timeout: float = 240) -> list[str]:
    logs = []
    for worker in workers:
        try:
            _, err = worker.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            _, err = worker.communicate()
            pytest.fail(f"a worker did not finish within {timeout} s:\n{err[-3000:]}")
        logs.append(err)
    return logs


def _status(redis_url: str, run_id: str) -> dict:
    status = run_refwatch("status", "--redis", redis_url, "--run-id", run_id, "--json")
    assert status.returncode == 0, status.stderr
    return json.loads(status.stdout)


def _assert_complete(out: Path, run_id: str, n: int) -> pa.Table:
    run_dir = out / "runs" / run_id
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "finished"
    rows = pq.read_table(run_dir / "outcomes")
    ref_ids = rows.column("ref_id").to_pylist()
    assert sorted(ref_ids, key=int) == [str(i) for i in range(n)]  # every planned reference, once
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["references"] == n and summary["finish_reason"] == "finished"
    plan = read_plan(run_dir)
    commits = sorted(p.parent.name for p in (run_dir / "shards").glob("*/commit.json"))
    assert commits == [s.shard_id for s in plan.shards]
    return rows


def _kill_group(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.communicate()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _committed(out: Path, run_id: str) -> int:
    return len(list((out / "runs" / run_id / "shards").glob("*/commit.json")))


def _attempt_rows_started(out: Path, run_id: str) -> bool:
    return any((out / "runs" / run_id / "shards").glob("*/a*/part-*.parquet"))


def test_two_workers_crawl_a_seeded_run(redis_server, web, tmp_path: Path) -> None:
    snapshot = _snapshot(web, tmp_path / "snap.parquet", 40)
    out = tmp_path / "out"
    seeded = _seed(redis_server.url, snapshot, out, "dist")
    assert seeded == {"run_id": "dist", "shards": 5, "enqueued": 5, "committed": 0, "references": 40,
                      "out": str(out / "runs" / "dist")}
    assert _status(redis_server.url, "dist")["shards"]["pending"] == 5
    logs = _finish([_worker(redis_server.url, "--processes", "1"), _worker(redis_server.url, "--processes", "1")])
    rows = _assert_complete(out, "dist", 40)
    assert rows.filter(pa.compute.equal(rows.column("outcome"), "not_found")).num_rows == 8
    status = _status(redis_server.url, "dist")
    assert status["state"] == "finished"
    assert status["shards"]["committed"] == 5 and status["references"]["done"] == 40
    assert sum("finished: 40 references" in log for log in logs) == 1  # one end-of-run pass
    again = _seed(redis_server.url, snapshot, out, "dist")  # a finished run is not seeded again
    assert again == {"run_id": "dist", "finished": True, "enqueued": 0}


def test_seeding_again_enqueues_only_shards_without_a_commit(redis_server, web, tmp_path: Path) -> None:
    """Redis lost its stream (here: a fresh Redis namespace is not needed — a committed shard is skipped)."""
    snapshot = _snapshot(web, tmp_path / "snap.parquet", 24)
    out = tmp_path / "out"
    _seed(redis_server.url, snapshot, out, "reseed")
    spec = {"settings": {"REFWATCH_SNAPSHOTS": [str(snapshot)], "REFWATCH_OUT": str(out), "REFWATCH_RUN_ID": "reseed",
                         "REFWATCH_ALLOW_PRIVATE_NETWORKS": True, "LOG_LEVEL": "WARNING"},
            "shard": read_plan(out / "runs" / "reseed").shard("s00001").to_json(), "attempt": "a-outside"}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert run_refwatch("_shard", str(tmp_path / "spec.json")).returncode == 0  # committed, never acked
    import redis

    redis.Redis.from_url(redis_server.url).flushall()  # the stream is lost
    again = _seed(redis_server.url, snapshot, out, "reseed")
    assert again["enqueued"] == 2 and again["committed"] == 1
    _finish([_worker(redis_server.url, "--processes", "2")])
    _assert_complete(out, "reseed", 24)
    commit = json.loads((out / "runs" / "reseed" / "shards" / "s00001" / "commit.json").read_text())
    assert commit["attempt"] == "a-outside"


def test_a_killed_worker_s_shard_is_taken_over(redis_server, web, tmp_path: Path) -> None:
    """SIGKILL of a worker and its shard crawl mid-shard (its parts written, no commit): after the lease
    another worker crawls the shard again; every reference is one row and every match one event id, even
    where both attempts published it."""
    from crawler.hashing.digest import hash_bytes

    snapshot = _snapshot(web, tmp_path / "snap.parquet", 32, slow_every=3)
    listed = [1, 2, 4, 7, 10, 11, 25, 26]  # plain images of _snapshot, in several shards
    hashlist = tmp_path / "known.csv"
    md5s = {hash_bytes(web.image_bytes(i)).md5 for i in listed}
    hashlist.write_text("algorithm,hash,id,label\n" + "".join(
        f"md5,{md5},e{n},synthetic\n" for n, md5 in enumerate(sorted(md5s))), encoding="utf-8")
    out = tmp_path / "out"
    _seed(redis_server.url, snapshot, out, "killed", 8, "--hashlist", f"known={hashlist}",
          "-s", "REFWATCH_OUTCOMES_BATCH_ROWS=2")  # parts early: the kill lands mid-shard
    victim = _worker(redis_server.url, "--processes", "2")
    _wait_for(lambda: _attempt_rows_started(out, "killed"), 60, "the first worker to write rows")
    _kill_group(victim)
    survivor = _worker(redis_server.url, "--processes", "2")
    logs = _finish([survivor])
    rows = _assert_complete(out, "killed", 32)
    assert "delivery 2" in logs[0]  # it took over a shard of the dead worker
    matched = {r["ref_id"] for r in rows.to_pylist() if r["matched"]}
    assert matched == {r["ref_id"] for r in rows.to_pylist() if r["md5"] in md5s} >= {str(i) for i in listed}
    drained = run_refwatch("queue", "drain", "--queue", f"file://{out}/queue", "--json")
    events = [json.loads(line) for line in drained.stdout.splitlines()]
    md5_events = [e for e in events if e["algorithm"] == "md5"]
    assert {e["ref_id"] for e in md5_events} == matched
    # one id per match: a match published by both attempts has one event id (consumers dedupe by it)
    assert len({e["event_id"] for e in md5_events}) == len(matched)


def test_a_paused_worker_past_its_lease_commits_nothing_twice(redis_server, web, tmp_path: Path) -> None:
    """A zombie: a worker stopped (SIGSTOP) past its lease while another takes over and commits, then resumed."""
    snapshot = _snapshot(web, tmp_path / "snap.parquet", 16, slow_every=2)
    out = tmp_path / "out"
    _seed(redis_server.url, snapshot, out, "zombie", 16)  # one shard
    zombie = _worker(redis_server.url, "--processes", "1")
    _wait_for(lambda: _attempt_rows_started(out, "zombie"), 60, "the zombie to write rows")
    os.killpg(zombie.pid, signal.SIGSTOP)
    try:
        other = _worker(redis_server.url, "--processes", "1")
        _wait_for(lambda: _committed(out, "zombie") == 1, 120, "the other worker's commit")
    finally:
        os.killpg(zombie.pid, signal.SIGCONT)
    _finish([other, zombie])
    rows = _assert_complete(out, "zombie", 16)
    assert rows.num_rows == 16
    attempts = [p for p in (out / "runs" / "zombie" / "shards" / "s00000").iterdir() if p.is_dir()]
    assert attempts == []  # the committed attempt's parts are the run's now; the zombie's were discarded


def test_redis_killed_and_restarted_mid_run(redis_server, web, tmp_path: Path) -> None:
    snapshot = _snapshot(web, tmp_path / "snap.parquet", 32, slow_every=4)
    out = tmp_path / "out"
    _seed(redis_server.url, snapshot, out, "redis-crash")
    time.sleep(1.5)  # appendfsync everysec: the seed is on disk
    worker = _worker(redis_server.url, "--processes", "1")
    _wait_for(lambda: _committed(out, "redis-crash") >= 1, 90, "a first commit")
    redis_server.kill()
    time.sleep(1.0)
    redis_server.start()
    _finish([worker])
    _assert_complete(out, "redis-crash", 32)


def test_a_worker_that_died_in_the_end_of_run_pass_is_replaced(redis_server, web, tmp_path: Path) -> None:
    """The finalize lock is held by a worker that died (taken here and never released) and a crashed pass
    left a stray part in outcomes/: after the lock's lease another worker finishes the run, once, whole."""
    from crawler.coordination.shardqueue import ShardQueue

    snapshot = _snapshot(web, tmp_path / "snap.parquet", 16)
    out = tmp_path / "out"
    _seed(redis_server.url, snapshot, out, "final")
    queue = ShardQueue.from_url(redis_server.url, lease_seconds=float(LEASE))
    assert queue.try_finalize("final", "a-dead-worker", float(LEASE))
    stray = out / "runs" / "final" / "outcomes" / "part-s00009-00000.parquet"  # no such shard
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"half of a part a crashed pass was copying")
    logs = _finish([_worker(redis_server.url, "--processes", "2")])
    _assert_complete(out, "final", 16)
    assert "run final finished: 16 references" in logs[0]
    assert queue.state("final") == "finished"
