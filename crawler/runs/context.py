"""Where a run's outputs go, decided once per crawl.

A run is keyed by its id: redoing a run with the same id overwrites its outputs instead of adding to
them, so a retried piece of work never duplicates rows or events.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crawler.runs.history import Manifest, describe_snapshots, parameters_for_manifest, series_id, write_manifest
from crawler.storage.factory import store_options
from crawler.storage.remote import RemoteOutputs, is_remote, staging_dir


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id: UTC start time plus a short random suffix."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class RunContext:
    """Where a run's outputs go: ``out_dir`` locally, and with ``remote`` also an object store (``--out s3://``),
    ``out_dir`` then being its staging copy (``crawler.storage.remote``)."""

    run_id: str
    out_dir: Path
    queue_url: str
    remote: RemoteOutputs | None = None
    out_url: str | None = None

    def publish(self, path: Path) -> None:
        """A file of this run is complete: upload it when the output is remote (nothing to do locally)."""
        if self.remote is not None:
            self.remote.upload(path)

    def pull(self, prefix: str) -> None:
        """Make the output's files under ``prefix`` (e.g. an earlier run's) present locally."""
        if self.remote is not None:
            self.remote.pull(prefix)

    @property
    def run_location(self) -> str:
        """The run's folder as the user named the output: a path, or an s3:// URL."""
        if self.out_url is not None:
            return f"{self.out_url.rstrip('/')}/runs/{self.run_id}"
        return str(self.run_dir)

    @property
    def run_dir(self) -> Path:
        return self.out_dir / "runs" / self.run_id

    @property
    def outcomes_dir(self) -> Path:
        return self.run_dir / "outcomes"

    @property
    def summary_path(self) -> Path:
        return self.run_dir / "summary.json"


def run_context(out: str | os.PathLike[str], run_id: str | None, queue_url: str | None,
                settings: Any = None) -> RunContext:
    """The run's outputs: ``out`` a folder or ``s3://BUCKET/PREFIX`` (then ``settings`` give the S3 options
    and ``REFWATCH_STAGING_DIR``); the queue defaults to ``OUT/queue`` in either case."""
    if is_remote(out):
        out_url = str(out)
        options = store_options(settings)
        staging = staging_dir(out_url, settings.get("REFWATCH_STAGING_DIR") if settings is not None else None)
        remote = RemoteOutputs.open(out_url, staging, options)
        queue = queue_url or f"{out_url.rstrip('/')}/queue"
        return RunContext(run_id=run_id or new_run_id(), out_dir=staging, queue_url=queue, remote=remote,
                          out_url=out_url)
    out_dir = Path(out)
    queue = queue_url or f"file://{(out_dir / 'queue').resolve()}"
    return RunContext(run_id=run_id or new_run_id(), out_dir=out_dir, queue_url=queue)



def utc_now() -> str:
    """Now as ISO-8601 UTC with a ``Z``, to the microsecond (manifests order runs by it)."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def start_manifest(run: RunContext, settings: Any, snapshot_paths: list[str]) -> Manifest:
    """Describe the snapshot files (checksums: they name the series) and write the manifest as running."""
    snapshots = describe_snapshots(snapshot_paths)
    manifest = Manifest(run_id=run.run_id, series=series_id(snapshots), snapshots=snapshots,
                        started_at=utc_now(), parameters=parameters_for_manifest(settings),
                        recheck_of=settings.get("REFWATCH_RECHECK_RUN"),
                        only=settings.getlist("REFWATCH_RECHECK_ONLY") or None)
    write_manifest(run.run_dir, manifest)
    run.publish(run.run_dir / "manifest.json")
    return manifest


def finish_manifest(run: RunContext, manifest: Manifest) -> None:
    manifest.finished_at = utc_now()
    manifest.status = "finished"
    write_manifest(run.run_dir, manifest)
    run.publish(run.run_dir / "manifest.json")

