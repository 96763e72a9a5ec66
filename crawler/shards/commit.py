"""Shard attempts and their create-only commit markers: the first attempt to commit a shard wins.

Each attempt writes its outcome parts under its own folder, ``runs/<id>/shards/<shard>/<attempt>/``, so two
attempts of one shard (a worker presumed dead that was only slow, a retry after a crash) never mix rows.
When its parts are written (and uploaded, for an ``s3://`` output) the attempt commits by creating
``runs/<id>/shards/<shard>/commit.json`` *create-only* — an exclusive hard link locally, ``PutObject`` with
``If-None-Match: *`` on S3 — so exactly one attempt of a shard is ever committed, whatever Redis or a parent
process believed. A loser discards its folder. The marker holds what the end-of-run pass needs: which
attempt, its part files, its rows and its counters (the shard's share of the run's stats).
"""

from __future__ import annotations

import json
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crawler.runs.context import RunContext
from crawler.storage.base import NoSuchKey, ObjectStore, PreconditionFailed
from crawler.storage.local import LocalStore

COMMIT_FILE = "commit.json"


@dataclass(frozen=True, slots=True)
class ShardCommit:
    shard_id: str
    attempt: str
    rows: int  # outcome rows written
    refs_read: int  # references read from the shard's range (rows + skipped by a re-check)
    bad_records: int  # corrupt records skipped (no row)
    parts: tuple[str, ...]  # part file names in the attempt folder, in write order
    stats: dict[str, Any] = field(default_factory=dict)  # the attempt's refwatch/* counters
    committed_at: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["parts"] = list(self.parts)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardCommit:
        return cls(shard_id=str(data["shard_id"]), attempt=str(data["attempt"]), rows=int(data["rows"]),
                   refs_read=int(data["refs_read"]), bad_records=int(data["bad_records"]),
                   parts=tuple(data["parts"]), stats=dict(data.get("stats", {})),
                   committed_at=str(data.get("committed_at", "")))


def new_attempt_id() -> str:
    """Unique per attempt and sortable by start time: ``a20261207T031500Z-3f9a1c``."""
    return f"a{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def shard_prefix(run_id: str, shard_id: str) -> str:
    return f"runs/{run_id}/shards/{shard_id}/"


def attempt_dir(run: RunContext, shard_id: str, attempt: str) -> Path:
    """Where an attempt writes its parts (the staging copy of an ``s3://`` output)."""
    return run.run_dir / "shards" / shard_id / attempt


def run_store(run: RunContext) -> ObjectStore:
    """The store the run's output lives in: the S3 one, or the output folder itself."""
    return run.remote.store if run.remote is not None else LocalStore(run.out_dir)


def commit_shard(store: ObjectStore, run_id: str, commit: ShardCommit) -> bool:
    """Create the shard's commit marker if no attempt has; ``False`` when another attempt committed first."""
    if not commit.committed_at:
        commit = ShardCommit(**{**asdict(commit), "parts": commit.parts,
                                "committed_at": datetime.now(UTC).isoformat().replace("+00:00", "Z")})
    data = (json.dumps(commit.to_json(), indent=1) + "\n").encode()
    try:
        store.put(shard_prefix(run_id, commit.shard_id) + COMMIT_FILE, data, if_none_match=True)
    except PreconditionFailed:
        return False
    return True


def read_commit(store: ObjectStore, run_id: str, shard_id: str) -> ShardCommit | None:
    try:
        data = store.get(shard_prefix(run_id, shard_id) + COMMIT_FILE).data
    except NoSuchKey:
        return None
    return ShardCommit.from_json(json.loads(data))


def read_commits(store: ObjectStore, run_id: str) -> dict[str, ShardCommit]:
    """Every committed shard of the run, by shard id (one listing, then one read per marker)."""
    found: dict[str, ShardCommit] = {}
    for info in store.list(f"runs/{run_id}/shards/"):
        parts = info.key.split("/")
        if len(parts) == 5 and parts[4] == COMMIT_FILE:
            commit = read_commit(store, run_id, parts[3])
            if commit is not None:
                found[commit.shard_id] = commit
    return found


def discard_attempt(run: RunContext, shard_id: str, attempt: str) -> None:
    """A losing or abandoned attempt's parts go, locally and (for an ``s3://`` output) in the store."""
    shutil.rmtree(attempt_dir(run, shard_id, attempt), ignore_errors=True)
    if run.remote is not None:
        prefix = f"{shard_prefix(run.run_id, shard_id)}{attempt}/"
        for info in list(run.remote.store.list(prefix)):
            run.remote.store.delete(info.key)
