"""``refwatch report`` on synthetic run histories written by the crawl's output contract.

Small histories spell out every reference, so the numbers asserted here are worked out by hand in the
comments (percentages, transitions, Kaplan-Meier with delayed entry and censoring, domain losses). The HTML
page is rendered by a real headless Chromium and its screenshot checked for plots.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawler.cli.report import main as report_main
from crawler.report.metrics import build_report
from crawler.report.model import DRIFTS, OUTCOMES, Report
from crawler.report.selection import READ_COLUMNS, load_selection
from crawler.report.survival import kaplan_meier
from crawler.sample.history import (
    HISTORY_SCHEMA,
    NEW_COLUMNS,
    HistoryShape,
    synthesize_history,
    write_run,
)
from crawler.report.tables import history_database
from crawler.sample.web import SampleWeb
from tests.helpers import REPO_ROOT

T0 = datetime(2025, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)

# Eight references over three runs (days 0, 10, 30). g is missing from the third run.
#   ref domain      run 1      run 2        run 3      drift 1/2/3            recorded hash
#   a   x.example   ok         ok           ok         same/same/same         md5
#   b   x.example   ok         not_found    not_found  same/-/-               md5
#   c   x.example   ok         ok           gone       near/same/-            phash
#   d   y.example   not_found  ok           ok         -/new/same             sha256
#   e   y.example   ok         placeholder  ok         unknown/-/same         -
#   f   y.example   timeout    timeout      timeout    -/-/-                  -
#   g   (none)      ok         ok           (absent)   same/same              -
#   h   z.example   ok         ok           ok         same/changed/same      -
REFS = list("abcdefgh")
DOMAINS = ["x.example"] * 3 + ["y.example"] * 3 + [None, "z.example"]
RECORDED = {"recorded_md5": ["a" * 32, "b" * 32] + [None] * 6,
            "recorded_phash": [None, None, "c" * 16] + [None] * 5,
            "recorded_sha256": [None] * 3 + ["d" * 64] + [None] * 4}
OUTCOME_ROWS = [
    ["ok", "ok", "ok", "not_found", "ok", "timeout", "ok", "ok"],
    ["ok", "not_found", "ok", "ok", "placeholder", "timeout", "ok", "ok"],
    ["ok", "not_found", "gone", "ok", "ok", "timeout", None, "ok"],
]
DRIFT_ROWS = [
    ["same", "same", "near", None, "unknown", None, "same", "same"],
    ["same", None, "same", "new", None, None, "same", "changed"],
    ["same", None, None, "same", "same", None, None, "same"],
]
# run 1: a matched live and recorded, b recorded only, h live only
MATCHED = [True, False, False, False, False, False, False, True]
RECORDED_MATCHED = [True, True, False, False, False, False, False, False]


def _columns(run: int, keep: list[int] | None = None) -> dict[str, list]:
    rows = keep if keep is not None else [i for i, o in enumerate(OUTCOME_ROWS[run]) if o is not None]
    columns = {
        "ref_id": [REFS[i] for i in rows],
        "url": [f"https://img.{DOMAINS[i] or '192.0.2.7'}/photo/{REFS[i]}.jpg" for i in rows],
        "outcome": [OUTCOME_ROWS[run][i] for i in rows],
        "drift": [DRIFT_ROWS[run][i] for i in rows],
        "domain": [DOMAINS[i] for i in rows],
        "matched": [MATCHED[i] and run == 0 for i in rows],
        "recorded_matched": [RECORDED_MATCHED[i] and run == 0 for i in rows],
        "md5": [f"{i:x}" * 32 if OUTCOME_ROWS[run][i] == "ok" else None for i in rows],
    }
    columns.update({name: [values[i] for i in rows] for name, values in RECORDED.items()})
    return columns


RUN_IDS = ["run-1", "run-2", "run-3"]
RUN_DAYS = [0, 10, 30]


@pytest.fixture
def history(tmp_path: Path) -> Path:
    for run, (run_id, days) in enumerate(zip(RUN_IDS, RUN_DAYS)):
        write_run(tmp_path, run_id, _columns(run), started_at=T0 + days * DAY)
    return tmp_path


def _report(out: Path, **options) -> Report:
    selection = load_selection(out, series=options.pop("series", None), run_ids=options.pop("run_ids", None))
    with history_database(selection) as con:
        return build_report(con, selection, **options)


def test_history_schema_is_the_crawls(tmp_path: Path) -> None:
    """The synthetic writer and the reader use the types the crawl's outcome pipeline writes."""
    from crawler.pipelines.outcomes import OUTCOME_SCHEMA

    for field in HISTORY_SCHEMA:
        if field.name in OUTCOME_SCHEMA.names:
            assert OUTCOME_SCHEMA.field(field.name).type == field.type, field.name
    kinds = {"string": pa.string(), "bool": pa.bool_()}
    for name, kind in READ_COLUMNS.items():
        assert HISTORY_SCHEMA.field(name).type == kinds[kind], name


