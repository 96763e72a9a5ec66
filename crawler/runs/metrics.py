"""End-of-run gauges for dashboards and cron: node_exporter's textfile collector and the Pushgateway.

A crawl started by cron is gone before Prometheus could scrape it, so when it ends its results are handed
on as gauges, the Prometheus convention for batch jobs: ``write_textfile`` for machine-level jobs (node_exporter
reads ``*.prom`` files from its ``--collector.textfile.directory``; the file is replaced atomically) and
``push`` for service-level ones (``push_to_gateway`` with the grouping key ``{job, series}``). Values come
from the run's ``summary.json`` and ``manifest.json`` only, so they always agree with what the run wrote.

Labels are bounded: ``series`` (the manifest's 16-hex digest of the snapshot files' checksums: one value per
snapshot being watched, never a URL, host or image hash), outcome and drift words, and match sources.

``run_id`` is deliberately not a label. Every run has a new id, so as a label (or part of the Pushgateway
grouping key) each run would start new time series (unbounded cardinality in Prometheus) and leave a group
behind on the Pushgateway, which never forgets one; "the latest alive ratio of this snapshot" would need a
``topk`` over timestamps, and ``time() - refwatch_run_last_success_timestamp_seconds`` would never stop
firing for old run ids. With ``{job, series}`` each push replaces the previous run's values, which is what a
dashboard and an alert want; the run id is in the run's folder, found by the timestamp.

A failed run (status not ``finished``, or a finish reason other than ``finished``) still publishes its
gauges with ``refwatch_run_success`` 0, but never moves ``refwatch_run_last_success_timestamp_seconds``:
the push is a POST (``pushadd``) without that gauge, which keeps the group's last success, and the text file
carries the previous value over. Pure module: no Scrapy, no Twisted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, pushadd_to_gateway, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

from crawler.runs.drift import Drift
from crawler.runs.history import Manifest
from crawler.outcomes import Outcome

logger = logging.getLogger(__name__)

TEXTFILE_SETTING: Final = "REFWATCH_METRICS_TEXTFILE"  # path of a .prom file, or None
PUSHGATEWAY_SETTING: Final = "REFWATCH_PUSHGATEWAY"  # http://host:port of a Pushgateway, or None
PUSHGATEWAY_JOB_SETTING: Final = "REFWATCH_PUSHGATEWAY_JOB"  # the job label (default "refwatch")
DEFAULT_JOB: Final = "refwatch"
PUSH_TIMEOUT: Final = 10.0  # seconds; a dead Pushgateway must not hold a cron job for long
LAST_SUCCESS: Final = "refwatch_run_last_success_timestamp_seconds"
MATCH_SOURCES: Final = ("live_only", "recorded_only", "both")


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the gauges say about one run, read from its summary and manifest."""

    series: str
    references: int
    alive: int
    outcomes: dict[str, int]
    drift: dict[str, int]
    match_sources: dict[str, int]
    seconds: float
    finished_at: float | None  # Unix time
    succeeded: bool


def run_facts(summary: Mapping[str, Any], manifest: Manifest | Mapping[str, Any]) -> RunFacts:
    """The run's figures; ValueError when the manifest names no series."""
    meta = manifest if isinstance(manifest, Mapping) else {"series": manifest.series, "status": manifest.status,
                                                          "finished_at": manifest.finished_at}
    series = meta.get("series")
    if not series:
        raise ValueError("the run's manifest names no series: its metrics cannot be labelled")
    outcomes = {str(word): int(count) for word, count in (summary.get("outcomes") or {}).items()}
    finished = _unix(meta.get("finished_at") or summary.get("finished_at"))
    succeeded = (meta.get("status") == "finished" and summary.get("finish_reason") in (None, "finished")
                 and finished is not None)
    return RunFacts(
        series=str(series),
        references=int(summary.get("references", sum(outcomes.values()))),
        alive=int(summary.get("alive", outcomes.get(Outcome.OK.value, 0))),
        outcomes=outcomes,
        drift={str(k): int(v) for k, v in (summary.get("drift") or {}).items()},
        match_sources={str(k): int(v) for k, v in (summary.get("match_sources") or {}).items()},
        seconds=float(summary.get("seconds") or 0.0),
        finished_at=finished,
        succeeded=succeeded,
    )


def _unix(text: Any) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text)).timestamp()  # Python 3.11 reads the "Z"
    except ValueError:
        return None


