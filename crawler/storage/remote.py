"""Run outputs on S3 (``--out s3://BUCKET/PREFIX``): a local staging folder mirrored to an object store.

Every component that writes or reads a run (the outcome writer, the end-of-run pass, the summary, the
manifest, re-checks) works on a local folder. With an ``s3://`` output that folder is a staging copy under
``REFWATCH_STAGING_DIR``: each file a run writes is uploaded whole as soon as it is complete (parts as they
are written, the manifest and summary when they change), and what a run reads of earlier runs (manifests to
find its series, their outcome parts for drift, a re-checked run) is downloaded first. Keys are the same
relative paths as on disk (``runs/<run_id>/outcomes/part-00000.parquet``), so an S3 output and a local one
have one layout, and a redo (same run id) overwrites its keys and deletes parts the redo did not write.

The staging folder holds outcome rows and manifests only, never a fetched body; it doubles as a cache of the
series' earlier runs for the next run on this machine.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from crawler.storage.base import NoSuchKey, ObjectStore, RetryingStore, StoreError, content_etag
from crawler.storage.factory import open_store

logger = logging.getLogger(__name__)


def is_remote(out: str | os.PathLike[str]) -> bool:
    return str(out).lower().startswith("s3://")


def staging_dir(out_url: str, base: str | None = None) -> Path:
    """The local folder mirroring ``out_url``: ``<base>/<bucket>/<prefix>`` (base: the temp folder)."""
    parts = urlsplit(out_url)
    root = Path(base) if base else Path(tempfile.gettempdir()) / "refwatch-staging"
    return root / parts.netloc / parts.path.strip("/")


class RemoteOutputs:
    """Uploads a staging folder's files to a store, and downloads what a run needs of earlier runs."""

    def __init__(self, store: ObjectStore, staging: Path) -> None:
        self.store = store
        self.staging = staging

    @classmethod
    def open(cls, out_url: str, staging: Path, options: dict[str, Any]) -> RemoteOutputs:
        return cls(RetryingStore(open_store(out_url, **options)), staging)

    @property
    def url(self) -> str:
        return self.store.url

    def key(self, path: Path) -> str:
        return path.resolve().relative_to(self.staging.resolve()).as_posix()

    def upload(self, path: Path) -> None:
        """Put the whole file at its relative key (the store writes it whole or not at all)."""
        self.store.put(self.key(path), path.read_bytes())

    def delete_stale(self, prefix: str, keep: set[str]) -> int:
        """Delete the keys under ``prefix`` not in ``keep`` (a redo's parts from the earlier attempt)."""
        stale = [info.key for info in self.store.list(prefix) if info.key not in keep]
        for key in stale:
            self.store.delete(key)
        return len(stale)

    def pull(self, prefix: str) -> int:
        """Download every key under ``prefix`` into the staging folder (atomically per file) unless the copy
        there is already the same (by etag); returns how many were downloaded."""
        count = 0
        for info in self.store.list(prefix):
            target = self.staging / info.key
            if info.etag and target.is_file() and info.etag.strip('"') == content_etag(target.read_bytes()):
                continue
            try:
                data = self.store.get(info.key).data
            except NoSuchKey:
                continue  # deleted since it was listed
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
            count += 1
        return count

    def pull_manifests(self) -> int:
        """Every run's manifest (small): enough to find a series and its runs."""
        count = 0
        runs = {info.key.split("/")[1] for info in self.store.list("runs/") if info.key.endswith("/manifest.json")}
        for run_id in sorted(runs):
            count += self.pull(f"runs/{run_id}/manifest.json")
        return count


def local_copy(out: str, prefix: str, *, endpoint_url: str | None = None, staging_base: str | None = None) -> Path:
    """A local folder holding what ``out`` has under ``prefix`` (``runs/`` for the report, one run for
    export-clean): ``out`` itself when it is a folder, else its staging copy, brought up to date from S3."""
    if not is_remote(out):
        return Path(out)
    staging = staging_dir(out, staging_base)
    RemoteOutputs.open(out, staging, {"endpoint_url": endpoint_url}).pull(prefix)
    return staging


def check_remote(out_url: str, options: dict[str, Any]) -> None:
    """Reach the output store before crawling: a wrong bucket, endpoint or credentials is bad input."""
    open_store(out_url, **options).check()


__all__ = ["RemoteOutputs", "StoreError", "check_remote", "is_remote", "local_copy", "staging_dir"]
