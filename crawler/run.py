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
