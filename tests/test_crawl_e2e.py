"""End to end: the real ``refwatch crawl`` against the sample web on loopback.

One crawl replays a snapshot holding every outcome loopback can produce; the tests then read its outcomes
dataset, summary, log, queue and /metrics scrapes. Everything runs on 127.0.0.1 and every server is
stopped by its fixture.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from crawler.hashing.digest import hash_bytes
from crawler.sample.web import SampleWeb
from tests.helpers import REPO_ROOT, free_port, run_refwatch

LISTED_SEED = 3
MAX_BYTES = 200_000


def _cases(web: SampleWeb, closed_port: int) -> list[tuple[str, str, str]]:
    """(ref id, url, expected outcome) for the main crawl."""
    u = web.url
    return [
        ("ok-jpg", u("/img/1.jpg"), "ok"),
        ("ok-png", u("/img/2.png"), "ok"),
        ("ok-webp", u("/img/4.webp"), "ok"),
        ("ok-gif", u("/img/5.gif"), "ok"),
        ("listed-exact", u(f"/img/{LISTED_SEED}.jpg"), "ok"),
        ("listed-resized", u(f"/variant/{LISTED_SEED}/resized.jpg"), "ok"),
        ("listed-png", u(f"/variant/{LISTED_SEED}/png.jpg"), "ok"),
        ("dup-a", u("/img/6.jpg"), "ok"),
        ("dup-b", u("/img/6.jpg"), "ok"),
        ("redirect", u("/redirect/2?to=/img/8.jpg"), "ok"),
        ("redirect-loop", u("/redirect/9?to=/img/8.jpg"), "too_many_redirects"),
        ("xrobots", u("/xrobots/9.jpg"), "ok"),
        ("flaky", u("/flaky/e2e/10.jpg"), "ok"),
        ("ratelimit", u("/ratelimit/e2e/11.jpg"), "ok"),
        ("not-found", u("/status/404"), "not_found"),
        ("gone", u("/status/410"), "gone"),
        ("forbidden-401", u("/status/401"), "forbidden"),
        ("forbidden-403", u("/status/403"), "forbidden"),
        ("forbidden-451", u("/status/451"), "forbidden"),
        ("teapot", u("/status/418"), "http_error"),
        ("server-error", u("/status/500"), "server_error"),
        ("not-image", u("/page.html"), "not_image"),
        ("decode-error", u("/garbage.jpg"), "decode_error"),
        ("too-large", u(f"/big/{MAX_BYTES * 2}"), "too_large"),
        ("gzip-bomb", u(f"/gzipbomb/{MAX_BYTES * 50}"), "too_large"),
        ("timeout", u("/slow/25"), "timeout"),  # longer than all three attempts together
        ("refused", f"http://127.0.0.1:{closed_port}/img/1.jpg", "connection_error"),
        ("truncated", u("/truncated.jpg"), "connection_error"),
        ("reset", u("/reset"), "connection_error"),
        ("tls", u("/img/1.jpg").replace("http://", "https://"), "tls_error"),
        ("invalid", "not a url", "invalid_url"),
        ("invalid-scheme", "ftp://127.0.0.1/x.jpg", "invalid_url"),
        ("robots-not-consulted", u("/private/12.jpg"), "ok"),
    ]


@dataclass
class Run:
    out: Path
    run_id: str
    rows: dict[str, dict[str, Any]]
    summary: dict[str, Any]
    log: str
    proc: subprocess.CompletedProcess[str]
    scrapes: list[str]
    tmpdir: Path
    cases: list[tuple[str, str, str]]
    hashlist: Path


def write_snapshot(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "URL", "caption"])
        for ref_id, url in rows:
            writer.writerow([ref_id, url, f"caption of {ref_id}"])
    return path


def write_hashlist(path: Path, web: SampleWeb) -> Path:
    digest = hash_bytes(web.image_bytes(LISTED_SEED))
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["algorithm", "hash", "id", "label"])
        writer.writerow(["md5", digest.md5, "e-md5", "synthetic"])
        writer.writerow(["phash", digest.phash, "e-phash", "synthetic"])
        writer.writerow(["pdq", digest.pdq, "e-pdq", "synthetic"])
    return path


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for part in sorted((run_dir / "outcomes").glob("part-*.parquet")):
        rows.extend(pq.read_table(part).to_pylist())
    return rows


def crawl_in_background(args: list[str], tmpdir: Path, log: Path) -> subprocess.Popen[str]:
    """The crawl as a child process; its log goes to a file (a full pipe would stall the child)."""
    import os

    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    with log.open("w") as log_file:
        return subprocess.Popen([sys.executable, "-m", "crawler.cli.main", *args], stdout=subprocess.PIPE,
                                stderr=log_file, text=True, env=env, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def run(web: SampleWeb, tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("e2e")
    out, tmpdir = base / "out", base / "tmp"
    tmpdir.mkdir()
    cases = _cases(web, free_port())
    snapshot = write_snapshot(base / "snapshot.csv", [(ref_id, url) for ref_id, url, _ in cases])
    hashlist = write_hashlist(base / "known.csv", web)
    metrics_port = free_port()
    log = base / "crawl.log"
    args = [
        "crawl", str(snapshot), "--hashlist", f"known={hashlist}", "--out", str(out), "--run-id", "e2e",
        "--allow-private-networks", "--timeout", "2", "--retries", "2", "--max-bytes", str(MAX_BYTES),
        "--metrics-port", str(metrics_port), "--metrics-address", "127.0.0.1", "--json",
        "--log-level", "DEBUG",
    ]
    proc = crawl_in_background(args + ["--no-progress"], tmpdir, log)
    scrapes: list[str] = []
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as answer:
                scrapes.append(answer.read().decode())
        except OSError:
            pass
        time.sleep(0.2)
    stdout, _ = proc.communicate(timeout=60)
    stderr = log.read_text()
    completed = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert proc.returncode == 0, stderr[-3000:]
    run_dir = out / "runs" / "e2e"
    rows = {row["ref_id"]: row for row in read_rows(run_dir)}
    summary = json.loads((run_dir / "summary.json").read_text())
    return Run(out, "e2e", rows, summary, stderr, completed, scrapes, tmpdir, cases, hashlist)


def test_every_reference_gets_exactly_one_row(run: Run) -> None:
    all_rows = read_rows(run.out / "runs" / "e2e")
    assert len(all_rows) == len(run.cases)
    assert sorted(r["ref_id"] for r in all_rows) == sorted(ref_id for ref_id, _, _ in run.cases)


def test_each_outcome(run: Run) -> None:
    got = {ref_id: run.rows[ref_id]["outcome"] for ref_id, _, _ in run.cases}
    expected = {ref_id: outcome for ref_id, _, outcome in run.cases}
    assert got == expected


def test_rows_carry_the_reference_and_answer(run: Run, web: SampleWeb) -> None:
    row = run.rows["ok-jpg"]
    assert row["url"] == web.url("/img/1.jpg")
    assert row["alt"] == "caption of ok-jpg"
    assert row["http_status"] == 200
    assert row["content_type"] == "image/jpeg"
    assert row["run_id"] == "e2e"
    digest = hash_bytes(web.image_bytes(1))
    assert (row["md5"], row["sha256"], row["phash"], row["dhash"], row["pdq"]) == (
        digest.md5, digest.sha256, digest.phash, digest.dhash, digest.pdq)
    assert (row["width"], row["height"], row["bytes"]) == (256, 256, len(web.image_bytes(1)))
    assert row["pdq_quality"] >= 50
    assert row["drift"] == "unknown"
    assert row["fetched_at"] is not None and row["elapsed_ms"] > 0
    assert run.rows["invalid"]["url"] == "not a url"
    assert run.rows["not-found"]["http_status"] == 404
    assert run.rows["server-error"]["http_status"] == 500


def test_redirects_record_final_url(run: Run, web: SampleWeb) -> None:
    row = run.rows["redirect"]
    assert row["final_url"] == web.url("/img/8.jpg")
    assert row["redirects"] == 2
    assert row["md5"] == hash_bytes(web.image_bytes(8)).md5


def test_x_robots_tag_is_recorded(run: Run) -> None:
    assert run.rows["xrobots"]["x_robots_tag"] == "noai, noimageai"
    assert run.rows["ok-jpg"]["x_robots_tag"] is None


def test_transient_failures_are_retried_and_429_backs_off(run: Run, web: SampleWeb) -> None:
    assert web.hits["/flaky/e2e/10.jpg"] == 2
    assert web.hits["/ratelimit/e2e/11.jpg"] == 2
    # Two retries (--retries 2), then server_error. A request that lands on a keep-alive connection the
    # server has just closed is retried too and uses up one of them, so 2 hits are possible as well.
    assert web.hits["/status/500"] in (2, 3)
    assert run.rows["server-error"]["http_status"] == 500
    assert web.hits["/status/404"] == 1  # permanent answers are not retried
    assert run.summary["backoffs"] == 2  # the 503 and the 429 each backed their host off


def test_matches_and_events(run: Run) -> None:
    assert run.rows["listed-exact"]["matched"] is True
    assert run.rows["listed-resized"]["matched"] is True
    assert run.rows["listed-png"]["matched"] is True
    unrelated = [r for r in run.rows.values() if not r["ref_id"].startswith("listed-")]
    assert not any(r["matched"] for r in unrelated)
    assert run.summary["matches"]["known"]["md5"] == 1
    assert run.summary["matched_references"] == 3
    drained = run_refwatch("queue", "drain", "--queue", f"file://{run.out}/queue", "--json")
    assert drained.returncode == 0, drained.stderr
    events = [json.loads(line) for line in drained.stdout.splitlines()]
    assert len(events) == run.summary["events_published"]
    exact = [e for e in events if e["ref_id"] == "listed-exact"]
    assert {e["algorithm"] for e in exact} == {"md5", "phash", "pdq"}
    assert all(e["distance"] == 0 for e in exact)
    assert set(events[0]) >= {"event_id", "run_id", "ref_id", "url", "page_url", "list", "entry_id", "label",
                              "algorithm", "distance", "observed_hash", "matched_hash", "detected_at"}
    assert len({e["event_id"] for e in events}) == len(events)
    again = run_refwatch("queue", "drain", "--queue", f"file://{run.out}/queue", "--json")
    assert again.stdout == ""  # acknowledged events are gone


def test_summary_counts_agree_with_rows(run: Run) -> None:
    counts: dict[str, int] = {}
    for row in run.rows.values():
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    assert {k: v for k, v in run.summary["outcomes"].items() if v} == counts
    assert run.summary["references"] == len(run.cases)
    assert run.summary["refs_per_second"] > 0


def test_no_hash_list_content_or_matched_url_logged_above_debug(run: Run, web: SampleWeb) -> None:
    listed = hash_bytes(web.image_bytes(LISTED_SEED))
    records = log_records(run.log)
    assert any(" INFO: match: run e2e ref listed-exact list known" in r for r in records)
    for record in records:
        if " DEBUG: " in record.split("\n", 1)[0]:
            continue
        assert listed.md5 not in record and listed.pdq not in record and listed.phash not in record, record
        assert f"/img/{LISTED_SEED}.jpg" not in record, record


def log_records(log: str) -> list[str]:
    """Scrapy log lines grouped into records: continuation lines belong to the record above them."""
    records: list[str] = []
    for line in log.splitlines():
        if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[", line) or not records:
            records.append(line)
        else:
            records[-1] += "\n" + line
    return records


def test_fetched_bytes_never_persist(run: Run, web: SampleWeb) -> None:
    """The never-on-disk property: no served image's bytes in the outputs, the log, or the temp dir."""
    needles = []
    for seed, fmt in [(1, "JPEG"), (LISTED_SEED, "JPEG"), (2, "PNG"), (8, "JPEG")]:
        body = web.image_bytes(seed, fmt)
        middle = len(body) // 2
        needles.append(body[middle: middle + 48])
    haystacks = [p for p in run.out.rglob("*") if p.is_file()] + [p for p in run.tmpdir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in haystacks)
    for path in haystacks:
        data = path.read_bytes()
        # Parquet pages are compressed: look inside the decoded columns too.
        if path.suffix == ".parquet":
            data += json.dumps(pq.read_table(path).to_pylist(), default=str).encode()
        for needle in needles:
            assert needle not in data, f"image bytes found in {path}"
    for text in (run.proc.stdout, run.log):
        for needle in needles:
            assert needle.decode("latin-1") not in text
            assert needle.hex() not in text