def test_per_run_numbers(history: Path) -> None:
    report = _report(history)
    assert [run.run_id for run in report.runs] == RUN_IDS
    assert [run.days for run in report.runs] == [0.0, 10.0, 30.0]
    first, second, third = report.runs
    assert (first.references, first.alive, first.alive_pct) == (8, 6, 75.0)
    assert (second.references, second.alive, second.alive_pct, second.placeholders) == (8, 5, 62.5, 1)
    assert (third.references, third.alive, third.alive_pct) == (7, 4, 57.1429)  # 4/7
    assert list(first.outcomes) == list(OUTCOMES)  # every word, in the vocabulary's order
    assert {w: n for w, n in first.outcomes.items() if n} == {"ok": 6, "not_found": 1, "timeout": 1}
    assert {w: p for w, p in third.outcome_pct.items() if p} == {
        "ok": 57.1429, "not_found": 14.2857, "gone": 14.2857, "timeout": 14.2857}
    assert first.drift == {"same": 4, "near": 1, "changed": 0, "new": 0, "unknown": 1}
    assert second.drift == {"same": 3, "near": 0, "changed": 1, "new": 1, "unknown": 0}
    assert first.matches == {"live_only": 1, "recorded_only": 1, "both": 1}
    assert second.matches == {"live_only": 0, "recorded_only": 0, "both": 0}
    # unauditable: not ok and no recorded hash: f in run 1; e, f in run 2; f in run 3 (b, c, d have hashes)
    assert [(r.unauditable, r.unauditable_pct) for r in report.runs] == [(1, 12.5), (2, 25.0), (1, 14.2857)]
    assert all(r.carried == 0 and r.recheck_of is None for r in report.runs)


def test_transitions(history: Path) -> None:
    one, two = _report(history, top_domains=2).transitions
    assert (one.from_run, one.to_run, one.days, one.compared) == ("run-1", "run-2", 10.0, 8)
    assert (one.stayed_alive, one.stayed_dead, one.alive_to_dead, one.dead_to_alive) == (4, 1, 2, 1)
    assert one.alive_to_dead_by_outcome == {"not_found": 1, "placeholder": 1}  # b, e
    assert one.dead_to_alive_by_outcome == {"not_found": 1}  # d
    assert one.alive_to_changed == 1  # h
    assert {(c.before, c.after): c.references for c in one.outcome_changes} == {
        ("ok", "ok"): 4, ("ok", "not_found"): 1, ("ok", "placeholder"): 1, ("not_found", "ok"): 1,
        ("timeout", "timeout"): 1}
    # top 2 domains by deaths: x and y tie at 1 death (3 compared each), broken by name; z and g's none left out
    assert [(d.domain, d.compared, d.alive_before, d.alive_to_dead, d.dead_to_alive, d.alive_to_changed)
            for d in one.top_domains] == [("x.example", 3, 3, 1, 0, 0), ("y.example", 3, 1, 1, 1, 0)]
    # run 3 lacks g: 7 compared
    assert (two.compared, two.alive_to_dead, two.dead_to_alive, two.days) == (7, 1, 1, 20.0)
    assert two.alive_to_dead_by_outcome == {"gone": 1} and two.dead_to_alive_by_outcome == {"placeholder": 1}


