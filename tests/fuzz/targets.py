"""The fuzz targets: a strategy of damaged files per parser of untrusted input, and the property they all keep.

The property, for a snapshot: ``open_snapshot`` either raises ``SnapshotError`` whose message is one line
that starts with the file's path, or returns a snapshot whose iteration completes, yielding ``Reference``s
and reporting every skipped record to ``on_bad_record`` with the file's path, a non-negative position and a
one-line reason. For a hash list: ``load_hashlists`` either raises ``HashListError`` (one line, starting with
the path) or returns lists whose every entry reads back as lowercase hex of its algorithm's length. Any other
exception is a crasher. Hangs are caught by the caller (pytest-timeout, or ``bench/fuzz.py``'s alarm).

``check(case)`` returns a short ``Outcome`` for statistics; it raises on a violation.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from crawler.matching.hashlist import HEX_DIGITS, HashListError
from crawler.matching.loading import load_hashlists
from crawler.readers import open_snapshot
from crawler.references import Reference, SnapshotError
from tests.fuzz.archives import archive_case
from tests.fuzz.tables import Case, delimited_case, hashlist_case, jsonl_case, parquet_case

#: Control characters a one-line message must not hold (a newline splits a log line; ESC and CSI drive terminals).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
#: Stop iterating a snapshot after this many references (generated files hold far fewer; a bug may not).
MAX_REFERENCES = 100_000


class PropertyViolation(AssertionError):
    """A fuzz input broke the property (as opposed to a crash, which is any other exception)."""


@dataclass(frozen=True)
class Outcome:
    """What one input did: ``error`` (refused with a clear error) or ``read``, with counts."""

    kind: str
    references: int = 0
    bad_records: int = 0
    message: str = ""

    @property
    def label(self) -> str:
        """A coarse bucket for statistics: the error's first words, or how the read went."""
        if self.kind == "error":
            reason = self.message.split(": ", 1)[-1]
            return "error: " + " ".join(re.sub(r"[0-9]+", "N", reason).split()[:4])
        return f"read, {'bad records' if self.bad_records else 'no bad records'}"


def check_one_line(message: str, path: str, what: str) -> None:
    """``message`` is one line without control characters, and starts with ``path`` (it names the file)."""
    if _CONTROL.search(message):
        raise PropertyViolation(f"{what} holds a control character or newline: {message!r}")
    if not message.startswith(path):
        raise PropertyViolation(f"{what} does not start with the file's path {path!r}: {message!r}")


class BadRecordCounter:
    """An ``on_bad_record`` that checks and counts what it is told."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0

    def __call__(self, path: str, where: int, reason: str) -> None:
        if path != self.path:
            raise PropertyViolation(f"bad record reported for {path!r}, not {self.path!r}")
        if not isinstance(where, int) or where < 0:
            raise PropertyViolation(f"bad record position {where!r} is not a non-negative int")
        if not isinstance(reason, str) or not reason.strip():
            raise PropertyViolation(f"bad record without a reason: {reason!r}")
        check_one_line(f"{path}: {reason}", path, "bad-record reason")
        self.count += 1


def _check_reference(ref: object) -> None:
    if not isinstance(ref, Reference):
        raise PropertyViolation(f"iteration yielded {type(ref).__name__}, not a Reference")
    if not isinstance(ref.url, str) or not isinstance(ref.ref_id, str) or not ref.ref_id:
        raise PropertyViolation(f"reference with a non-text url or empty id: {ref!r}")
    for value in (ref.page_url, ref.alt, ref.recorded_md5, ref.recorded_sha256, ref.recorded_phash):
        if value is not None and not isinstance(value, str):
            raise PropertyViolation(f"reference field of type {type(value).__name__}: {ref!r}")
    for digest in (ref.recorded_md5, ref.recorded_sha256, ref.recorded_phash):
        if digest is not None and not re.fullmatch(r"[0-9a-f]+", digest):
            raise PropertyViolation(f"recorded hash is not lowercase hex: {ref!r}")


def check_snapshot(case: Case) -> Outcome:
    """Write the case to a temporary file, open and read it all; raise on any broken promise."""
    with tempfile.TemporaryDirectory(prefix="refwatch-fuzz-") as folder:
        path = Path(folder) / case.name
        path.write_bytes(case.data)
        bad = BadRecordCounter(str(path))
        try:
            snapshot = open_snapshot(path, on_bad_record=bad)
        except SnapshotError as exc:
            check_one_line(str(exc), str(path), "SnapshotError")
            return Outcome("error", message=str(exc))
        references = 0
        for ref in snapshot:
            _check_reference(ref)
            references += 1
            if references >= MAX_REFERENCES:
                raise PropertyViolation(f"more than {MAX_REFERENCES} references from a {len(case.data)}-byte file")
        if "rows" in case.options and snapshot.splittable:
            start, stop = case.options["rows"]
            for ref in snapshot.rows(start, stop):
                _check_reference(ref)
        return Outcome("read", references, bad.count)


def check_hashlist(case: Case) -> Outcome:
    """Write the case to a temporary file and load it as a hash list; raise on any broken promise."""
    with tempfile.TemporaryDirectory(prefix="refwatch-fuzz-") as folder:
        path = Path(folder) / case.name
        path.write_bytes(case.data)
        try:
            (hashlist,) = load_hashlists([str(path)], case.options.get("algorithm"),
                                         skip_bad_lines=case.options.get("skip_bad_lines", False))
        except HashListError as exc:
            check_one_line(str(exc), str(path), "HashListError")
            return Outcome("error", message=str(exc))
        entries = 0
        for entry in hashlist.entries:
            if len(entry.hash) != HEX_DIGITS[entry.algorithm] or not re.fullmatch(r"[0-9a-f]+", entry.hash):
                raise PropertyViolation(f"entry {entries} is not {entry.algorithm} hex of its length")
            if not isinstance(entry.entry_id, str) or not entry.entry_id:
                raise PropertyViolation(f"entry {entries} has no id")
            entries += 1
        if entries != len(hashlist) or entries == 0:
            raise PropertyViolation(f"{entries} entries read back from a list of {len(hashlist)}")
        for line, reason in hashlist.bad_line_samples:
            check_one_line(f"{path}:{line}: {reason}", str(path), "bad-line reason")
        return Outcome("read", entries, hashlist.bad_lines)


@dataclass(frozen=True)
class Target:
    name: str
    strategy: st.SearchStrategy[Case]
    check: Callable[[Case], Outcome]


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target("csv", delimited_case("csv"), check_snapshot),
        Target("tsv", delimited_case("tsv"), check_snapshot),
        Target("jsonl", jsonl_case(), check_snapshot),
        Target("parquet", parquet_case(), check_snapshot),
        Target("warc", archive_case(wat=False), check_snapshot),
        Target("wat", archive_case(wat=True), check_snapshot),
        Target("hashlist", hashlist_case(), check_hashlist),
    )
}
