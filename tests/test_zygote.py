"""Shard children forked from a warm zygote (crawler/workers/zygote.py): the same crawl as exec'd children, the
same exit statuses, the environment the parent asked for, a SIGKILL seen as a failed attempt, and a dead
zygote replaced by exec'd children. Real processes, bounded waits; every process started is stopped."""

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

from crawler.workers import local
from crawler.workers.zygote import STATUS_UNKNOWN, ForkedChild, Zygote, ZygoteError, available
from tests.helpers import REPO_ROOT
from tests.test_shards import _parquet, _rows, _snapshot, process_tree, shard_children

pytestmark = pytest.mark.skipif(not available(), reason="needs Linux pidfds (5.3) and fork")

PROBE = "tests.test_zygote:probe"


# --- what a forked child runs in these tests (the zygote's entry): it reports its state and uses every
# library that has native threads, then exits as argv says -----------------------------------------------


def probe(argv: list[str]) -> int:
    """``report PATH``: write what this child sees and use OpenBLAS, Arrow's pools, numba, scipy.fft;
    ``exit N``: exit N; ``sleep S``: sleep S seconds, then exit 0."""
    import ctypes
    import threading

    if argv[0] == "exit":
        return int(argv[1])
    if argv[0] == "sleep":
        time.sleep(float(argv[1]))
        return 0
    import numpy as np
    import pyarrow.compute as pc
    import scipy.fft

    from crawler.hashing.digest import hash_bytes

    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_char_p
    before = len(os.listdir("/proc/self/task"))
    fds = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
           if os.path.exists(f"/proc/self/fd/{fd}")}  # before this probe opens any
    a = np.random.default_rng(1).random((600, 600))
    product = float((a @ a).sum())  # OpenBLAS starts its threads again in the child
    table = pa.table({"x": np.arange(2_000_000) % 1000})
    pq.write_table(table, Path(argv[1]).with_suffix(".parquet"), row_group_size=100_000)
    back = pq.read_table(Path(argv[1]).with_suffix(".parquet"), use_threads=True)  # Arrow's CPU pool
    report = {
        "environ": dict(os.environ),
        "c_getenv": (libc.getenv(b"ZYGOTE_TEST_ASKED") or b"").decode(),
        "cwd": os.getcwd(), "pgid": os.getpgid(0), "ppid": os.getppid(),
        "stdin": os.readlink("/proc/self/fd/0"),
        "fds": fds,
        "signals_default": (signal.getsignal(signal.SIGINT) is signal.default_int_handler
                            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL),
        "python_threads": threading.active_count(), "tasks_at_start": before,
        "tasks_after": len(os.listdir("/proc/self/task")),
        "random": float(np.random.random()),
        "sum_ok": bool(back.num_rows == 2_000_000 and pc.sum(back["x"]).as_py() == table["x"].to_numpy().sum()),
        "product_ok": product > 0, "fft_ok": bool(abs(scipy.fft.fft(np.ones(8))[0] - 8) < 1e-9),
        "hash_ok": hash_bytes(b"not an image").md5 is not None,
    }
    Path(argv[1]).write_text(json.dumps(report))
    return 0


def _zygote(env: dict[str, str] | None = None) -> Zygote:
    command = [sys.executable, "-m", "crawler.workers.zygote", "--warm", local.ZYGOTE_WARM, "--entry", PROBE]
    return Zygote(command, {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})})


@pytest.fixture()
def zygote():
    started = _zygote({"ZYGOTE_TEST_ZYGOTE_ONLY": "1"})
    try:
        yield started
    finally:
        for pid in process_tree(started.pid):  # a child a failed test left behind
            os.kill(pid, signal.SIGKILL)
        started.close()


def test_a_forked_child_gets_the_environment_asked_for_and_a_sane_process(zygote: Zygote, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()} | {"ZYGOTE_TEST_ASKED": "yes", "PYTHONPATH": str(REPO_ROOT)}
    children = [zygote.fork(["report", str(tmp_path / f"r{i}.json")], env, str(tmp_path)) for i in range(2)]
    assert [child.wait(timeout=120) for child in children] == [0, 0]
    assert zygote.info["ready"] and not any("Python" in t for t in zygote.info["threads"])
    reports = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2)]
    for report, child in zip(reports, children):
        assert report["environ"]["ZYGOTE_TEST_ASKED"] == "yes" and report["c_getenv"] == "yes"
        assert "ZYGOTE_TEST_ZYGOTE_ONLY" not in report["environ"]  # the zygote's own environment is gone
        assert report["environ"] == {**env, **{k: v for k, v in report["environ"].items() if k not in env}}
        assert report["cwd"] == str(tmp_path)
        assert report["ppid"] == zygote.pid and report["pgid"] == os.getpgid(0)  # the parent's group, as exec
        assert report["stdin"] == "/dev/null"
        # no descriptor of the zygote's (its socket, a sibling's pidfd) leaked into the child
        assert sorted(report["fds"]) == ["0", "1", "2"], report["fds"]
        assert report["signals_default"] and report["python_threads"] == 1 and report["tasks_at_start"] == 1
        assert report["tasks_after"] > 1  # OpenBLAS and Arrow started their threads again, and they worked:
        assert report["sum_ok"] and report["product_ok"] and report["fft_ok"] and report["hash_ok"]
        assert child.cpu_seconds is not None and child.cpu_seconds > 0
    assert reports[0]["random"] != reports[1]["random"]  # numpy's generator reseeded in each child