def test_kaplan_meier_with_delayed_entry_and_censoring(history: Path) -> None:
    """Seen alive: a, b, c, e, g, h enter at run 1, d at run 2 (dead first). Deaths: b, e at day 10, c at
    day 30. Censored: g at day 10 (last fetched there), a, d, h at day 30.
    At risk: day 10: the 6 that entered at day 0; day 30: 7 entered - 3 gone (b, e died, g censored) = 4.
    S(10) = 1 - 2/6 = 2/3; S(30) = 2/3 * (1 - 1/4) = 1/2. Greenwood: SE(10) = 2/3 * sqrt(2/(6*4)),
    SE(30) = 1/2 * sqrt(2/24 + 1/(4*3))."""
    survival = _report(history).survival
    assert (survival.subjects, survival.events, survival.median_days) == (7, 3, 30.0)
    rows = [(p.run_id, p.days, p.entered, p.at_risk, p.events, p.censored) for p in survival.points]
    assert rows == [("run-1", 0.0, 6, 0, 0, 0), ("run-2", 10.0, 1, 6, 2, 1), ("run-3", 30.0, 0, 4, 1, 3)]
    assert [p.survival for p in survival.points] == [1.0, round(2 / 3, 6), 0.5]
    assert survival.points[1].std_error == round(2 / 3 * math.sqrt(2 / 24), 6)
    assert survival.points[2].std_error == round(0.5 * math.sqrt(2 / 24 + 1 / 12), 6)


def test_kaplan_meier_everyone_dies() -> None:
    """Three enter at day 0, all die at day 5: the curve drops to 0 and its error is 0, not NaN."""
    survival = kaplan_meier(["r1", "r2"], [0.0, 5.0], [(0, 1, 1, 3)])
    assert [(p.at_risk, p.events, p.survival, p.std_error) for p in survival.points] == [
        (0, 0, 1.0, 0.0), (3, 3, 0.0, 0.0)]
    assert survival.median_days == 5.0


def test_domain_losses(tmp_path: Path) -> None:
    """p: 10 references, 10 alive -> 4 (loss 6, 60%); q: 4 -> 0 (4, 100%); r: 2 -> 0 (100%) but below the
    minimum of 3 references; s gains. Absolute order p, q; relative order q, p."""
    domains = ["p.example"] * 10 + ["q.example"] * 4 + ["r.example"] * 2 + ["s.example"] * 3
    first = ["ok"] * 16 + ["not_found"] * 3
    last = ["ok"] * 4 + ["gone"] * 6 + ["not_found"] * 4 + ["forbidden"] * 2 + ["ok"] * 3
    for run, outcomes in enumerate((first, last)):
        write_run(tmp_path, f"run-{run}", {"ref_id": [str(i) for i in range(19)], "outcome": outcomes,
                                           "domain": domains}, started_at=T0 + run * 7 * DAY)
    losses = _report(tmp_path, min_domain_references=3).domain_losses
    assert [(d.domain, d.references, d.alive_first, d.alive_last, d.loss, d.loss_pct) for d in losses.by_absolute] \
        == [("p.example", 10, 10, 4, 6, 60.0), ("q.example", 4, 4, 0, 4, 100.0)]
    assert [d.domain for d in losses.by_relative] == ["q.example", "p.example"]
    assert [d.domain for d in _report(tmp_path, min_domain_references=1).domain_losses.by_relative] == [
        "q.example", "r.example", "p.example"]  # r's 100% ties q's; q lost more
    assert _report(tmp_path, min_domain_references=11).domain_losses.by_absolute == []


def test_partial_recheck_counts_only_fetched_rows(tmp_path: Path) -> None:
    """A re-check of the dead fetches b and f again (b came back); a and c are carried from run-1: they
    are in the run's picture but neither transitions nor survival treat them as observed."""
    base = {"ref_id": ["a", "b", "c", "f"], "domain": ["x.example"] * 4}
    write_run(tmp_path, "run-1", {**base, "outcome": ["ok", "not_found", "ok", "timeout"]}, started_at=T0)
    write_run(tmp_path, "run-2", {**base, "outcome": ["ok", "ok", "ok", "timeout"],
                                  "carried_from": ["run-1", None, "run-1", None]},
              started_at=T0 + DAY, recheck_of="run-1", only=["dead"])
    report = _report(tmp_path)
    second = report.runs[1]
    assert (second.references, second.carried, second.alive, second.recheck_of, second.only) == (
        4, 2, 3, "run-1", ["dead"])
    (step,) = report.transitions
    assert (step.compared, step.dead_to_alive, step.stayed_dead, step.stayed_alive) == (2, 1, 1, 0)
    # a, c enter at run 1 and are censored there (carried rows are not observations); b enters at run 2
    assert [(p.entered, p.at_risk, p.censored) for p in report.survival.points] == [(2, 0, 2), (1, 0, 1)]


