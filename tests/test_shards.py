"""A run cut into shards: the plan, create-only commits, the end-of-run checks, and ``crawl --processes``.

The crawl tests run the real ``refwatch crawl`` against the sample web on loopback; the commit tests use a
local output folder and a real S3 endpoint (moto_server), since the commit marker's create-only write is
what makes a shard's result exactly-once whoever crawls it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawler.runs.context import run_context
from crawler.shards.commit import (ShardCommit, attempt_dir, commit_shard, discard_attempt, read_commit,
                                   read_commits, run_store)
from crawler.shards.finish import IncompleteRunError, check_commits, merged_stats
from crawler.shards.plan import Plan, PlanError, Shard, plan_shards, read_plan, write_plan
from crawler.workers.affinity import PIN_ENV, allowed_cpus
from tests.helpers import REPO_ROOT, run_refwatch


def _parquet(path: Path, urls: list[str], row_group_size: int = 64) -> Path:
    pq.write_table(pa.table({"SAMPLE_ID": pa.array(range(len(urls)), pa.int64()), "URL": urls}), path,
                   row_group_size=row_group_size)
    return path


# --- the plan ------------------------------------------------------------------------------------------


def test_plan_cuts_parquet_by_rows_and_other_files_whole(tmp_path: Path) -> None:
    table = _parquet(tmp_path / "a.parquet", [f"http://example.test/{i}.jpg" for i in range(250)])
    csv = tmp_path / "b.csv"
    csv.write_text("url\nhttp://example.test/x.jpg\nhttp://example.test/y.jpg\n", encoding="utf-8")
    plan = plan_shards("r1", [str(table), str(csv)], shard_size=100)
    assert [(s.shard_id, s.start, s.stop, s.references) for s in plan.shards] == [  # equal, at most 100 rows
        ("s00000", 0, 83, 83), ("s00001", 83, 166, 83), ("s00002", 166, 250, 84), ("s00003", None, None, None)]
    assert plan.shards[3].whole_file and plan.shards[3].path == str(csv)
    assert plan.references is None  # the CSV's count is known once it is read
    assert plan_shards("r1", [str(table)], shard_size=100).references == 250
    assert plan_shards("r1", [str(table), str(csv)], shard_size=100) == plan  # deterministic


def test_plan_cuts_equal_shards_in_multiples_of_the_processes(tmp_path: Path) -> None:
    table = _parquet(tmp_path / "a.parquet", [f"http://example.test/{i}.jpg" for i in range(500)])
    sizes = [s.references for s in plan_shards("r1", [str(table)], shard_size=200, split=2).shards]
    assert sizes == [125, 125, 125, 125]  # not 200 + 200 + a 100-row tail crawled alone
    assert [s.references for s in plan_shards("r1", [str(table)], shard_size=200, split=3).shards] == [
        166, 167, 167]
    assert len(plan_shards("r1", [str(table)], shard_size=100, split=4).shards) == 8  # 5, rounded up
    assert len(plan_shards("r1", [str(table)], shard_size=600, split=2).shards) == 1  # one shard's worth: one
    assert sum(s.references or 0 for s in plan_shards("r1", [str(table)], shard_size=7, split=4).shards) == 500


def test_plan_round_trips_and_rejects_nonsense(tmp_path: Path) -> None:
    table = _parquet(tmp_path / "a.parquet", [f"http://example.test/{i}.jpg" for i in range(30)])
    plan = plan_shards("r2", [str(table)], shard_size=7)
    write_plan(tmp_path / "run", plan)
    assert read_plan(tmp_path / "run") == plan
    assert len(plan.shards) == 5 and plan.shard("s00004").references == 6
    with pytest.raises(PlanError):
        read_plan(tmp_path / "nowhere")
    with pytest.raises(ValueError):
        plan_shards("r2", [str(table)], shard_size=0)


def test_parquet_row_ranges_give_the_rows_of_the_whole_file(tmp_path: Path) -> None:
    from crawler.readers import open_snapshot

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"URL": [f"http://example.test/{i}.jpg" for i in range(1000)]}), path,
                   row_group_size=70)
    snapshot = open_snapshot(path)
    whole = [(r.ref_id, r.url) for r in snapshot]
    for start, stop in [(0, 1), (69, 71), (140, 141), (0, 1000), (999, None), (350, 700), (1000, None)]:
        assert [(r.ref_id, r.url) for r in snapshot.rows(start, stop)] == whole[start:stop]


# --- commits -------------------------------------------------------------------------------------------


def _commit(shard_id: str, attempt: str, rows: int = 3) -> ShardCommit:
    return ShardCommit(shard_id=shard_id, attempt=attempt, rows=rows, refs_read=rows, bad_records=0,
                       parts=("part-00000.parquet",),
                       stats={"refwatch/outcome/ok": rows, "refwatch/shard/committed": 1})


def test_the_first_commit_wins_in_a_local_folder(tmp_path: Path) -> None:
    run = run_context(tmp_path / "out", "run-local", None)
    store = run_store(run)
    assert commit_shard(store, run.run_id, _commit("s00000", "a1"))
    assert not commit_shard(store, run.run_id, _commit("s00000", "a2", rows=5))
    assert read_commit(store, run.run_id, "s00000").attempt == "a1"
    assert commit_shard(store, run.run_id, _commit("s00001", "a3"))
    assert sorted(read_commits(store, run.run_id)) == ["s00000", "s00001"]
    assert (tmp_path / "out" / "runs" / "run-local" / "shards" / "s00000" / "commit.json").is_file()


def test_the_first_commit_wins_on_s3(s3_server) -> None:
    bucket = "shards-commit"
    s3_server.client().create_bucket(Bucket=bucket)

    class Settings(dict):  # run_context reads the S3 options with .get
        pass

    run = run_context(f"s3://{bucket}/out", "run-s3", None,
                      Settings(REFWATCH_S3_ENDPOINT_URL=s3_server.endpoint, REFWATCH_STAGING_DIR=None))
    store = run_store(run)
    assert commit_shard(store, run.run_id, _commit("s00007", "a1"))
    assert not commit_shard(store, run.run_id, _commit("s00007", "a2"))
    assert read_commits(store, run.run_id)["s00007"].attempt == "a1"
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["out/runs/run-s3/shards/s00007/commit.json"]


def test_a_losing_attempt_is_discarded(tmp_path: Path) -> None:
    run = run_context(tmp_path / "out", "run-x", None)
    folder = attempt_dir(run, "s00000", "a2")
    folder.mkdir(parents=True)
    (folder / "part-00000.parquet").write_bytes(b"rows of a losing attempt")
    discard_attempt(run, "s00000", "a2")
    assert not folder.exists()


def test_the_end_of_run_checks_what_was_committed() -> None:
    plan = Plan("r", 2, (Shard("s00000", "a.parquet", 0, 2, 2), Shard("s00001", "a.parquet", 2, 3, 1),
                         Shard("s00002", "b.wat")))
    commits = {"s00000": _commit("s00000", "a", rows=2), "s00002": _commit("s00002", "c", rows=9)}
    with pytest.raises(IncompleteRunError, match="1 of 3 shards not committed"):
        check_commits(plan, commits)
    commits["s00001"] = _commit("s00001", "b", rows=2)  # two references where the plan holds one
    with pytest.raises(IncompleteRunError, match="s00001"):
        check_commits(plan, commits)
    commits["s00001"] = _commit("s00001", "b", rows=1)
    check_commits(plan, commits)
    stats = merged_stats(commits.values())
    assert stats == {"refwatch/outcome/ok": 12}  # the attempts' own shard state is not the run's


# --- refwatch crawl --processes ------------------------------------------------------------------------


def test_crawl_starts_the_zygote_before_scrapy_only_when_the_plan_will_have_shards(tmp_path: Path) -> None:
    from crawler.cli.crawl import will_shard
    from crawler.cli.main import build_parser

    table = str(_parquet(tmp_path / "a.parquet", [f"http://example.test/{i}.jpg" for i in range(100)]))

    def shards(*argv: str) -> bool:
        return will_shard(build_parser().parse_args(["crawl", *argv]))

    assert shards(table, "--processes", "2", "--shard-size", "40")
    assert not shards(table, "--processes", "2", "--shard-size", "100")  # one shard: crawled in the process
    assert not shards(table, "--processes", "1", "--shard-size", "40")
    assert not shards(table, "--processes", "2", "--shard-size", "40", "--recheck", "r1")  # planned as usual
    assert not shards("s3://bucket/a.parquet", "--processes", "2", "--shard-size", "40")  # needs the S3 settings
    assert not shards(str(tmp_path / "missing.parquet"), "--processes", "2")  # the run reports it, as before
    assert not shards(table, "--shard-size", "40", "--metrics-port", "9000")  # /metrics: one process
    assert shards(table, "--shard-size", "40", "--metrics-port", "9000", "--processes", "2")



def _snapshot(web, path: Path, n: int) -> Path:
    """n references: images, 404s and a refused port, so every shard has a mix of outcomes."""
    urls = []
    for i in range(n):
        kind = i % 5
        if kind == 3:
            urls.append(web.url("/status/404"))
        elif kind == 4:
            urls.append(web.url(f"/redirect/1?to=/img/{i}.png"))
        else:
            urls.append(web.url(f"/img/{i}.jpg"))
    return _parquet(path, urls, row_group_size=16)


def _rows(run_dir: Path) -> pa.Table:
    return pq.read_table(run_dir / "outcomes").sort_by("ref_id")


def _crawl(snapshot: Path, out: Path, run_id: str, *extra: str, timeout: float = 240,
           env: dict[str, str] | None = None):
    return run_refwatch("crawl", str(snapshot), "--out", str(out), "--run-id", run_id, "--allow-private-networks",
                        "--json", "--no-progress", *extra, timeout=timeout, env=env)


def test_a_run_of_one_shard_binds_its_crawl_to_one_cpu_when_the_command_owns_its_cpus(web, tmp_path: Path) -> None:
    snapshot = _snapshot(web, tmp_path / "snap.parquet", 10)
    bound = _crawl(snapshot, tmp_path / "out", "bound", "--log-level", "INFO", env={PIN_ENV: "on"})
    assert bound.returncode == 0, bound.stderr[-2000:]
    cpus = re.findall(r"this crawl runs on CPU (\d+)", bound.stderr)
    assert len(cpus) == 1 and int(cpus[0]) in allowed_cpus(), bound.stderr[-2000:]
    assert json.loads(bound.stdout)["outcomes"]["ok"] == 8
    free = _crawl(snapshot, tmp_path / "out", "free", "--log-level", "INFO", env={PIN_ENV: "off"})
    assert free.returncode == 0 and "runs on CPU" not in free.stderr, free.stderr[-2000:]


def test_processes_give_the_rows_one_process_gives(web, tmp_path: Path) -> None:
    snapshot = _snapshot(web, tmp_path / "snap.parquet", 60)
    one = _crawl(snapshot, tmp_path / "out", "one", "--processes", "1")
    assert one.returncode == 0, one.stderr[-2000:]
    many = _crawl(snapshot, tmp_path / "out", "many", "--processes", "2", "--shard-size", "16",
                  "--log-level", "INFO", env={PIN_ENV: "on"})
    assert many.returncode == 0, many.stderr[-2000:]
    # each child bound itself to a CPU of the parent's, the first two (running together) to different ones
    bound = dict(re.findall(r"shard (s\d+) runs on CPU (\d+)", many.stderr))
    cpus = allowed_cpus()
    assert sorted(bound) == ["s00000", "s00001", "s00002", "s00003"], many.stderr[-2000:]
    assert {int(cpu) for cpu in bound.values()} <= set(cpus[:2])
    assert len(cpus) < 2 or bound["s00000"] != bound["s00001"]
    assert "runs on CPU" not in one.stderr  # one process: the scheduler's
    summary_one, summary_many = json.loads(one.stdout), json.loads(many.stdout)
    assert summary_many["shards"] == 4 and "shards" not in summary_one
    assert summary_many["references"] == summary_one["references"] == 60
    assert summary_many["outcomes"] == summary_one["outcomes"]
    assert summary_many["outcomes"]["ok"] == 48 and summary_many["outcomes"]["not_found"] == 12
    run_dir = tmp_path / "out" / "runs" / "many"
    rows_one, rows_many = _rows(tmp_path / "out" / "runs" / "one"), _rows(run_dir)
    assert rows_many.num_rows == 60 and len(set(rows_many.column("ref_id").to_pylist())) == 60
    for column in ("ref_id", "url", "outcome", "http_status", "md5", "phash", "pdq", "redirects"):
        assert rows_many.column(column).to_pylist() == rows_one.column(column).to_pylist(), column
    assert set(rows_many.column("run_id").to_pylist()) == {"many"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    plan = read_plan(run_dir)
    assert [s.references for s in plan.shards] == [15, 15, 15, 15]  # equal, a multiple of --processes
    assert sorted(p.name for p in (run_dir / "shards").iterdir()) == ["s00000", "s00001", "s00002", "s00003"]
    # only the commit markers stay: the attempts' parts became the run's final parts
    assert sorted(p.name for p in (run_dir / "shards").rglob("*") if p.is_file()) == ["commit.json"] * 4
    assert [p.name for p in (run_dir / "outcomes").iterdir()] == ["part-f00000.parquet"]


def test_a_killed_child_is_crawled_again_and_every_reference_appears_once(web, tmp_path: Path) -> None:
    """SIGKILL of a shard's child mid-crawl: its attempt is never committed, a new attempt is, and the
    run's rows are each planned reference exactly once."""
    urls = [web.url(f"/slow/0.3?i={i}") if i % 4 == 0 else web.url(f"/img/{i}.jpg") for i in range(48)]
    snapshot = _parquet(tmp_path / "slow.parquet", urls, row_group_size=8)
    cmd = [sys.executable, "-m", "crawler.cli.main", "crawl", str(snapshot), "--out", str(tmp_path / "out"),
           "--run-id", "killed", "--allow-private-networks", "--json", "--no-progress", "--processes", "2",
           "--shard-size", "12", "--concurrency", "2", "--per-host", "2",
           "-s", "REFWATCH_OUTCOMES_BATCH_ROWS=2"]  # parts early: a child with a part is mid-shard
    parent = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = None
        deadline = time.monotonic() + 60
        while victim is None and time.monotonic() < deadline:  # a child that has started writing rows
            victim = _shard_child_with_rows(parent.pid, tmp_path / "out" / "runs" / "killed")
            time.sleep(0.05)
        assert victim is not None, "no shard child was seen crawling"
        os.kill(victim, signal.SIGKILL)
        out, err = parent.communicate(timeout=240)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert parent.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["references"] == 48
    assert "trying again" in err
    rows = _rows(tmp_path / "out" / "runs" / "killed")
    ref_ids = rows.column("ref_id").to_pylist()
    assert sorted(ref_ids) == sorted(str(i) for i in range(48))  # each reference once