def test_metrics_were_served_and_pass_promtool(run: Run, tmp_path: Path) -> None:
    import shutil

    assert run.scrapes, "no /metrics scrape succeeded while the crawl ran"
    text = run.scrapes[-1]
    assert 'refwatch_fetches_total{outcome="ok"}' in text
    assert "refwatch_fetch_duration_seconds_bucket" in text
    assert "refwatch_hash_duration_seconds_count" in text
    assert "refwatch_inflight_requests" in text
    assert "127.0.0.1" not in text and "/img/" not in text  # no URL or host in any label
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run ./setup.sh (Debian package 'prometheus')"
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_redo_with_same_run_id_overwrites_and_republishes_the_same_ids(run: Run, web: SampleWeb,
                                                                       tmp_path: Path) -> None:
    snapshot = write_snapshot(tmp_path / "small.csv", [("listed-exact", web.url(f"/img/{LISTED_SEED}.jpg")),
                                                       ("ok-jpg", web.url("/img/1.jpg"))])
    queue = f"file://{tmp_path}/queue"
    args = ["crawl", str(snapshot), "--hashlist", f"known={run.hashlist}", "--out", str(tmp_path / "out"),
            "--queue", queue, "--run-id", "redo", "--allow-private-networks", "--json", "--no-progress"]
    first = run_refwatch(*args)
    assert first.returncode == 0, first.stderr
    second = run_refwatch(*args)
    assert second.returncode == 0, second.stderr
    rows = read_rows(tmp_path / "out" / "runs" / "redo")
    assert sorted(r["ref_id"] for r in rows) == ["listed-exact", "ok-jpg"]
    drained = run_refwatch("queue", "drain", "--queue", queue, "--json")
    events = [json.loads(line) for line in drained.stdout.splitlines()]
    # The redo republishes the same deterministic ids (delivery is at least once; consumers dedupe by id).
    assert len(events) == 6 and len({e["event_id"] for e in events}) == 3