def test_older_runs_without_the_new_columns(tmp_path: Path) -> None:
    """A run written before domain, carried_from and recorded_matched existed reads them as null."""
    write_run(tmp_path, "old", {"ref_id": ["a", "b"], "outcome": ["ok", "ok"], "matched": [True, False],
                                "domain": ["x.example"] * 2}, started_at=T0, drop=NEW_COLUMNS)
    write_run(tmp_path, "new", {"ref_id": ["a", "b"], "outcome": ["ok", "gone"], "matched": [True, False],
                                "domain": ["x.example"] * 2, "recorded_matched": [True, False]},
              started_at=T0 + DAY)
    assert "domain" not in pq.read_schema(next((tmp_path / "runs/old/outcomes").glob("*.parquet"))).names
    report = _report(tmp_path, min_domain_references=1)
    assert report.runs[0].matches == {"live_only": 1, "recorded_only": 0, "both": 0}
    assert report.runs[1].matches == {"live_only": 0, "recorded_only": 0, "both": 1}
    (step,) = report.transitions
    assert step.alive_to_dead == 1 and [(d.domain, d.alive_to_dead) for d in step.top_domains] == [("x.example", 1)]
    # the old run knows no domains: a reference's domain is taken from the last run
    assert [(d.domain, d.alive_first, d.alive_last) for d in report.domain_losses.by_absolute] == [
        ("x.example", 2, 1)]


