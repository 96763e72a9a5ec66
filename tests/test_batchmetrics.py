"""End-of-run gauges: the text file for node_exporter (parsed back, checked by promtool) and pushes to a real
Pushgateway (Debian's ``prometheus-pushgateway``, started on a free loopback port by a fixture)."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from crawler.runs.metrics import (
    LAST_SUCCESS,
    build_registry,
    check_targets,
    export_run_metrics,
    push,
    read_run_files,
    run_facts,
    shown_url,
    write_textfile,
)
from crawler.extensions.summary import build_summary
from crawler.runs.history import Manifest, SnapshotFile, write_manifest
from crawler.outcomes import Outcome
from tests.helpers import free_port

SERIES = "5eed5eed5eed5eed"
RUN_ID = "20260301T000000Z-a1b2c3"
FINISHED = "2026-03-01T02:30:00.000000Z"
FINISHED_UNIX = datetime(2026, 3, 1, 2, 30, tzinfo=UTC).timestamp()


def summary(*, run_id: str = RUN_ID, ok: int = 60, not_found: int = 25, placeholder: int = 15,
            reason: str = "finished", extra: bool = True) -> dict[str, Any]:
    """A summary as the crawl's ``build_summary`` writes it, plus the drift and match-source counts."""
    stats = {"refwatch/outcome/ok": ok, "refwatch/outcome/not_found": not_found,
             "refwatch/outcome/placeholder": placeholder, "finish_reason": reason,
             "start_time": datetime(2026, 3, 1, 0, 0, tzinfo=UTC)}
    result = build_summary(stats, run_id=run_id, snapshots=["/data/snap.parquet"],
                           finished_at=datetime(2026, 3, 1, 2, 30, tzinfo=UTC))
    if extra:
        result["drift"] = {"same": 40, "near": 5, "changed": 3, "new": 12}
        result["match_sources"] = {"live_only": 2, "recorded_only": 1, "both": 4}
    return result


def manifest(status: str = "finished", run_id: str = RUN_ID) -> Manifest:
    return Manifest(run_id=run_id, series=SERIES, snapshots=[SnapshotFile("/data/snap.parquet", 10, "ab" * 32)],
                    started_at="2026-03-01T00:00:00.000000Z", status=status,
                    finished_at=FINISHED if status == "finished" else None)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted({"series": SERIES, **labels}.items()))))


# --- the gauges ---------------------------------------------------------------------------------------------


def test_gauges_say_what_the_summary_says() -> None:
    registry = build_registry(run_facts(summary(), manifest()))
    get = registry.get_sample_value
    assert get("refwatch_run_references", {"series": SERIES}) == 100
    assert get("refwatch_run_alive_ratio", {"series": SERIES}) == pytest.approx(0.60)
    assert get("refwatch_run_outcome_ratio", {"series": SERIES, "outcome": "placeholder"}) == pytest.approx(0.15)
    assert get("refwatch_run_outcome_ratio", {"series": SERIES, "outcome": "timeout"}) == 0
    assert get("refwatch_run_drift", {"series": SERIES, "drift": "changed"}) == 3
    assert get("refwatch_run_drift", {"series": SERIES, "drift": "unknown"}) == 0  # every word, zero when absent
    assert get("refwatch_run_matches", {"series": SERIES, "source": "both"}) == 4
    assert get("refwatch_run_duration_seconds", {"series": SERIES}) == 9000
    assert get("refwatch_run_success", {"series": SERIES}) == 1
    assert get(LAST_SUCCESS, {"series": SERIES}) == FINISHED_UNIX


def test_summary_without_drift_or_match_sources_gives_zeros_and_no_ratio_without_references() -> None:
    registry = build_registry(run_facts(summary(extra=False, ok=0, not_found=0, placeholder=0), manifest()))
    assert registry.get_sample_value("refwatch_run_matches", {"series": SERIES, "source": "live_only"}) == 0
    assert registry.get_sample_value("refwatch_run_drift", {"series": SERIES, "drift": "same"}) == 0
    assert registry.get_sample_value("refwatch_run_alive_ratio", {"series": SERIES}) is None


def test_labels_are_bounded_and_never_name_the_run() -> None:
    registry = build_registry(run_facts(summary(), manifest()))
    allowed = {"series": {SERIES}, "outcome": {o.value for o in Outcome},
               "drift": {"same", "near", "changed", "new", "unknown"}, "source": {"live_only", "recorded_only", "both"}}
    for family in registry.collect():
        for sample in family.samples:
            for name, label in sample.labels.items():
                assert label in allowed[name], (sample.name, name, label)


# --- the text file ------------------------------------------------------------------------------------------


def test_textfile_parses_back_and_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: ./setup.sh installs Debian's prometheus package"
    path = tmp_path / "refwatch.prom"
    write_textfile(path, summary(), manifest())
    text = path.read_text()
    found = samples(text)
    assert value(found, "refwatch_run_alive_ratio") == pytest.approx(0.6)
    assert value(found, "refwatch_run_outcome_ratio", outcome="not_found") == pytest.approx(0.25)
    assert value(found, LAST_SUCCESS) == FINISHED_UNIX
    assert RUN_ID not in text and "snap.parquet" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["refwatch.prom"]  # the temporary file was renamed
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30,
                             check=False)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), checked


