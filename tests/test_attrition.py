"""Attrition, crawl side: run manifests and series, drift, placeholders, registrable domains; and three real
crawls of one snapshot against a sample web that changes between them (epochs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from crawler.runs import drift
from crawler.domains import registrable_domain, url_domain
from crawler.runs.history import Manifest, SnapshotFile, describe_snapshots, read_manifest, series_id, series_runs, write_manifest
from crawler.runs.placeholders import KnownPlaceholders, PlaceholderListError, PlaceholderRules, detect, read_known
from crawler.sample.web import SampleWeb
from tests.helpers import run_refwatch
from tests.test_crawl_e2e import read_rows, write_snapshot


# --- drift -----------------------------------------------------------------------------------------------
def test_drift_words() -> None:
    alive = np.array([1, 1, 1, 1, 1, 1, 0, 1, 1], bool)
    md5 = pa.array(["a", "b", "c", "d", "e", None, None, "f", "g"])
    phash = pa.array(["0" * 16, "00000000000000ff", "f" * 16, None, "0" * 15 + "1", None, None, "0" * 16, "0" * 16])
    base_md5 = pa.array(["A", "x", "x", "x", None, None, "q", None, "h"])
    base_phash = pa.array([None, "0" * 16, "0" * 16, "0" * 16, None, None, None, None, "00000000000001ff"])
    seen = np.array([0, 0, 0, 0, 1, 0, 0, 0, 0], bool)
    words = drift.classify(alive, md5, phash, base_md5, base_phash, seen, radius=8).to_pylist()
    assert words == [
        "same",  # md5 equal, case aside
        "near",  # 8 bits apart: at the radius
        "changed",  # 64 bits apart
        "unknown",  # md5 differs, no pHash now: cannot tell a re-encode from another image
        "new",  # no baseline, but seen before
        "unknown",  # no baseline, never seen (first run)
        None,  # not alive
        "unknown",
        "changed",  # 9 bits apart: past the radius
    ]


# --- placeholders --------------------------------------------------------------------------------------------
def _rows(**columns: list) -> pa.Table:
    n = len(columns["url"])
    defaults = {"domain": [url_domain(u) for u in columns["url"]], "outcome": ["ok"] * n, "md5": [None] * n,
                "phash": [None] * n, "final_url": columns["url"], "matched": [False] * n}
    return pa.table({**defaults, **columns})


def test_placeholders_by_shared_content_redirect_target_and_known_list() -> None:
    urls = [f"http://img{i}.host.example/{i}.jpg" for i in range(4)] + [
        "http://x.org/a.jpg", "http://x.org/b.jpg", "http://x.org/c.jpg",  # redirected to one picture
        "http://y.org/1.jpg", "http://y.org/2.jpg", "http://y.org/3.jpg",  # one content, one matched
        "http://i.imgur.com/gone.jpg",  # the known Imgur placeholder
        "http://z.org/1.jpg", "http://w.org/1.jpg", "http://v.org/1.jpg",  # same content, different domains
    ]
    md5 = ["p"] * 4 + ["1", "2", "3", "y", "y", "y", "9", "z", "z", "z"]
    final = urls[:4] + ["http://x.org/removed.png"] * 3 + urls[7:10] + ["https://i.imgur.com/removed.png"] + urls[11:]
    matched = [False] * 9 + [True] + [False] * 4
    rules = PlaceholderRules(known=read_known(), min_urls=3, min_redirects=3)
    mask, reasons = detect(_rows(url=urls, md5=md5, final_url=final, matched=matched), rules)
    assert reasons.to_pylist() == ["same_content"] * 4 + ["same_redirect_target"] * 3 + [None] * 3 + [
        "known_url"] + [None] * 3
    assert mask.tolist() == [r is not None for r in reasons.to_pylist()]


def test_placeholders_leave_dead_and_matched_rows_alone() -> None:
    urls = [f"http://a.example/{i}.jpg" for i in range(5)]
    rows = _rows(url=urls, md5=["same"] * 5, outcome=["ok", "ok", "not_found", "ok", "ok"],
                 matched=[False, False, False, True, True])
    mask, _ = detect(rows, PlaceholderRules(min_urls=2, min_redirects=2))
    assert mask.tolist() == [True, True, False, False, False]
    mask, _ = detect(rows, PlaceholderRules(min_urls=3, min_redirects=3))
    assert not mask.any()  # only two eligible rows share the content


def test_known_placeholder_list_format(tmp_path: Path) -> None:
    good = tmp_path / "mine.csv"
    good.write_text("# mine\nmd5," + "A" * 32 + ",note\nfinal_url,https://cdn.example/gone.gif\n"
                    "domain_path,example.net /missing.jpg\nphash," + "0" * 16 + "\n", encoding="utf-8")
    known = read_known(good)
    assert known == KnownPlaceholders(frozenset({"https://cdn.example/gone.gif"}),
                                      frozenset({("example.net", "/missing.jpg")}), frozenset({"a" * 32}),
                                      frozenset({"0" * 16}))
    assert ("imgur.com", "/removed.png") in read_known().domain_paths
    bad = tmp_path / "bad.csv"
    bad.write_text("md5,abc\n", encoding="utf-8")
    with pytest.raises(PlaceholderListError, match=r"bad\.csv:1: not a 32-hex-digit md5"):
        read_known(bad)
    bad.write_text("\n\ncolour,red\n", encoding="utf-8")
    with pytest.raises(PlaceholderListError, match=r"bad\.csv:3: expected KIND,VALUE"):
        read_known(bad)


# --- domains and series ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("host", "domain"), [
    ("i.imgur.com", "imgur.com"), ("FARM1.staticflickr.com.", "staticflickr.com"), ("x.bar.co.uk", "bar.co.uk"),
    ("a.b.github.io", "b.github.io"), ("127.0.0.1", "127.0.0.1"), ("localhost", "localhost"), ("", None),
])
def test_registrable_domain(host: str, domain: str | None) -> None:
    assert registrable_domain(host) == domain


def test_series_is_the_snapshot_content_not_its_name(tmp_path: Path) -> None:
    a = tmp_path / "a.csv"
    a.write_text("url\nhttp://x/1.jpg\n", encoding="utf-8")
    b = tmp_path / "copy-elsewhere.csv"
    shutil.copy(a, b)
    assert series_id(describe_snapshots([a])) == series_id(describe_snapshots([b]))
    b.write_text("url\nhttp://x/2.jpg\n", encoding="utf-8")
    assert series_id(describe_snapshots([a])) != series_id(describe_snapshots([b]))

    out = tmp_path / "out"
    for run_id, started, status in [("r2", "2026-01-02T00:00:00Z", "finished"), ("r1", "2026-01-01T00:00:00Z",
                                    "finished"), ("r3", "2026-01-03T00:00:00Z", "running")]:
        write_manifest(out / "runs" / run_id, Manifest(run_id, "s1", [SnapshotFile("a", 1, "x")], started,
                                                       status=status))
    write_manifest(out / "runs" / "other", Manifest("other", "s2", [], "2026-01-01T00:00:00Z", status="finished"))
    assert [m.run_id for m in series_runs(out, "s1")] == ["r1", "r2"]
    assert [m.run_id for m in series_runs(out, "s1", finished_only=False)] == ["r1", "r2", "r3"]
    assert [m.run_id for m in series_runs(out, "s1", before="r2")] == ["r1"]
    assert read_manifest(out / "runs" / "r3").status == "running"


# --- three crawls of one snapshot, the web changing between them ---------------------------------------------
PLANS = {
    "same": "img,img,img",
    "near": "img,near,near",
    "changed": "img,other,other",
    "late": "404,img,img",
    "comeback": "img,404,img",
}


def test_drift_and_placeholders_over_three_runs(web: SampleWeb, tmp_path: Path) -> None:
    refs = [(name, web.url(f"/epoch/{name}/{seed}.jpg?plan={plan}")) for seed, (name, plan) in
            enumerate(PLANS.items(), 1)]
    removed = [f"removed{i}" for i in range(20)]  # REFWATCH_PLACEHOLDER_MIN_REDIRECTS: 20 by default
    refs += [(name, web.url(f"/epoch/{name}/{50 + i}.jpg?plan=img,removed,removed")) for i, name in enumerate(removed)]
    snapshot = write_snapshot(tmp_path / "s.csv", refs)
    out = tmp_path / "out"
    runs = {}
    for epoch in range(3):
        web.epoch = epoch
        done = run_refwatch("crawl", str(snapshot), "--out", str(out), "--run-id", f"run{epoch}", "--json",
                            "--no-progress", "--allow-private-networks", "--timeout", "5",
                            "-s", "REFWATCH_OUTCOMES_BATCH_ROWS=5")  # 5 small parts while crawling...
        assert done.returncode == 0, done.stderr[-3000:]
        outcomes = out / "runs" / f"run{epoch}" / "outcomes"
        assert sorted(p.name for p in outcomes.iterdir()) == ["part-f00000.parquet"]  # ...one when it ends
        runs[epoch] = {row["ref_id"]: row for row in read_rows(out / "runs" / f"run{epoch}")}
        manifest = json.loads((out / "runs" / f"run{epoch}" / "manifest.json").read_text())
        assert manifest["status"] == "finished" and manifest["finished_at"] >= manifest["started_at"]
        summary = json.loads(done.stdout)
        assert summary["outcomes"]["placeholder"] == (20 if epoch else 0)
    web.epoch = 0
    series = {json.loads((out / "runs" / f"run{e}" / "manifest.json").read_text())["series"] for e in range(3)}
    assert len(series) == 1

    def words(epoch: int) -> dict[str, str | None]:
        return {ref: row["drift"] for ref, row in runs[epoch].items()}

    assert words(0) == {**dict.fromkeys(PLANS, "unknown"), "late": None,
                        **dict.fromkeys(removed, "unknown")}
    assert words(1) == {"same": "same", "near": "near", "changed": "changed", "late": "new", "comeback": None,
                        **dict.fromkeys(removed, None)}
    assert words(2)["comeback"] == "same"  # against run0, the last run in which it was alive
    assert words(2)["changed"] == "same"  # against run1's other image
    for name in removed:
        row = runs[1][name]
        assert (row["outcome"], row["placeholder_reason"]) == ("placeholder", "same_redirect_target")
        assert row["final_url"].endswith("/removed.png")
    assert {row["domain"] for row in runs[0].values()} == {"127.0.0.1"}


def test_recheck_replays_only_what_failed_and_carries_the_rest(web: SampleWeb, tmp_path: Path) -> None:
    refs = [("fine", web.url("/epoch/fine/71.jpg?plan=img,404")),  # would die, but is not re-checked
            ("back", web.url("/epoch/back/72.jpg?plan=404,img")),  # dead, then back
            ("still", web.url("/epoch/still/73.jpg?plan=404,404")),
            ("slow", web.url("/status/503"))]  # failed but not dead: left out by --only dead
    snapshot = write_snapshot(tmp_path / "s.csv", refs)
    out = tmp_path / "out"
    common = ("--out", str(out), "--json", "--no-progress", "--allow-private-networks", "--timeout", "5",
              "--retries", "0")
    web.epoch = 0
    first = run_refwatch("crawl", str(snapshot), "--run-id", "full", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    web.epoch = 1
    before = dict(web.hits)
    textfile = tmp_path / "node" / "refwatch.prom"
    textfile.parent.mkdir()
    again = run_refwatch("crawl", "--recheck", "full", "--only", "dead", "--run-id", "re", *common,
                         "--metrics-textfile", str(textfile))
    web.epoch = 0
    assert again.returncode == 0, again.stderr[-3000:]
    fetched = {path for path, count in web.hits.items() if count > before.get(path, 0)}
    assert fetched == {"/epoch/back/72.jpg", "/epoch/still/73.jpg"}  # the snapshot came from the manifest
    rows = {row["ref_id"]: row for row in read_rows(out / "runs" / "re")}
    assert {ref: (row["outcome"], row["carried_from"]) for ref, row in rows.items()} == {
        "back": ("ok", None), "still": ("not_found", None), "fine": ("ok", "full"), "slow": ("server_error", "full")}
    assert rows["back"]["drift"] == "new" and {row["run_id"] for row in rows.values()} == {"re"}
    manifest = json.loads((out / "runs" / "re" / "manifest.json").read_text())
    assert (manifest["recheck_of"], manifest["only"]) == ("full", ["dead"])
    gauges = textfile.read_text()
    assert f'refwatch_run_drift{{drift="new",series="{manifest["series"]}"}} 1.0' in gauges
    assert json.loads(again.stdout)["carried_rows"] == 2

    other = write_snapshot(tmp_path / "other.csv", refs[:1])
    refused = run_refwatch("crawl", str(other), "--recheck", "full", "--run-id", "x", *common)
    assert refused.returncode == 2 and "not the one run full replayed" in refused.stderr
    unknown = run_refwatch("crawl", "--recheck", "nope", "--run-id", "y", *common)
    assert unknown.returncode == 2 and "no finished run 'nope'" in unknown.stderr


def test_recorded_hashes_are_matched_too(web: SampleWeb, tmp_path: Path) -> None:
    """The snapshot's recorded md5 is matched like a live hash: events with source "recorded", and the run says
    which references matched from live bytes, from the recorded hash only, or both."""
    import csv

    from crawler.hashing.digest import hash_bytes
    from tests.test_crawl_e2e import LISTED_SEED, write_hashlist

    listed_md5 = hash_bytes(web.image_bytes(LISTED_SEED)).md5
    snapshot = tmp_path / "s.csv"
    with snapshot.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "url", "md5"])
        writer.writerow(["both", web.url(f"/img/{LISTED_SEED}.jpg"), listed_md5])
        writer.writerow(["recorded-only", web.url("/status/404"), listed_md5])
        writer.writerow(["live-only", web.url(f"/img/{LISTED_SEED}.jpg"), ""])
        writer.writerow(["neither", web.url("/img/5.jpg"), "0" * 32])
    hashlist = write_hashlist(tmp_path / "known.csv", web)
    out = tmp_path / "out"
    done = run_refwatch("crawl", str(snapshot), "--hashlist", f"known={hashlist}", "--out", str(out),
                        "--run-id", "r", "--json", "--no-progress", "--allow-private-networks")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["match_sources"] == {"live_only": 1, "recorded_only": 1, "both": 1}
    assert summary["recorded_matches"] == {"known": {"md5": 2}}
    rows = {row["ref_id"]: row for row in read_rows(out / "runs" / "r")}
    assert {ref: (row["matched"], row["recorded_matched"]) for ref, row in rows.items()} == {
        "both": (True, True), "recorded-only": (False, True), "live-only": (True, False), "neither": (False, False)}
    drained = run_refwatch("queue", "drain", "--queue", f"file://{out}/queue", "--json")
    events = [json.loads(line) for line in drained.stdout.splitlines()]
    recorded = sorted(e["ref_id"] for e in events if e["source"] == "recorded")
    assert recorded == ["both", "recorded-only"]
    assert all(e["algorithm"] == "md5" and e["observed_hash"] == listed_md5 for e in events if e["source"] == "recorded")
    assert len({e["event_id"] for e in events}) == len(events)


def test_outputs_on_s3(web: SampleWeb, s3_server, tmp_path: Path) -> None:
    """``--out s3://BUCKET/PREFIX``: the run's parts, manifest and summary land in S3 (the queue beside them by
    default); a second run on another machine (another staging folder) finds the first and computes drift;
    a redo with the same run id leaves no stale part."""
    bucket = s3_server.new_bucket()
    out = f"s3://{bucket}/audits/laion"
    refs = [("a", web.url("/epoch/s3a/81.jpg?plan=img,near")), ("b", web.url("/epoch/s3b/82.jpg?plan=img,img"))]
    snapshot = write_snapshot(tmp_path / "s.csv", refs)

    def crawl(run_id: str, staging: str, *extra: str):
        done = run_refwatch("crawl", str(snapshot), "--out", out, "--run-id", run_id, "--s3-endpoint-url",
                            s3_server.endpoint, "--json", "--no-progress", "--allow-private-networks",
                            "-s", f"REFWATCH_STAGING_DIR={tmp_path / staging}", *extra)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    def keys() -> list[str]:
        listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="audits/laion/runs/")
        return sorted(o["Key"][len("audits/laion/"):] for o in listed.get("Contents", []))

    web.epoch = 0
    # parts of one row, uploaded as written; at the end the run is one final part of two, the small ones go
    crawl("one", "machine-a", "-s", "REFWATCH_OUTCOMES_BATCH_ROWS=1", "-s", "REFWATCH_FINAL_PART_ROWS=2")
    assert keys() == ["runs/one/manifest.json", "runs/one/outcomes/part-f00000.parquet", "runs/one/summary.json"]
    crawl("one", "machine-a", "-s", "REFWATCH_FINAL_PART_ROWS=1")  # a redo: two final parts replace the one
    assert keys() == ["runs/one/manifest.json", "runs/one/outcomes/part-f00000.parquet",
                      "runs/one/outcomes/part-f00001.parquet", "runs/one/summary.json"]
    crawl("one", "machine-a")  # and again: part-f00001 is stale and goes
    assert keys() == ["runs/one/manifest.json", "runs/one/outcomes/part-f00000.parquet", "runs/one/summary.json"]
    web.epoch = 1
    summary = crawl("two", "machine-b")
    web.epoch = 0
    assert summary["drift"]["near"] == 1 and summary["drift"]["same"] == 1
    body = s3_server.client().get_object(Bucket=bucket, Key="audits/laion/runs/two/manifest.json")["Body"].read()
    assert json.loads(body)["status"] == "finished"
    # the report and export-clean read an s3:// output too (synced into a staging folder first)
    env = {"TMPDIR": str(tmp_path / "machine-c")}
    (tmp_path / "machine-c").mkdir()
    report = run_refwatch("report", "--out", out, "--s3-endpoint-url", s3_server.endpoint, "--json", "-", env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert [run["run_id"] for run in json.loads(report.stdout)["runs"]] == ["one", "two"]
    cleaned = run_refwatch("export-clean", str(snapshot), "--run", "two", "--drop", "dead", "--runs-dir", out,
                           "--s3-endpoint-url", s3_server.endpoint, "--out", str(tmp_path / "clean.csv"), env=env)
    assert cleaned.returncode == 0, cleaned.stderr[-3000:]
    assert (tmp_path / "clean.csv").read_text() == snapshot.read_text()  # nothing was dead
    bad = run_refwatch("crawl", str(snapshot), "--out", "s3://no-such-bucket-here/x", "--s3-endpoint-url",
                       s3_server.endpoint, "--no-progress", "--allow-private-networks")
    assert bad.returncode == 2 and "no-such-bucket-here" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_outputs_that_cannot_be_uploaded_fail_the_run(web: SampleWeb, s3_server, tmp_path: Path) -> None:
    """S3 refusing the outcome parts (past the retries): exit 1, the summary says so, the manifest stays
    "running" so nothing downstream takes the run for finished; a redo once S3 is back completes it."""
    from tests.s3server import FaultProxy

    bucket = s3_server.new_bucket()
    out = f"s3://{bucket}/o"
    snapshot = write_snapshot(tmp_path / "s.csv", [("a", web.url("/img/1.jpg"))])
    with FaultProxy(s3_server.port) as proxy:
        args = ("crawl", str(snapshot), "--out", out, "--run-id", "r", "--s3-endpoint-url", proxy.endpoint,
                "--json", "--no-progress", "--allow-private-networks", "-s", f"REFWATCH_STAGING_DIR={tmp_path / 'st'}")
        proxy.inject([], method="PUT", path_contains="/outcomes/")
        proxy.failing = 503
        failed = run_refwatch(*args)
        assert failed.returncode == 1, failed.stderr[-3000:]
        assert json.loads(failed.stdout)["outputs_failed"] is True
        assert "its outputs could not be written" in failed.stderr
        body = s3_server.client().get_object(Bucket=bucket, Key="o/runs/r/manifest.json")["Body"].read()
        assert json.loads(body)["status"] == "running"
        proxy.failing = None
        redone = run_refwatch(*args)
        assert redone.returncode == 0, redone.stderr[-3000:]
    body = s3_server.client().get_object(Bucket=bucket, Key="o/runs/r/manifest.json")["Body"].read()
    assert json.loads(body)["status"] == "finished"
