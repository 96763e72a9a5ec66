"""Write run histories by the crawl's output contract, for the report's tests and benchmark.

Two helpers: ``write_run`` writes one run from column lists (tests spell out every reference they assert
on), and ``synthesize_history`` writes a realistic decay over many runs and references with numpy, one
vectorised step per run, so the benchmark's 10 x 1,000,000 rows take seconds to make. Everything is
synthetic: hosts are ``*.example`` names, hashes are random hex.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# The columns a crawl writes that the report or its leak checks care about, with the crawl's types
# (tests/test_report.py checks them against crawler.pipelines.outcomes.OUTCOME_SCHEMA).
HISTORY_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("ref_id", pa.string()),
        ("url", pa.string()),
        ("outcome", pa.string()),
        ("http_status", pa.int16()),
        ("md5", pa.string()),
        ("phash", pa.string()),
        ("matched", pa.bool_()),
        ("drift", pa.string()),
        ("recorded_md5", pa.string()),
        ("recorded_sha256", pa.string()),
        ("recorded_phash", pa.string()),
        ("fetched_at", pa.timestamp("ms", tz="UTC")),
        ("domain", pa.string()),
        ("carried_from", pa.string()),
        ("recorded_matched", pa.bool_()),
    ]
)
NEW_COLUMNS = ("domain", "carried_from", "recorded_matched")  # absent from runs written before them

DEAD_MIX: dict[str, float] = {  # what an alive reference becomes when it dies, roughly as crawls see it
    "not_found": 0.45, "gone": 0.04, "forbidden": 0.10, "dns_error": 0.12, "connection_error": 0.08,
    "timeout": 0.07, "server_error": 0.05, "tls_error": 0.02, "not_image": 0.03, "placeholder": 0.04,
}
TRANSIENT = ("timeout", "server_error", "connection_error")


def iso(moment: datetime) -> str:
    """UTC time as the manifests write it."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def outcome_table(columns: Mapping[str, Sequence[Any] | pa.Array], run_id: str,
                  drop: Sequence[str] = ()) -> pa.Table:
    """An outcome table of ``HISTORY_SCHEMA`` from the given columns; others are null, ``drop`` left out."""
    length = len(columns["ref_id"])
    arrays = []
    fields = []
    for field in HISTORY_SCHEMA:
        if field.name in drop:
            continue
        if field.name in columns:
            arrays.append(pa.array(columns[field.name], type=field.type))
        elif field.name == "run_id":
            arrays.append(pa.array([run_id] * length, type=field.type))
        else:
            arrays.append(pa.nulls(length, type=field.type))
        fields.append(field)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_manifest(run_dir: Path, *, run_id: str, series: str, started_at: datetime, status: str = "finished",
                   recheck_of: str | None = None, only: Sequence[str] | None = None,
                   snapshots: Sequence[str] = ("snapshot.parquet",)) -> None:
    """``manifest.json`` as the crawl writes it (finished an hour after it started)."""
    manifest = {
        "format": "refwatch-run",
        "version": 1,
        "run_id": run_id,
        "series": series,
        "snapshots": [{"path": name, "size": 0, "sha256": "0" * 64} for name in snapshots],
        "started_at": iso(started_at),
        "finished_at": iso(started_at + timedelta(hours=1)) if status == "finished" else None,
        "status": status,
        "parameters": {},
        "recheck_of": recheck_of,
        "only": list(only) if only is not None else None,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def write_parts(run_dir: Path, table: pa.Table, rows_per_part: int | None = None) -> None:
    """The table as ``outcomes/part-NNNNN.parquet`` files of ``rows_per_part`` rows (one file if None)."""
    outcomes = run_dir / "outcomes"
    outcomes.mkdir(parents=True, exist_ok=True)
    step = rows_per_part or max(table.num_rows, 1)
    for number, start in enumerate(range(0, table.num_rows, step)):
        pq.write_table(table.slice(start, step), outcomes / f"part-{number:05d}.parquet", compression="zstd")


def write_summary(run_dir: Path, table: pa.Table) -> None:
    """A ``summary.json`` with the counts the crawl's summary starts with (the report does not need it)."""
    counts = {row["values"]: row["counts"] for row in pc.value_counts(table["outcome"]).to_pylist()}
    summary = {"run_id": run_dir.name, "references": table.num_rows, "alive": counts.get("ok", 0),
               "outcomes": counts}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def write_run(out: Path, run_id: str, columns: Mapping[str, Sequence[Any] | pa.Array], *, series: str = "s1",
              started_at: datetime, status: str = "finished", recheck_of: str | None = None,
              only: Sequence[str] | None = None, rows_per_part: int | None = None,
              drop: Sequence[str] = ()) -> Path:
    """Write one run (manifest, outcome parts, summary) under ``out/runs/run_id``; returns its folder."""
    run_dir = out / "runs" / run_id
    table = outcome_table(columns, run_id, drop)
    write_manifest(run_dir, run_id=run_id, series=series, started_at=started_at, status=status,
                   recheck_of=recheck_of, only=only)
    write_parts(run_dir, table, rows_per_part)
    write_summary(run_dir, table)
    return run_dir


@dataclass(frozen=True, slots=True)
class HistoryShape:
    """How a synthetic history decays; the defaults are the benchmark's."""

    runs: int = 10
    references: int = 1_000_000
    domains: int = 50_000
    interval_days: float = 30.0
    alive_at_start: float = 0.88
    death_per_run: float = 0.03
    resurrect_transient: float = 0.30  # per run, for references dead of a transient failure
    resurrect_other: float = 0.01
    domain_wipeout_per_run: float = 0.001  # share of domains that go away whole in a run
    recorded_share: float = 0.7  # references whose snapshot recorded an md5
    matched_share: float = 0.0002
    rows_per_part: int = 1000  # the crawl's default part size (REFWATCH_OUTCOMES_BATCH_ROWS)


def synthesize_history(out: Path, shape: HistoryShape = HistoryShape(), *, seed: int = 0,
                       series: str = "synthetic", start: datetime = datetime(2025, 1, 1, tzinfo=UTC)) -> list[str]:
    """Write ``shape.runs`` runs of one series under ``out/runs``; returns their ids, oldest first."""
    rng = np.random.default_rng(seed)
    n = shape.references
    domain_index = _skewed_domains(rng, n, shape.domains)
    domain_names = pc.binary_join_element_wise("site", pc.cast(pa.array(np.arange(shape.domains)), pa.string()),
                                               ".example", "")
    domains = pc.take(domain_names, pa.array(domain_index))
    ip_host = pa.array(rng.random(n) < 0.002)  # an IP address is its own domain (crawler.domains)
    domains = pc.if_else(ip_host, "192.0.2.1", domains)
    ref_ids = pc.cast(pa.array(np.int64(3_000_000_000_000) + rng.permutation(n).astype(np.int64) * 7), pa.string())
    hosts = pc.if_else(ip_host, domains, pc.binary_join_element_wise("img.", domains, ""))
    urls = pc.binary_join_element_wise("https://", hosts, "/i/", ref_ids, ".jpg", "")
    recorded = rng.random(n) < shape.recorded_share
    recorded_md5 = pc.if_else(pa.array(recorded), _random_hex(rng, n, 16), pa.nulls(n, pa.string()))
    listed = rng.random(n) < shape.matched_share  # images a hash list holds
    outcome_names = np.array(["ok", *DEAD_MIX])
    dead_codes = np.arange(1, len(outcome_names))
    dead_p = np.array(list(DEAD_MIX.values()))
    dead_p = dead_p / dead_p.sum()
    transient = np.isin(outcome_names, TRANSIENT)

    state = np.where(rng.random(n) < shape.alive_at_start, 0, rng.choice(dead_codes, n, p=dead_p))
    ever_alive = np.zeros(n, dtype=bool)
    domain_gone = np.zeros(shape.domains, dtype=bool)
    run_ids = []
    for run in range(shape.runs):
        if run:
            state = _step(rng, state, domain_index, domain_gone, shape, dead_codes, dead_p, transient)
        alive = state == 0
        drift = _drift(rng, alive, ever_alive, recorded, first_run=run == 0)
        ever_alive |= alive
        changed = drift == "changed"
        live_match = alive & ((listed & ~changed) | (rng.random(n) < shape.matched_share / 20))
        started = start + timedelta(days=run * shape.interval_days)
        run_id = f"{started:%Y%m%dT%H%M%SZ}-{run:06x}"
        columns = {
            "ref_id": ref_ids,
            "url": urls,
            "outcome": pa.array(outcome_names[state]),
            "http_status": pa.array(np.where(alive, 200, 404).astype(np.int16)),
            "md5": pc.if_else(pa.array(alive), _random_hex(rng, n, 16), pa.nulls(n, pa.string())),
            "phash": pc.if_else(pa.array(alive), _random_hex(rng, n, 8), pa.nulls(n, pa.string())),
            "matched": pa.array(live_match),
            "drift": pa.array(drift, mask=drift == ""),
            "recorded_md5": recorded_md5,
            "fetched_at": pa.array(np.full(n, int(started.timestamp() * 1000)), pa.timestamp("ms", tz="UTC")),
            "domain": domains,
            "recorded_matched": pa.array(listed & recorded),
        }
        order = pa.array(rng.permutation(n))  # crawls finish references in a different order each run
        table = outcome_table(columns, run_id).take(order)
        run_dir = out / "runs" / run_id
        write_manifest(run_dir, run_id=run_id, series=series, started_at=started)
        write_parts(run_dir, table, shape.rows_per_part)
        write_summary(run_dir, table)
        run_ids.append(run_id)
    return run_ids


def _skewed_domains(rng: np.random.Generator, n: int, domains: int) -> np.ndarray:
    """A domain per reference, Zipf-like: a few hosts hold much of a web-scale dataset."""
    weights = 1.0 / np.arange(1, domains + 1) ** 1.1
    return rng.choice(domains, size=n, p=weights / weights.sum())


def _step(rng: np.random.Generator, state: np.ndarray, domain_index: np.ndarray, domain_gone: np.ndarray,
          shape: HistoryShape, dead_codes: np.ndarray, dead_p: np.ndarray, transient: np.ndarray) -> np.ndarray:
    """The next run's outcome codes: some die, a whole domain now and then, transient failures recover."""
    n = state.size
    domain_gone |= rng.random(domain_gone.size) < shape.domain_wipeout_per_run
    alive = state == 0
    dies = alive & (rng.random(n) < shape.death_per_run)
    new_state = state.copy()
    new_state[dies] = rng.choice(dead_codes, int(dies.sum()), p=dead_p)
    rate = np.where(transient[state], shape.resurrect_transient, shape.resurrect_other)
    new_state[~alive & (rng.random(n) < rate)] = 0
    new_state[domain_gone[domain_index]] = 1 + list(DEAD_MIX).index("dns_error")  # code 0 is ok
    return new_state


def _drift(rng: np.random.Generator, alive: np.ndarray, ever_alive: np.ndarray, recorded: np.ndarray,
           *, first_run: bool) -> np.ndarray:
    """Drift words of alive rows ('' for dead rows, written as null), as the crawl would assign them."""
    draw = rng.random(alive.size)
    drift = np.select([draw < 0.93, draw < 0.965, draw < 0.985], ["same", "near", "changed"], "unknown")
    comparable = recorded | ever_alive
    drift = np.where(comparable, drift, "unknown" if first_run else "new")
    return np.where(alive, drift, "")


def _random_hex(rng: np.random.Generator, n: int, nbytes: int) -> pa.Array:
    """``n`` random lowercase hex strings of ``nbytes`` bytes, built as one Arrow buffer (no row loop)."""
    raw = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    text = np.empty((n, nbytes * 2), dtype=np.uint8)
    text[:, 0::2] = digits[raw >> 4]
    text[:, 1::2] = digits[raw & 15]
    offsets = np.arange(0, (n + 1) * nbytes * 2, nbytes * 2, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text.tobytes()))
