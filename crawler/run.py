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

from crawler.history import Manifest, describe_snapshots, parameters_for_manifest, series_id, write_manifest


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id: UTC start time plus a short random suffix."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class RunContext:
    run_id: str
    out_dir: Path
    queue_url: str

    @property
    def run_dir(self) -> Path:
        return self.out_dir / "runs" / self.run_id

    @property
    def outcomes_dir(self) -> Path:
        return self.run_dir / "outcomes"

    @property
    def summary_path(self) -> Path:
        return self.run_dir / "summary.json"


def run_context(out: str | os.PathLike[str], run_id: str | None, queue_url: str | None) -> RunContext:
    out_dir = Path(out)
    queue = queue_url or f"file://{(out_dir / 'queue').resolve()}"
    return RunContext(run_id=run_id or new_run_id(), out_dir=out_dir, queue_url=queue)


def utc_now() -> str:
    """Now as ISO-8601 UTC with a ``Z``, to the microsecond (manifests order runs by it)."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def start_manifest(run: RunContext, settings: Any) -> Manifest:
    """Describe the snapshot files (checksums: they name the series) and write the manifest as running."""
    snapshots = describe_snapshots(settings.getlist("REFWATCH_SNAPSHOTS"))
    manifest = Manifest(run_id=run.run_id, series=series_id(snapshots), snapshots=snapshots,
                        started_at=utc_now(), parameters=parameters_for_manifest(settings),
                        recheck_of=settings.get("REFWATCH_RECHECK_RUN"),
                        only=settings.getlist("REFWATCH_RECHECK_ONLY") or None)
    write_manifest(run.run_dir, manifest)
    return manifest


def finish_manifest(run: RunContext, manifest: Manifest) -> None:
    manifest.finished_at = utc_now()
    manifest.status = "finished"
    write_manifest(run.run_dir, manifest)


def placeholder_rules(settings: Any) -> Any:
    """The placeholder rules the settings ask for: the shipped known list plus the user's, and thresholds."""
    from crawler.placeholders import PlaceholderRules, read_known

    known = read_known()
    user_list = settings.get("REFWATCH_PLACEHOLDERS")
    if user_list:
        known = known.merged(read_known(user_list))
    return PlaceholderRules(known=known, min_urls=settings.getint("REFWATCH_PLACEHOLDER_MIN_URLS"),
                            min_redirects=settings.getint("REFWATCH_PLACEHOLDER_MIN_REDIRECTS"))