def build_registry(facts: RunFacts, *, last_success: float | None = None) -> CollectorRegistry:
    """A fresh registry holding the run's gauges (never the global one).

    ``last_success`` is the timestamp to publish for a failed run (carried over); a successful run
    publishes its own finish time. With neither, the registry has no last-success gauge at all.
    """
    registry = CollectorRegistry(auto_describe=True)
    series = facts.series

    def gauge(name: str, doc: str, *labels: str) -> Gauge:
        return Gauge(name, doc, ["series", *labels], registry=registry)

    gauge("refwatch_run_references", "References the last run gave an outcome.").labels(series).set(facts.references)
    gauge("refwatch_run_duration_seconds", "Wall time of the last run.").labels(series).set(facts.seconds)
    gauge("refwatch_run_success", "1 if the last run finished, 0 if it failed or was stopped.").labels(series).set(
        int(facts.succeeded))
    if facts.references:  # a ratio of nothing is not 0: leave it out
        gauge("refwatch_run_alive_ratio", "Share of references alive (a decodable image; placeholders are not)."
              ).labels(series).set(facts.alive / facts.references)
        ratio = gauge("refwatch_run_outcome_ratio", "Share of references with each outcome.", "outcome")
        for outcome in Outcome:
            ratio.labels(series, outcome.value).set(facts.outcomes.get(outcome.value, 0) / facts.references)
    drift = gauge("refwatch_run_drift", "References by drift against what was last known of them.", "drift")
    for word in Drift:
        drift.labels(series, word.value).set(facts.drift.get(word.value, 0))
    matches = gauge("refwatch_run_matches", "Matched references by where the matching hash came from "
                    "(live bytes, recorded hashes only, or both).", "source")
    for source in MATCH_SOURCES:
        matches.labels(series, source).set(facts.match_sources.get(source, 0))
    success = facts.finished_at if facts.succeeded else last_success
    if success is not None:  # no family at all otherwise: an empty one pushed would erase the group's value
        gauge(LAST_SUCCESS, "Unix time the last successful run of this series finished.").labels(series).set(success)
    return registry


def write_textfile(path: str | os.PathLike[str], summary: Mapping[str, Any], manifest: Manifest | Mapping[str, Any]
                   ) -> None:
    """Write the run's gauges to ``path`` for node_exporter's textfile collector (atomically: a temporary
    file beside it, renamed). A failed run keeps the last-success time the file already had."""
    facts = run_facts(summary, manifest)
    previous = None if facts.succeeded else _previous_success(Path(path), facts.series)
    write_to_textfile(os.fspath(path), build_registry(facts, last_success=previous))


def _previous_success(path: Path, series: str) -> float | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS and sample.labels.get("series") == series:
                    return float(sample.value)
    except ValueError:
        logger.warning("%s: not a metrics text file; the last-success time is not carried over", path)
    return None


def push(url: str, summary: Mapping[str, Any], manifest: Manifest | Mapping[str, Any], job: str = DEFAULT_JOB,
         *, timeout: float = PUSH_TIMEOUT) -> None:
    """Push the run's gauges to the Pushgateway at ``url``, grouped by ``{job, series}``.

    A successful run replaces its group (PUT); a failed one adds to it (POST) without the last-success
    gauge, so the group keeps the time of the last success. Raises OSError (URLError) if the push fails.
    """
    facts = run_facts(summary, manifest)
    send = push_to_gateway if facts.succeeded else pushadd_to_gateway
    send(url, job=job, registry=build_registry(facts), grouping_key={"series": facts.series}, timeout=timeout)


def check_targets(textfile: str | os.PathLike[str] | None, pushgateway: str | None) -> None:
    """ValueError (one line) for targets that cannot work, before a crawl starts rather than after it."""
    if textfile is not None:
        path = Path(textfile)
        if path.suffix != ".prom":
            raise ValueError(f"{path}: node_exporter's textfile collector reads only *.prom files")
        if not path.parent.is_dir():
            raise ValueError(f"{path.parent}: no such directory (for --metrics-textfile)")
    if pushgateway is not None:
        parts = urlsplit(pushgateway if "://" in pushgateway else f"http://{pushgateway}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{shown_url(pushgateway)}: not a Pushgateway URL (expected http://HOST:PORT)")


def shown_url(url: str) -> str:
    """``url`` without user name and password, for messages."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else url


def export_run_metrics(settings: Any, summary: Mapping[str, Any], manifest: Manifest | Mapping[str, Any] | None
                       ) -> list[str]:
    """Write and push the run's gauges as ``settings`` (anything with ``.get``) ask; called once a run ends.

    Returns one line per failure (also logged as an error), empty when all went well or nothing was asked:
    the run's outputs are written whatever happens here, so the caller decides what a failure means.
    """
    textfile = settings.get(TEXTFILE_SETTING)
    gateway = settings.get(PUSHGATEWAY_SETTING)
    if not textfile and not gateway:
        return []
    problems: list[str] = []
    if manifest is None:
        problems.append("the run has no manifest.json: no run metrics written or pushed")
    else:
        if textfile:
            try:
                write_textfile(textfile, summary, manifest)
            except (OSError, ValueError) as exc:
                problems.append(f"{textfile}: cannot write the run metrics: {_reason(exc)}")
        if gateway:
            job = settings.get(PUSHGATEWAY_JOB_SETTING) or DEFAULT_JOB
            try:
                push(gateway, summary, manifest, job)
            except (OSError, ValueError) as exc:
                problems.append(f"{shown_url(gateway)}: cannot push the run metrics: {_reason(exc)}")
    for problem in problems:
        logger.error("%s", problem)
    return problems


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
    return " ".join(str(reason).split())


def read_run_files(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], Manifest | None]:
    """A run's ``summary.json`` and manifest (None if it has none), as ``export_run_metrics`` takes them."""
    import json

    from crawler.runs.history import read_manifest

    folder = Path(run_dir)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    return summary, read_manifest(folder)