def test_exit_statuses_and_signals_reach_the_parent(zygote: Zygote, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    assert zygote.fork(["exit", "3"], env, str(tmp_path)).wait(timeout=60) == 3
    assert zygote.fork(["exit", "4"], env, str(tmp_path)).wait(timeout=60) == 4
    sleeper = zygote.fork(["sleep", "60"], env, str(tmp_path))
    with pytest.raises(subprocess.TimeoutExpired):
        sleeper.wait(timeout=0.2)
    sleeper.kill()
    assert sleeper.wait(timeout=30) == -signal.SIGKILL
    assert local.attempt_status(sleeper.returncode) == "failed"
    stopped = zygote.fork(["sleep", "60"], env, str(tmp_path))
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=30) == -signal.SIGTERM


def test_a_dead_zygote_s_children_end_as_failed_and_it_forks_no_more(zygote: Zygote, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child: ForkedChild = zygote.fork(["sleep", "1.5"], env, str(tmp_path))
    os.kill(zygote.pid, signal.SIGKILL)
    zygote.process.wait(timeout=30)
    assert child.poll() is None  # still running, now an orphan
    assert child.wait(timeout=30) == STATUS_UNKNOWN  # seen to end through its pidfd; how, nobody knows
    assert local.attempt_status(child.returncode) == "failed"
    with pytest.raises(ZygoteError):
        zygote.fork(["exit", "0"], env, str(tmp_path))


def test_a_zygote_that_cannot_warm_up_means_exec(monkeypatch, tmp_path: Path, caplog) -> None:
    monkeypatch.setattr(local, "ZYGOTE_WARM", "tests.test_zygote:no_such_function")
    spec = tmp_path / "missing-spec.json"
    with local.ShardStarter({**os.environ, "PYTHONPATH": str(REPO_ROOT)}) as starter:
        zygote_pid = starter.zygote_pid
        child = starter.start(spec)
        assert isinstance(child, local.ExecChild)
        assert child.wait(timeout=60) != 0  # refwatch _shard of a missing spec: bad input
        assert starter.zygote_pid is None
    assert "exec'ing them from now on" in caplog.text and "warm-up failed" in caplog.text
    assert zygote_pid is not None and not Path(f"/proc/{zygote_pid}").exists()


def test_exec_when_asked(tmp_path: Path) -> None:
    with local.ShardStarter({**os.environ, local.SHARD_START_ENV: "exec"}) as starter:
        assert starter.zygote_pid is None
        child = starter.start(tmp_path / "missing-spec.json")
        assert isinstance(child, local.ExecChild) and child.wait(timeout=60) != 0
        assert child.cpu_seconds is not None


# --- refwatch crawl --processes 2, forked against exec'd --------------------------------------------------


def _crawl(snapshot: Path, out: Path, run_id: str, *extra: str, env: dict[str, str] | None = None,
           on_tick=None, timeout: float = 240) -> tuple[subprocess.CompletedProcess[str], dict[int, tuple[int, str]]]:
    """``refwatch crawl`` in its own session (so that all it started can be killed), watching its process tree."""
    cmd = [sys.executable, "-m", "crawler.cli.main", "crawl", str(snapshot), "--out", str(out), "--run-id", run_id,
           "--allow-private-networks", "--json", "--no-progress", "--processes", "2", *extra]
    parent = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **(env or {})}, start_new_session=True)
    seen: dict[int, tuple[int, str]] = {}
    try:
        deadline = time.monotonic() + timeout
        while parent.poll() is None and time.monotonic() < deadline:
            tree = process_tree(parent.pid)
            seen.update(tree)
            if on_tick is not None:
                on_tick(parent.pid, tree)
            time.sleep(0.05)
        out_text, err_text = parent.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)  # the parent, its zygote and children, if any is left
        except ProcessLookupError:
            pass
        if parent.poll() is None:
            parent.wait()
    return subprocess.CompletedProcess(cmd, parent.returncode, out_text, err_text), seen