def _shard_child_with_rows(parent_pid: int, run_dir: Path) -> int | None:
    """The pid of a shard child of ``parent_pid`` (exec'd: its child; forked: its zygote's) whose attempt
    folder already holds a part. A shard child names itself ``refwatch <shard id>`` (``ps -o comm``)."""
    for pid, comm in shard_children(parent_pid).items():
        folder = run_dir / "shards" / comm.removeprefix("refwatch ")
        committed = (folder / "commit.json").exists()
        if not committed and any(folder.glob("a*/part-*.parquet")):
            return pid
    return None


def process_tree(root: int) -> dict[int, tuple[int, str]]:
    """``root``'s descendants now: pid -> (parent pid, name), from /proc."""
    procs: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        procs[int(entry.name)] = (int(fields["PPid"]), fields["Name"].strip())
    tree: dict[int, tuple[int, str]] = {}
    frontier = {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier and pid not in tree}
        tree.update((pid, procs[pid]) for pid in frontier)
    return tree


def shard_children(root: int) -> dict[int, str]:
    """The shard children among ``root``'s descendants: pid -> name (``refwatch s00001``)."""
    return {pid: name for pid, (_, name) in process_tree(root).items() if name.startswith("refwatch s")}


def test_a_second_attempt_of_a_committed_shard_loses_and_leaves_nothing(web, tmp_path: Path) -> None:
    """Two attempts of one shard both crawl it whole (a worker presumed dead that was only slow): the
    second finds the commit marker, exits 'lost' and discards its parts."""
    snapshot = _snapshot(web, tmp_path / "snap.parquet", 10)
    shard = Shard("s00000", str(snapshot), 0, 10, 10)
    out = tmp_path / "out"
    settings = {"REFWATCH_SNAPSHOTS": [str(snapshot)], "REFWATCH_OUT": str(out), "REFWATCH_RUN_ID": "race",
                "REFWATCH_ALLOW_PRIVATE_NETWORKS": True, "LOG_LEVEL": "WARNING", "REFWATCH_HASHLISTS": []}
    codes = []
    for attempt in ("a-first", "a-second"):
        spec = tmp_path / f"{attempt}.json"
        spec.write_text(json.dumps({"settings": settings, "shard": shard.to_json(), "attempt": attempt}))
        codes.append(run_refwatch("_shard", str(spec), timeout=120).returncode)
    assert codes == [0, 3]
    run_dir = out / "runs" / "race"
    commit = json.loads((run_dir / "shards" / "s00000" / "commit.json").read_text())
    assert commit["attempt"] == "a-first" and commit["rows"] == 10
    assert (run_dir / "shards" / "s00000" / "a-first").is_dir()
    assert not (run_dir / "shards" / "s00000" / "a-second").exists()