def test_failed_run_keeps_the_last_success_in_the_textfile(tmp_path: Path) -> None:
    path = tmp_path / "refwatch.prom"
    write_textfile(path, summary(), manifest())
    write_textfile(path, summary(run_id="later", ok=10, reason="shutdown"), manifest(run_id="later"))
    found = samples(path.read_text())
    assert value(found, LAST_SUCCESS) == FINISHED_UNIX
    assert value(found, "refwatch_run_success") == 0
    assert value(found, "refwatch_run_references") == 50
    fresh = tmp_path / "fresh.prom"
    write_textfile(fresh, summary(), manifest(status="running"))  # failed with no earlier success: no gauge
    assert LAST_SUCCESS not in fresh.read_text()


# --- the Pushgateway ----------------------------------------------------------------------------------------


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Pushgateway on a free loopback port, persisting into tmp_path; stopped after the test."""
    binary = shutil.which("prometheus-pushgateway")
    assert binary, "prometheus-pushgateway not found: ./setup.sh installs it"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "pushgateway.log", "wb") as log:
        process = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}",
                                    f"--persistence.file={tmp_path / 'pushgateway.data'}"],
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while True:
                assert process.poll() is None, (tmp_path / "pushgateway.log").read_text()
                try:
                    with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the Pushgateway did not become ready in 20 s"
                time.sleep(0.05)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        return samples(answer.read().decode())


def pushed(found: dict, name: str, **labels: str) -> float | None:
    return value(found, name, job="refwatch", instance="", **labels)


def test_push_groups_by_series_and_a_failed_run_keeps_the_last_success(pushgateway: str) -> None:
    push(pushgateway, summary(), manifest())
    found = scrape(pushgateway)
    assert pushed(found, "refwatch_run_alive_ratio") == pytest.approx(0.6)
    assert pushed(found, "refwatch_run_outcome_ratio", outcome="placeholder") == pytest.approx(0.15)
    assert pushed(found, "refwatch_run_matches", source="recorded_only") == 1
    assert pushed(found, "refwatch_run_drift", drift="new") == 12
    assert pushed(found, LAST_SUCCESS) == FINISHED_UNIX
    assert pushed(found, "push_time_seconds") > 0  # the Pushgateway's own per-group gauge
    assert not [key for key in found if any(label == "run_id" for label, _ in key[1])]

    push(pushgateway, summary(run_id="later", ok=30, not_found=70, placeholder=0, reason="shutdown"),
         manifest(run_id="later"))
    found = scrape(pushgateway)
    assert pushed(found, "refwatch_run_success") == 0
    assert pushed(found, "refwatch_run_alive_ratio") == pytest.approx(0.3)
    assert pushed(found, LAST_SUCCESS) == FINISHED_UNIX  # not moved, not erased
    groups = {dict(labels).get("series") for name, labels in found if name == "refwatch_run_references"}
    assert groups == {SERIES}  # one group per series, whatever the run


def test_export_run_metrics_writes_pushes_and_reports_failures(pushgateway: str, tmp_path: Path) -> None:
    settings = {"REFWATCH_METRICS_TEXTFILE": str(tmp_path / "refwatch.prom"), "REFWATCH_PUSHGATEWAY": pushgateway,
                "REFWATCH_PUSHGATEWAY_JOB": "nightly"}
    assert export_run_metrics(settings, summary(), manifest()) == []
    assert value(samples((tmp_path / "refwatch.prom").read_text()), "refwatch_run_references") == 100
    assert value(scrape(pushgateway), "refwatch_run_references", job="nightly", instance="") == 100

    nobody = f"http://user:secret@127.0.0.1:{free_port()}"
    started = time.monotonic()
    problems = export_run_metrics({"REFWATCH_PUSHGATEWAY": nobody}, summary(), manifest())
    assert time.monotonic() - started < 15
    assert len(problems) == 1 and "cannot push the run metrics" in problems[0] and "secret" not in problems[0]
    assert export_run_metrics({}, summary(), manifest()) == []
    assert export_run_metrics(settings, summary(), None) == [
        "the run has no manifest.json: no run metrics written or pushed"]


def test_read_run_files_and_target_checks(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / RUN_ID
    write_manifest(run_dir, manifest())
    (run_dir / "summary.json").write_text('{"references": 3, "alive": 3, "outcomes": {"ok": 3}}')
    loaded_summary, loaded_manifest = read_run_files(run_dir)
    assert run_facts(loaded_summary, loaded_manifest).series == SERIES
    check_targets(tmp_path / "x.prom", "127.0.0.1:9091")
    with pytest.raises(ValueError, match=r"x\.txt: node_exporter's textfile collector reads only \*\.prom"):
        check_targets(tmp_path / "x.txt", None)
    with pytest.raises(ValueError, match="no such directory"):
        check_targets(tmp_path / "missing" / "x.prom", None)
    with pytest.raises(ValueError, match=r"ftp://gw:1: not a Pushgateway URL"):
        check_targets(None, "ftp://u:p@gw:1")
    assert shown_url("https://u:p@gw.example:9091/x") == "https://gw.example:9091/x"
