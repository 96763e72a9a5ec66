"""Run history: each run's manifest, and the runs of one snapshot ("a series") in time order.

``<out>/runs/<run_id>/manifest.json`` records what a run replayed (each snapshot file's path, size and
sha256), its parameters, its start and end and its status. Runs whose snapshot files have the same
checksums form a series, whatever the files are called or wherever they lie, so a snapshot copied to
another machine continues its series. A snapshot on S3 is described by what S3 says without reading it
(its ETag and size, ``"checksum": "s3-etag"`` in its entry, ``sha256`` null): the same object keeps its
series; a local copy of it is another series (its checksum is a sha256), and so may be the same bytes
uploaded again (a multipart upload's ETag depends on its part size). The attrition report, drift and
placeholder detection read the history through here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from crawler.storage.inputs import default_inputs, is_s3_url

logger = logging.getLogger(__name__)

MANIFEST_FORMAT: Final = "refwatch-run"
MANIFEST_VERSION: Final = 1
MANIFEST_NAME: Final = "manifest.json"
_CHUNK: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    path: str
    size: int
    sha256: str | None  # None for an object on S3, which is named by its ETag instead
    etag: str | None = None

    @property
    def checksum(self) -> str:
        """What names this file's content in a series id: its sha256, or an S3 object's ETag and size."""
        if self.sha256 is not None:
            return self.sha256
        return f"s3-etag:{self.etag}:{self.size}"


@dataclass(slots=True)
class Manifest:
    """What ``manifest.json`` holds; ``finished_at`` is None and ``status`` "running" until the run ends."""

    run_id: str
    series: str
    snapshots: list[SnapshotFile]
    started_at: str
    parameters: dict[str, Any] = field(default_factory=dict)
    finished_at: str | None = None
    status: str = "running"
    recheck_of: str | None = None
    only: list[str] | None = None

    def to_json(self) -> str:
        data = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "run_id": self.run_id,
                "series": self.series, "snapshots": [vars_of(s) for s in self.snapshots],
                "started_at": self.started_at, "finished_at": self.finished_at, "status": self.status,
                "parameters": self.parameters, "recheck_of": self.recheck_of, "only": self.only}
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Manifest:
        """Parse a manifest; ValueError naming ``where`` if it is not one this refwatch reads."""
        try:
            data = json.loads(text)
            if data.get("format") != MANIFEST_FORMAT or data.get("version") != MANIFEST_VERSION:
                raise ValueError("not a refwatch run manifest of version 1")
            return cls(run_id=str(data["run_id"]), series=str(data["series"]),
                       snapshots=[_snapshot_file(s) for s in data["snapshots"]],
                       started_at=str(data["started_at"]), parameters=dict(data.get("parameters") or {}),
                       finished_at=data.get("finished_at"), status=str(data.get("status", "running")),
                       recheck_of=data.get("recheck_of"), only=data.get("only"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{where}: bad run manifest ({exc})") from None


def vars_of(snapshot: SnapshotFile) -> dict[str, Any]:
    if snapshot.sha256 is None:
        return {"path": snapshot.path, "size": snapshot.size, "sha256": None, "etag": snapshot.etag,
                "checksum": S3_CHECKSUM}
    return {"path": snapshot.path, "size": snapshot.size, "sha256": snapshot.sha256}


#: A manifest entry's ``checksum`` for an S3 object: its ETag and size, as S3 gave them (the object not read).
S3_CHECKSUM: Final = "s3-etag"


def _snapshot_file(entry: dict[str, Any]) -> SnapshotFile:
    if entry.get("checksum") == S3_CHECKSUM:
        return SnapshotFile(str(entry["path"]), int(entry["size"]), None, str(entry["etag"]))
    return SnapshotFile(str(entry["path"]), int(entry["size"]), str(entry["sha256"]))


def describe_snapshots(paths: Iterable[str | os.PathLike[str]], *, inputs: Any = None) -> list[SnapshotFile]:
    """Each snapshot file's absolute path, size and sha256 (read once, in 1 MiB chunks); for an ``s3://``
    URL, its ETag and size from one HEAD through ``inputs`` (an ``S3Inputs``; default: the process's)."""
    described = []
    for path in paths:
        if is_s3_url(path):
            stat = (inputs or default_inputs()).stat(str(path))
            described.append(SnapshotFile(str(path), stat.size, None, stat.etag))
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        described.append(SnapshotFile(str(Path(path).resolve()), os.path.getsize(path), digest.hexdigest()))
    return described


def series_id(snapshots: Sequence[SnapshotFile]) -> str:
    """The series a set of snapshot files belongs to: a digest of their checksums (order and names ignored)."""
    joined = "\n".join(sorted(s.checksum for s in snapshots))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def outcome_parts(run_dir: Path) -> list[Path]:
    """A run's outcome files, in order: ``outcomes/part-*.parquet`` (crawl-time parts, then final ones)."""
    return sorted((run_dir / "outcomes").glob("part-*.parquet"))


def write_manifest(run_dir: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically (a reader sees the old one or the new one)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / MANIFEST_NAME
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, target)


def read_manifest(run_dir: Path) -> Manifest | None:
    """The run's manifest, or None if it has none (a run from before manifests); ValueError if damaged."""
    path = run_dir / MANIFEST_NAME
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    return Manifest.from_json(text, str(path))


def series_runs(out: Path, series: str, *, finished_only: bool = True,
                before: str | None = None) -> list[Manifest]:
    """The runs of ``series`` under ``out`` in start order (those that finished, unless told otherwise);
    ``before``: only runs that started before the run of that id. Damaged manifests are skipped, logged."""
    runs = []
    root = out / "runs"
    if not root.is_dir():
        return []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            manifest = read_manifest(run_dir)
        except ValueError as exc:
            logger.warning("Skipping run %s: %s", run_dir.name, exc)
            continue
        if manifest is None or manifest.series != series:
            continue
        if finished_only and manifest.status != "finished":
            continue
        runs.append(manifest)
    runs.sort(key=lambda m: (m.started_at, m.run_id))
    if before is not None:
        own = next((m.started_at for m in runs if m.run_id == before), None)
        runs = [m for m in runs if m.run_id != before and (own is None or m.started_at < own)]
    return runs


def parameters_for_manifest(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings worth recording about a run (what changes its answers), as JSON-safe values."""
    keep = ("REFWATCH_HASHLISTS", "REFWATCH_RADII", "REFWATCH_PDQ_DIHEDRAL", "REFWATCH_PDQ_MIN_QUALITY",
            "DOWNLOAD_TIMEOUT", "RETRY_TIMES", "ROBOTSTXT_OBEY", "CONCURRENT_REQUESTS",
            "CONCURRENT_REQUESTS_PER_DOMAIN", "DOWNLOAD_MAXSIZE", "REFWATCH_MAX_PIXELS", "USER_AGENT",
            "REFWATCH_ALLOW_PRIVATE_NETWORKS", "REFWATCH_ALLOW_NETWORKS")
    return {name.lower(): _json_safe(settings.get(name)) for name in keep if name in settings}


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, Iterable):
        return [_json_safe(v) for v in value]
    return str(value)
