"""``refwatch export-clean``: a snapshot minus the references a run says to drop, in the snapshot's own format.

Dataset maintainers publish a cleaned release: the same file (Parquet with its Arrow schema and key-value
metadata, CSV/TSV with its header and dialect, JSON Lines with its original lines, gzip'd when the input is)
without the references a finished run found matched, dead, failed, placeholder, or listed in an opt-out file.

Shape, and why:

* The snapshot streams a batch at a time (``crawler.export.tables``); it is never loaded whole. The run's
  outcomes are reduced once, in Arrow, to one row per reference: ``ref_id`` and a drop code, sorted by id.
  Each batch of snapshot ids is then looked up with ``pc.search_sorted`` (a binary search: a few ms per
  8,192 ids against millions). ``pc.is_in``/``index_in`` rebuild their hash table from the whole value set
  on every call (about 1 s per call for 5M ids, measured), so they are only the fallback for a pyarrow
  without ``search_sorted``.
* Reference ids are computed exactly as the readers compute them (the id column, or ``{file name}:{row}``
  with the readers' row counting), with the file name the *run* saw, taken from the manifest entry whose
  sha256 the snapshot has: a renamed copy still lines up with its run.
* The input is checked before anything is written, and the output goes to a temporary file beside
  the target that is renamed into place at the end: an error leaves nothing half-written.

Pure module: no Scrapy, no Twisted. Errors are ``ExportError`` (one line naming the file).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Final

from crawler.export.optout import read_opt_out
from crawler.export.tables import copy_table
from crawler.export.verdicts import ExportError, ExportResult, Verdicts, parse_drop, read_run
from crawler.references import SnapshotError
from crawler.runs.history import Manifest, SnapshotFile, read_manifest

TABLE_FORMATS: Final = ("parquet", "csv", "tsv", "jsonl")
_CHUNK: Final = 1 << 20


# --- checks and the whole export ----------------------------------------------------------------------------


def table_format(path: Path) -> tuple[str, bool]:
    """The snapshot format and gzip-ness its name says; ExportError for WARC/WAT and unknown names."""
    from crawler.readers import detect_format

    try:
        fmt = str(detect_format(path))
    except SnapshotError as exc:
        raise ExportError(str(exc)) from None
    if fmt not in TABLE_FORMATS:
        raise ExportError(f"{path}: export-clean supports URL tables (Parquet, CSV, TSV, JSON Lines), "
                          f"not {fmt.upper()} archives")
    return fmt, path.name.lower().endswith(".gz")


def run_snapshot_entry(manifest: Manifest, run_dir: Path, snapshot: Path) -> SnapshotFile:
    """The manifest's entry for ``snapshot`` (by sha256; the same name first if several files match)."""
    digest = hashlib.sha256()
    with open(snapshot, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    matching = [s for s in manifest.snapshots if s.sha256 == digest.hexdigest()]
    if not matching:
        raise ExportError(f"{snapshot}: not a snapshot of run {manifest.run_id}: its sha256 matches none of the "
                          f"{len(manifest.snapshots)} snapshot files {run_dir / 'manifest.json'} lists")
    return next((s for s in matching if Path(s.path).name == snapshot.name), matching[0])


def check_run(run_dir: Path) -> Manifest:
    """The finished run's manifest; ExportError naming what is missing or unfinished."""
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    try:
        manifest = read_manifest(run_dir)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if manifest is None:
        raise ExportError(f"{run_dir / 'manifest.json'}: no such file (the run cannot be matched to a snapshot)")
    if manifest.status != "finished":
        raise ExportError(f"{run_dir / 'manifest.json'}: run {manifest.run_id} has status {manifest.status!r}, "
                          "not 'finished': its outcomes may be incomplete")
    return manifest


def check_output(snapshot: Path, out: Path, force: bool) -> None:
    fmt, gzipped = table_format(snapshot)
    try:
        out_fmt, out_gzipped = table_format(out)
    except ExportError:
        out_fmt, out_gzipped = "", False
    if (out_fmt, out_gzipped) != (fmt, gzipped):
        kind = f"gzip'd {fmt}" if gzipped else fmt
        suffix = "".join(snapshot.suffixes[-2:]) if gzipped else snapshot.suffix
        raise ExportError(f"{out}: the output must be a {kind} file like the snapshot (name it ...{suffix})")
    if out.exists() and snapshot.exists() and out.resolve() == snapshot.resolve():
        raise ExportError(f"{out}: is the snapshot itself; write the cleaned copy elsewhere")
    if out.exists() and not force:
        raise ExportError(f"{out}: already exists (use --force to replace it)")
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent}: no such directory")


def export_clean(snapshot: str | os.PathLike[str], run_dir: str | os.PathLike[str], out: str | os.PathLike[str],
                 drop: Sequence[str], *, opt_out: str | os.PathLike[str] | None = None,
                 force: bool = False) -> ExportResult:
    """Write ``out``: ``snapshot`` minus the references ``drop`` names (see ``DROP_REASONS``)."""
    from crawler.readers import open_snapshot

    snapshot, run_dir, out = Path(snapshot), Path(run_dir), Path(out)
    reasons = parse_drop(",".join(drop))
    if ("opted_out" in reasons) != (opt_out is not None):
        raise ExportError("--drop opted_out and --opt-out FILE go together")
    fmt, gzipped = table_format(snapshot)
    check_output(snapshot, out, force)
    try:
        open_snapshot(snapshot)  # the readers' own validation: no URL column, wrong compression, ...
    except SnapshotError as exc:
        raise ExportError(str(exc)) from None
    manifest = check_run(run_dir)
    entry = run_snapshot_entry(manifest, run_dir, snapshot)
    try:
        listed = read_opt_out(opt_out) if opt_out is not None else None
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    verdicts = Verdicts(read_run(run_dir, reasons), listed)
    with atomic_output(out) as handle:
        unreadable = copy_table(snapshot, fmt, gzipped, Path(entry.path).name, verdicts, handle, out)
    return verdicts.result(out, fmt, reasons, unreadable)


@contextmanager
def atomic_output(out: Path) -> Iterator[BinaryIO]:
    """A binary file beside ``out`` that becomes ``out`` only if the block succeeds (removed otherwise)."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