def test_forked_children_give_the_rows_exec_d_children_give(web, tmp_path: Path) -> None:
    snapshot = _snapshot(web, tmp_path / "snap.parquet", 60)
    forked, forked_tree = _crawl(snapshot, tmp_path / "out", "forked", "--shard-size", "16")
    assert forked.returncode == 0, forked.stderr[-2000:]
    execd, exec_tree = _crawl(snapshot, tmp_path / "out", "execd", "--shard-size", "16",
                              env={local.SHARD_START_ENV: "exec"})
    assert execd.returncode == 0, execd.stderr[-2000:]
    # who started the shard children: a zygote, child of the parent, or the parent itself
    # (a child just forked bears the zygote's name until it renames itself: the zygote is the one whose parent is not)
    zygotes = {pid for pid, (ppid, name) in forked_tree.items()
               if name == "refwatch-zygote" and forked_tree.get(ppid, (0, ""))[1] != "refwatch-zygote"}
    assert len(zygotes) == 1
    assert {forked_tree[pid][0] for pid, (_, name) in forked_tree.items() if name.startswith("refwatch s")} == zygotes
    assert not any(name == "refwatch-zygote" for _, name in exec_tree.values())
    summary_forked, summary_execd = json.loads(forked.stdout), json.loads(execd.stdout)
    assert summary_forked["outcomes"] == summary_execd["outcomes"] and summary_forked["references"] == 60
    assert summary_forked["shards"] == summary_execd["shards"] == 4
    rows_forked, rows_execd = _rows(tmp_path / "out" / "runs" / "forked"), _rows(tmp_path / "out" / "runs" / "execd")
    for column in ("ref_id", "url", "outcome", "http_status", "md5", "sha1", "phash", "dhash", "pdq", "redirects",
                   "width", "height"):
        assert rows_forked.column(column).to_pylist() == rows_execd.column(column).to_pylist(), column


def test_a_sigkilled_forked_child_is_retried(web, tmp_path: Path) -> None:
    urls = [web.url(f"/slow/0.3?i={i}") if i % 4 == 0 else web.url(f"/img/{i}.jpg") for i in range(48)]
    snapshot = _parquet(tmp_path / "slow.parquet", urls, row_group_size=8)
    run_dir = tmp_path / "out" / "runs" / "killed"
    killed: list[tuple[int, str]] = []

    def kill_one_mid_shard(parent: int, tree: dict[int, tuple[int, str]]) -> None:
        if killed:
            return
        for pid, name in shard_children(parent).items():
            folder = run_dir / "shards" / name.removeprefix("refwatch ")
            if not (folder / "commit.json").exists() and any(folder.glob("a*/part-*.parquet")):
                killed.append((pid, tree[pid][1]))
                os.kill(pid, signal.SIGKILL)
                return

    result, tree = _crawl(snapshot, tmp_path / "out", "killed", "--shard-size", "12", "--concurrency", "2",
                          "--per-host", "2", "-s", "REFWATCH_OUTCOMES_BATCH_ROWS=2", on_tick=kill_one_mid_shard)
    assert killed, "no shard child was seen crawling"
    assert tree[killed[0][0]][0] in {pid for pid, (_, name) in tree.items() if name == "refwatch-zygote"}
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trying again" in result.stderr and "exit -9" in result.stderr
    assert sorted(_rows(run_dir).column("ref_id").to_pylist(), key=int) == [str(i) for i in range(48)]


def test_a_killed_zygote_falls_back_to_exec_d_children(web, tmp_path: Path) -> None:
    urls = [web.url(f"/slow/0.3?i={i}") if i % 4 == 0 else web.url(f"/img/{i}.jpg") for i in range(48)]
    snapshot = _parquet(tmp_path / "slow.parquet", urls, row_group_size=8)
    killed: list[int] = []

    def kill_the_zygote(parent: int, tree: dict[int, tuple[int, str]]) -> None:
        # it has forked: a child runs, renamed, in this tick's tree (which the test's record holds: a fresh scan
        # could see a child renamed that the record holds under the zygote's name, and once the zygote is killed
        # its children are no longer the parent's descendants, so the record would never see them renamed)
        if not killed and any(name.startswith("refwatch s") for _, name in tree.values()):
            # the parent's child: a child it has just forked bears the zygote's name until it renames itself
            zygote = next(pid for pid, (ppid, name) in tree.items() if name == "refwatch-zygote" and ppid == parent)
            killed.append(zygote)
            os.kill(zygote, signal.SIGKILL)

    result, tree = _crawl(snapshot, tmp_path / "out", "nozygote", "--shard-size", "8", "--concurrency", "2",
                          "--per-host", "2", on_tick=kill_the_zygote)
    assert killed
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exec'ing them from now on" in result.stderr
    parents = {tree[pid][0] for pid, (_, name) in tree.items() if name.startswith("refwatch s")}
    assert killed[0] in parents and any(pid not in killed for pid in parents)  # forked, then exec'd
    summary = json.loads(result.stdout)
    assert summary["references"] == 48 and summary["shards"] == 6
    assert sorted(_rows(tmp_path / "out" / "runs" / "nozygote").column("ref_id").to_pylist(), key=int) == [
        str(i) for i in range(48)]


def test_a_starter_is_not_ready_while_its_zygote_imports() -> None:
    """The Redis worker claims a shard only when a child can start at once (a claim's lease runs meanwhile)."""
    with local.ShardStarter({**os.environ, "PYTHONPATH": str(REPO_ROOT)}) as starter:
        assert not starter.ready()  # the imports take seconds
        deadline = time.monotonic() + 120
        while not starter.ready() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert starter.ready() and starter.zygote_pid is not None
    with local.ShardStarter({**os.environ, local.SHARD_START_ENV: "exec"}) as starter:
        assert starter.ready()