def test_series_selection_and_notes(history: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    # "other-1" sorts before "other-0" by start time: runs are ordered by started_at, not by name
    write_run(history, "other-0", {"ref_id": ["q"], "outcome": ["ok"]}, series="s2", started_at=T0)
    write_run(history, "other-1", {"ref_id": ["q"], "outcome": ["ok"]}, series="s2", started_at=T0 - DAY)
    write_run(history, "other-2", {"ref_id": ["q"], "outcome": ["ok"]}, series="s2", started_at=T0 + 99 * DAY,
              status="running")
    (history / "runs" / "legacy" / "outcomes").mkdir(parents=True)
    (history / "runs" / "damaged" / "outcomes").mkdir(parents=True)
    (history / "runs" / "damaged" / "manifest.json").write_text("{broken")
    report = _report(history)  # s1 holds the newest finished run
    assert report.series == "s1" and len(report.runs) == 3
    assert f"{history / 'runs' / 'legacy'}: no manifest.json (a run from before run manifests): ignored" in report.notes
    assert any(note.startswith(f"{history / 'runs' / 'damaged' / 'manifest.json'}: bad run manifest")
               for note in report.notes)
    other = _report(history, series="s2")
    assert [run.run_id for run in other.runs] == ["other-1", "other-0"]
    assert "run other-2 is running: not reported" in other.notes
    chosen = _report(history, run_ids=["run-3", "run-1"])
    assert [run.run_id for run in chosen.runs] == ["run-1", "run-3"]  # ordered by start, whatever was given
    assert chosen.transitions[0].days == 30.0


def test_json_keys_are_stable(history: Path, tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    assert report_main(["--out", str(history), "--json", str(target)]) == 0
    data = json.loads(target.read_text())
    assert list(data) == ["format", "version", "series", "snapshots", "runs", "transitions", "survival",
                          "domain_losses", "top_domains", "notes"]
    assert (data["format"], data["version"]) == ("refwatch-report", 1)
    assert list(data["runs"][0]) == [
        "run_id", "started_at", "days", "recheck_of", "only", "references", "carried", "alive", "alive_pct",
        "placeholders", "outcomes", "outcome_pct", "drift", "matches", "unauditable", "unauditable_pct"]
    assert list(data["runs"][0]["drift"]) == list(DRIFTS)
    assert list(data["transitions"][0]) == [
        "from_run", "to_run", "days", "compared", "stayed_alive", "stayed_dead", "alive_to_dead",
        "alive_to_dead_by_outcome", "dead_to_alive", "dead_to_alive_by_outcome", "alive_to_changed",
        "outcome_changes", "top_domains"]
    assert list(data["transitions"][0]["top_domains"][0]) == [
        "domain", "compared", "alive_before", "alive_to_dead", "dead_to_alive", "alive_to_changed"]
    assert list(data["survival"]) == ["subjects", "events", "points", "median_days"]
    assert list(data["survival"]["points"][0]) == [
        "run_id", "days", "at_risk", "events", "censored", "entered", "survival", "std_error"]
    assert list(data["domain_losses"]) == ["min_references", "by_absolute", "by_relative"]
    assert data["runs"][2]["alive_pct"] == 57.1429


def test_json_to_stdout_and_a_single_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One run: no transitions, nothing lost, a one-point curve; ``--json -`` prints JSON and no tables."""
    write_run(tmp_path, "only", {"ref_id": ["a", "b"], "outcome": ["ok", "gone"], "domain": ["x.example"] * 2},
              started_at=T0)
    page = tmp_path / "page.html"
    assert report_main(["--out", str(tmp_path), "--json", "-", "--html", str(page)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["transitions"] == [] and data["domain_losses"]["by_absolute"] == []
    assert data["survival"]["points"] == [{"run_id": "only", "days": 0.0, "at_risk": 0, "events": 0, "censored": 1,
                                           "entered": 1, "survival": 1.0, "std_error": 0.0}]
    text = page.read_text(encoding="utf-8")
    assert text.count("<svg") == 4  # no transitions or domain-loss plot without a second run


def _fail(out: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert report_main(["--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("refwatch: error: ")
    return err[-1]


def test_bad_input_is_one_line_naming_the_file(history: Path, tmp_path_factory: pytest.TempPathFactory,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path_factory.mktemp("empty")
    assert f"{empty / 'runs'}: no such folder" in _fail(empty, capsys=capsys)
    assert "no run of series 'nope'" in _fail(history, "--series", "nope", capsys=capsys)
    assert "no run run-9 with a manifest" in _fail(history, "--runs", "run-1,run-9", capsys=capsys)
    part = history / "runs" / "run-2" / "outcomes" / "part-00000.parquet"
    part.write_bytes(b"not parquet at all")
    assert f"{part}: not a readable Parquet file" in _fail(history, capsys=capsys)
    pq.write_table(pa.table({"ref_id": ["a"], "outcome": pa.array([1], pa.int32())}), part)
    assert f"{part}: column outcome is int32, expected string" in _fail(history, capsys=capsys)
    pq.write_table(pa.table({"ref_id": ["a"], "outcome": pa.array([None], pa.string())}), part)
    assert "1 rows without a ref_id or an outcome" in _fail(history, capsys=capsys)


def test_unwritable_output_is_bad_input(history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "no-such-dir" / "report.html"
    assert f"{target}: cannot write" in _fail(history, "--html", str(target), capsys=capsys)


def test_runs_of_different_series_are_refused(history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(history, "other", {"ref_id": ["q"], "outcome": ["ok"]}, series="s2", started_at=T0)
    assert "different series" in _fail(history, "--runs", "run-1,other", capsys=capsys)


def test_command_prints_plain_tables_when_piped(history: Path) -> None:
    """The real command in a child process: stdout is a pipe, so plain text (no escape codes)."""
    done = subprocess.run([sys.executable, "-m", "crawler.cli.report", "--out", str(history)],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout
    assert "alive (ok)" in done.stdout and "75.00%" in done.stdout and "57.14%" in done.stdout
    assert "Transitions between consecutive runs" in done.stdout
    assert "x.example" in done.stdout


def test_report_over_three_real_crawls(web: SampleWeb, tmp_path: Path) -> None:
    """Three crawls of one snapshot while the sample web changes (its epochs), then the report on them.

    Plans per epoch: same img,img,img; near img,near,near; changed img,other,other; late 404,img,img;
    comeback img,404,img; and 20 images that become one shared 'removed' redirect (placeholders).
    Alive: 24 of 25, then 4 (same, near, changed, late), then 5 (comeback is back). Seen alive: 24 at run
    1, late at run 2; died at run 2: comeback and the 20 placeholders, so S = 1 - 21/24 = 0.125 after it.
    """
    from tests.helpers import run_refwatch
    from tests.test_crawl_e2e import write_snapshot

    plans = {"same": "img,img,img", "near": "img,near,near", "changed": "img,other,other", "late": "404,img,img",
             "comeback": "img,404,img"}
    refs = [(name, web.url(f"/epoch/{name}/{seed}.jpg?plan={plan}")) for seed, (name, plan) in
            enumerate(plans.items(), 1)]
    refs += [(f"removed{i}", web.url(f"/epoch/removed{i}/{50 + i}.jpg?plan=img,removed,removed")) for i in range(20)]
    snapshot = write_snapshot(tmp_path / "s.csv", refs)
    out = tmp_path / "out"
    try:
        for epoch in range(3):
            web.epoch = epoch
            done = run_refwatch("crawl", str(snapshot), "--out", str(out), "--run-id", f"run{epoch}",
                                "--no-progress", "--allow-private-networks", "--timeout", "5")
            assert done.returncode == 0, done.stderr[-3000:]
    finally:
        web.epoch = 0
    target = tmp_path / "report.json"
    assert report_main(["--out", str(out), "--json", str(target), "--html", str(tmp_path / "r.html")]) == 0
    data = json.loads(target.read_text())
    assert [(r["run_id"], r["references"], r["alive"], r["placeholders"]) for r in data["runs"]] == [
        ("run0", 25, 24, 0), ("run1", 25, 4, 20), ("run2", 25, 5, 20)]
    assert data["runs"][1]["drift"] == {"same": 1, "near": 1, "changed": 1, "new": 1, "unknown": 0}
    first, second = data["transitions"]
    assert first["alive_to_dead_by_outcome"] == {"placeholder": 20, "not_found": 1}
    assert (first["dead_to_alive"], first["alive_to_changed"]) == (1, 1)
    assert (second["alive_to_dead"], second["dead_to_alive_by_outcome"]) == (0, {"not_found": 1})
    assert first["top_domains"][0]["domain"] == "127.0.0.1"  # an IP address is its own registrable domain
    points = data["survival"]["points"]
    assert [(p["entered"], p["at_risk"], p["events"], p["censored"]) for p in points] == [
        (24, 0, 0, 0), (1, 24, 21, 0), (0, 4, 0, 4)]
    assert [p["survival"] for p in points] == [1.0, 0.125, 0.125]
    assert [(d["domain"], d["alive_first"], d["alive_last"]) for d in data["domain_losses"]["by_absolute"]] == [
        ("127.0.0.1", 24, 5)]
    assert "://" not in (tmp_path / "r.html").read_text(encoding="utf-8")  # the crawls' URLs stay out


def _screenshot(page: Path, png: Path, profile: Path) -> None:
    """Headless Chromium screenshot of ``page``; Chromium and all its helpers are stopped whatever happens."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: run ./setup.sh (Debian package 'chromium')"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1200,2400",
               "--hide-scrollbars", page.resolve().as_uri()]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = process.communicate(timeout=90)
        assert png.is_file(), err.decode(errors="replace")[-2000:]
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: only Chromium's processes
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def test_html_page_renders_with_its_plots_and_no_urls_or_hashes(tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "out"
    synthesize_history(out, HistoryShape(runs=4, references=3000, domains=60, rows_per_part=700), seed=7)
    page = tmp_path / "report.html"
    assert report_main(["--out", str(out), "--html", str(page), "--json", str(tmp_path / "r.json"),
                        "--min-domain-refs", "5"]) == 0
    text = page.read_text(encoding="utf-8")
    for name in ("alive", "outcomes", "survival", "domains", "drift", "transitions"):
        assert f'<figure id="plot-{name}">' in text
    assert text.count("<svg") == 6 and text.count("<title>") == 7  # the page's own title and one per plot
    assert "Survival of references (Kaplan-Meier)" in text and "site0.example" in text
    # only domains and counts: no URL, no reference id, no hash of any kind
    assert "://" not in text and "img.site" not in text
    table = pq.read_table(next((out / "runs").glob("*/outcomes/part-00000.parquet")))
    for column in ("ref_id", "md5", "phash", "recorded_md5"):
        values = [v for v in table.column(column).to_pylist()[:200] if v]
        assert values and not any(v in text for v in values), column
    assert not re.search(r"[0-9a-fA-F]{16,}", text)

    png = tmp_path / "page.png"
    _screenshot(page, png, tmp_path / "chromium-profile")
    image = Image.open(png).convert("RGB")
    assert image.size == (1200, 2400)
    small = image.resize((300, 600))
    colours = small.getcolors(maxcolors=300 * 600)
    assert colours is not None and len(colours) > 200, "the page looks blank"
    non_white = sum(n for n, (r, g, b) in colours if min(r, g, b) < 235)
    assert non_white > 0.05 * 300 * 600
    greens = sum(n for n, (r, g, b) in colours if g > 120 and r < 90 and b < 90)  # the alive bars and line
    assert greens > 500