def test_a_plan_for_several_processes_ends_on_smaller_shards(tmp_path: Path) -> None:
    from crawler.shards.plan import MIN_TAPER_ROWS

    table = _parquet(tmp_path / "a.parquet", [f"http://example.test/{i}.jpg" for i in range(4000)])
    plan = plan_shards("r1", [str(table)], shard_size=1000, split=2)
    # two full rounds of 1,000 would leave one core idle while the other ends its last shard; instead the
    # second round's rows come as halves, quarters and eighths, handed out in this order
    assert [s.references for s in plan.shards] == [1000, 1000, 500, 500, 250, 250, 250, 250]
    assert [(s.start, s.stop) for s in plan.shards][:3] == [(0, 1000), (1000, 2000), (2000, 2500)]
    assert all(a.stop == b.start for a, b in zip(plan.shards, plan.shards[1:])) and plan.shards[-1].stop == 4000
    assert plan_shards("r1", [str(table)], shard_size=1000, split=2) == plan  # deterministic, as re-seeding needs
    # one process, a Redis seed (split 1), or a single round: equal shards, as before
    assert [s.references for s in plan_shards("r1", [str(table)], shard_size=1000).shards] == [1000] * 4
    assert [s.references for s in plan_shards("r1", [str(table)], shard_size=2000, split=2).shards] == [2000] * 2
    # pieces are never cut below MIN_TAPER_ROWS
    small = plan_shards("r1", [str(table)], shard_size=400, split=4).shards
    assert min(s.references or 0 for s in small) >= MIN_TAPER_ROWS and sum(s.references or 0 for s in small) == 4000
