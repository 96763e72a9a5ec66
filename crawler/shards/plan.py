"""The plan of a sharded run: which references each shard holds, fixed before any work starts.

A shard is a row range of a splittable snapshot (Parquet: at most ``shard_size`` rows, read without the rows
before it) or one whole file of the other formats (CSV/TSV/JSON Lines and WAT/WARC archives are read from their
start). A Parquet file is cut into equal shards (sizes differ by a row at most), as few as ``shard_size``
allows, and their number is rounded up to a multiple of ``split`` (``crawl --processes``): 50,000 rows at
20,000 for two processes are four shards of 12,500, not 20,000 + 20,000 + a 10,000-row tail that one core
crawls alone while the other waits. The last file's last ``split`` shards are cut smaller (halves, quarters,
eighths; ``tapered_ranges``) so that the processes finish together. Shard ids follow the snapshot order
(``s00000``, ``s00001``, ...), so planning the same snapshots with the same shard size (and split) always gives
the same shards — which is what lets a lost Redis stream be re-planned, and a shard's attempts be compared. The
plan is written once, as ``runs/<id>/plan.json``, before any shard starts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crawler.readers import open_snapshot

#: Rows per shard of a Parquet snapshot: at ~3-10 ms of CPU a reference, 20,000 rows are one to three
#: minutes of one core — long enough that a child crawl's start-up (~2.5 s of CPU) is a few per cent, short
#: enough that a lost attempt costs little.
DEFAULT_SHARD_SIZE = 20_000
PLAN_FILE = "plan.json"
#: The smallest shard the tapered end of a ``--processes`` plan cuts (see ``tapered_ranges``): a couple of
#: seconds of one core, against a forked child's ~0.1 s of start and commit.
MIN_TAPER_ROWS = 250


class PlanError(ValueError):
    """A plan that cannot be used (unreadable, or not the plan of these snapshots)."""


@dataclass(frozen=True, slots=True)
class Shard:
    """``references`` rows of ``path`` from row ``start`` (``stop`` exclusive; both ``None`` for a whole
    file, whose count is then only known when it has been read)."""

    shard_id: str
    path: str
    start: int | None = None
    stop: int | None = None
    references: int | None = None

    @property
    def whole_file(self) -> bool:
        return self.start is None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Shard:
        return cls(shard_id=str(data["shard_id"]), path=str(data["path"]), start=data.get("start"),
                   stop=data.get("stop"), references=data.get("references"))


@dataclass(frozen=True, slots=True)
class Plan:
    run_id: str
    shard_size: int
    shards: tuple[Shard, ...]

    @property
    def references(self) -> int | None:
        """Planned references over all shards, or ``None`` when a whole-file shard's count is unknown."""
        counts = [s.references for s in self.shards]
        return None if None in counts else sum(c for c in counts if c is not None)

    def shard(self, shard_id: str) -> Shard:
        for shard in self.shards:
            if shard.shard_id == shard_id:
                return shard
        raise PlanError(f"run {self.run_id}: no shard {shard_id!r} in its plan")

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "shard_size": self.shard_size, "references": self.references,
                "shards": [s.to_json() for s in self.shards]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        try:
            return cls(run_id=str(data["run_id"]), shard_size=int(data["shard_size"]),
                       shards=tuple(Shard.from_json(s) for s in data["shards"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"not a refwatch shard plan: {exc}") from None


def plan_shards(run_id: str, paths: Sequence[str], shard_size: int = DEFAULT_SHARD_SIZE, split: int = 1) -> Plan:
    """Cut the snapshots into shards, in order: Parquet files into equal shards of at most ``shard_size`` rows,
    as many as a multiple of ``split``; other files whole."""
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, not {shard_size}")
    cuts: list[tuple[str, list[tuple[int, int]] | None]] = []  # per file: its row ranges, or None: whole
    for path in paths:
        snapshot = open_snapshot(path)
        total = snapshot.total
        ranges = equal_ranges(total, shard_size, split) if snapshot.splittable and total is not None else None
        cuts.append((str(path), ranges))
    planned = sum(1 if ranges is None else len(ranges) for _, ranges in cuts)
    if split > 1 and planned >= 2 * split and cuts[-1][1] is not None:  # at least two rounds: taper the last
        cuts[-1] = (cuts[-1][0], tapered_ranges(cuts[-1][1], split))
    shards: list[Shard] = []
    for path, ranges in cuts:
        if ranges is None:
            shards.append(Shard(f"s{len(shards):05d}", path))
        for start, stop in ranges or ():
            shards.append(Shard(f"s{len(shards):05d}", path, start, stop, stop - start))
    return Plan(run_id=run_id, shard_size=shard_size, shards=tuple(shards))


def equal_ranges(total: int, most: int, split: int = 1) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``total`` rows: as few as hold at most ``most`` rows each, their number
    rounded up to a multiple of ``split`` when there are several (rows that fit one range stay one: a small
    file is not worth more processes' start-up), never more ranges than rows, sizes differing by a row at most."""
    count = -(-total // most)
    if count > 1:
        count = min(total, -(-count // max(1, split)) * max(1, split))
    return [(i * total // count, (i + 1) * total // count) for i in range(count)]


def tapered_ranges(ranges: list[tuple[int, int]], split: int) -> list[tuple[int, int]]:
    """``ranges`` with the rows of their last ``split`` cut into ``split`` ranges of a half, ``split`` of a
    quarter, ``split`` of an eighth and ``split`` of an eighth of one range's rows (stopping where a piece
    would hold fewer than ``MIN_TAPER_ROWS``).

    The parent hands shards out in order to whichever process is free, so processes run out of work at most
    one shard apart; with equal shards the last ones to finish leave the other cores idle for up to a whole
    shard (20,000 rows: minutes). Ending on smaller shards bounds that idle tail by the smallest, as OpenMP's
    "guided" schedule does, for ~0.1 s of start and commit per extra shard."""
    if split < 2 or len(ranges) < split:
        return list(ranges)
    head, tail = ranges[:-split], ranges[-split:]
    start, stop = tail[0][0], tail[-1][1]
    rows = stop - start
    shares: list[int] = []  # eighths of the tail's rows, per round of ``split`` pieces: 4, 2, 1, 1
    for share in (4, 2, 1):
        if rows * share // (8 * split) < MIN_TAPER_ROWS:
            break
        shares.append(share)
    if not shares:
        return list(ranges)
    shares.append(8 - sum(shares))  # the rest of the tail, in one last round
    pieces: list[tuple[int, int]] = []
    done = 0  # eighths of the tail cut so far
    for share in shares:
        for i in range(split):
            lo = start + rows * (done * split + i * share) // (8 * split)
            hi = start + rows * (done * split + (i + 1) * share) // (8 * split)
            pieces.append((lo, hi))
        done += share
    return head + pieces


def write_plan(run_dir: Path, plan: Plan) -> Path:
    """``runs/<id>/plan.json``, written whole (temporary name, then renamed)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / PLAN_FILE
    tmp = path.with_name(f".{PLAN_FILE}.tmp")
    tmp.write_text(json.dumps(plan.to_json(), indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_plan(run_dir: Path) -> Plan:
    path = run_dir / PLAN_FILE
    try:
        return Plan.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise PlanError(f"{path}: no shard plan (was the run seeded?)") from None
    except json.JSONDecodeError as exc:
        raise PlanError(f"{path}: not JSON: {exc}") from None
