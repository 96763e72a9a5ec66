"""Choose the runs of a series under ``OUT/runs/`` and check their files before anything is computed.

A run is reported only from what its crawl wrote: ``manifest.json`` (read by ``crawler.runs.history``, the crawl's
own reader) and ``outcomes/part-*.parquet``. Runs are chosen here (one series, finished, ordered by start
time) and every part's schema is checked from its footer, so bad input is one ``ReportError`` naming the
file instead of an error halfway through a query. Runs without a manifest (older crawls), with a damaged
one, or not finished are left out with a note the command prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from crawler.runs.history import MANIFEST_NAME, Manifest, outcome_parts, read_manifest

FINISHED = "finished"

# The outcome columns the report reads, with the Arrow types the crawl writes. Only ref_id and outcome are
# required: the others arrived later, and a part without one of them reads it as null (an older run).
STRING, BOOL = "string", "bool"
READ_COLUMNS: dict[str, str] = {
    "ref_id": STRING,
    "outcome": STRING,
    "drift": STRING,
    "matched": BOOL,
    "recorded_matched": BOOL,
    "recorded_md5": STRING,
    "recorded_sha256": STRING,
    "recorded_phash": STRING,
    "domain": STRING,
    "carried_from": STRING,
}
REQUIRED_COLUMNS = ("ref_id", "outcome")


class ReportError(Exception):
    """Bad input the user must fix; the message names the file or folder."""


@dataclass(frozen=True, slots=True)
class Run:
    """One run as its manifest describes it, with the outcome parts found for it."""

    run_id: str
    series: str
    status: str
    started_at: datetime
    snapshots: tuple[str, ...]  # file names only: full paths say more than a report should
    recheck_of: str | None
    only: tuple[str, ...] | None
    run_dir: Path
    parts: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class Part:
    """One outcome part and which of the read columns it holds (the rest read as null)."""

    path: Path
    columns: frozenset[str]


@dataclass(frozen=True, slots=True)
class Selection:
    """The runs to report, oldest first, and the notes to show about what was left out and why."""

    series: str
    runs: tuple[Run, ...]
    parts: tuple[tuple[Part, ...], ...]  # per run, in the order of ``runs``
    notes: tuple[str, ...]


def run_from_manifest(manifest: Manifest, run_dir: Path) -> Run:
    """The report's view of a run; ValueError naming the manifest if its start time is not ISO-8601."""
    try:
        started = datetime.fromisoformat(manifest.started_at)  # Python 3.11 reads the trailing Z
    except (TypeError, ValueError):
        raise ValueError(f"{run_dir / MANIFEST_NAME}: bad run manifest (started_at is not ISO-8601)") from None
    return Run(
        run_id=manifest.run_id,
        series=manifest.series,
        status=manifest.status,
        started_at=started if started.tzinfo else started.replace(tzinfo=UTC),
        snapshots=tuple(Path(snapshot.path).name for snapshot in manifest.snapshots),
        recheck_of=manifest.recheck_of,
        only=tuple(str(word) for word in manifest.only) if manifest.only is not None else None,
        run_dir=run_dir,
        parts=tuple(outcome_parts(run_dir)),
    )


def discover_runs(out: Path) -> tuple[list[Run], list[str]]:
    """Every run with a readable manifest under ``out/runs``, and a note for each folder left out."""
    runs_dir = out / "runs"
    if not runs_dir.is_dir():
        raise ReportError(f"{runs_dir}: no such folder (is --out the crawl's output folder?)")
    runs: list[Run] = []
    notes: list[str] = []
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        try:
            manifest = read_manifest(run_dir)
            if manifest is None:
                notes.append(f"{run_dir}: no {MANIFEST_NAME} (a run from before run manifests): ignored")
                continue
            runs.append(run_from_manifest(manifest, run_dir))
        except ValueError as exc:  # the message names the manifest
            notes.append(f"{exc}: ignored")
    return runs, notes


def select_runs(runs: Sequence[Run], *, series: str | None = None, run_ids: Sequence[str] | None = None,
                where: Path) -> tuple[str, list[Run], list[str]]:
    """The finished runs of one series, oldest first, with notes on the runs left out.

    Default: the series of the newest finished run. ``run_ids`` names runs explicitly (all of one series);
    ``series`` picks a series by its identity.
    """
    notes: list[str] = []
    if run_ids:
        by_id = {run.run_id: run for run in runs}
        missing = [run_id for run_id in run_ids if run_id not in by_id]
        if missing:
            raise ReportError(f"{where / 'runs'}: no run {missing[0]} with a manifest")
        chosen = [by_id[run_id] for run_id in dict.fromkeys(run_ids)]
        if len({run.series for run in chosen}) > 1:
            raise ReportError(f"{where / 'runs'}: the runs given belong to different series "
                              "(references are comparable only within one series)")
        series = chosen[0].series
    else:
        finished = [run for run in runs if run.status == FINISHED]
        if series is None:
            if not finished:
                raise ReportError(f"{where / 'runs'}: no finished run to report")
            series = max(finished, key=_run_order).series
        chosen = [run for run in runs if run.series == series]
        if not chosen:
            raise ReportError(f"{where / 'runs'}: no run of series {series!r}")
    for run in sorted(chosen, key=_run_order):
        if run.status != FINISHED:
            notes.append(f"run {run.run_id} is {run.status}: not reported")
    reported = sorted((run for run in chosen if run.status == FINISHED), key=_run_order)
    if not reported:
        raise ReportError(f"{where / 'runs'}: no finished run of series {series!r}")
    return series, reported, notes


def _run_order(run: Run) -> tuple[datetime, str]:
    return run.started_at, run.run_id


def check_part(path: Path) -> Part:
    """Which read columns a part holds, after checking their types from its footer."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise ReportError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
    present = set(schema.names) & READ_COLUMNS.keys()
    for name in REQUIRED_COLUMNS:
        if name not in present:
            raise ReportError(f"{path}: no {name} column")
    for name in present:
        arrow_type = schema.field(name).type
        if not _is_kind(arrow_type, READ_COLUMNS[name]):
            raise ReportError(f"{path}: column {name} is {arrow_type}, expected {READ_COLUMNS[name]}")
    return Part(path, frozenset(present))


def _is_kind(arrow_type: pa.DataType, kind: str) -> bool:
    if kind == BOOL:
        return pa.types.is_boolean(arrow_type)
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or (
        pa.types.is_string_view(arrow_type))


def load_selection(out: Path, *, series: str | None = None, run_ids: Iterable[str] | None = None) -> Selection:
    """Choose the runs to report and check every part they have (footers only)."""
    runs, notes = discover_runs(out)
    chosen_series, chosen, selection_notes = select_runs(runs, series=series, run_ids=list(run_ids or ()), where=out)
    parts = tuple(tuple(check_part(path) for path in run.parts) for run in chosen)
    for run, run_parts in zip(chosen, parts):
        if not run_parts:
            notes.append(f"run {run.run_id} has no outcome parts: reported with 0 references")
    return Selection(chosen_series, tuple(chosen), parts, tuple(notes + selection_notes))
