"""``refwatch export-clean``: real small snapshots of every table format, a run written by the outcome schema.

Every snapshot is generated here; its run is built from what the real reader yields for it
(``open_snapshot``), so the export's own walk over the file must reproduce the readers' ids row for row:
with and without id columns, across blank lines, bad records, quoted multi-line CSV fields and Parquet
row groups.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from crawler.export.clean import export_clean
from crawler.export.verdicts import DROP_REASONS, ExportError, RunLookup, parse_drop
from crawler.runs.history import Manifest, describe_snapshots, series_id, write_manifest
from crawler.export.optout import read_opt_out
from crawler.pipelines.outcomes import OUTCOME_SCHEMA
from crawler.readers import open_snapshot
from tests.helpers import REPO_ROOT

RUN = "20260101T000000Z-abc123"


# --- the helper that writes a run ---------------------------------------------------------------------------


def write_run(out: Path, snapshots: Iterable[Path], rows: Iterable[Mapping[str, Any]], *, run_id: str = RUN,
              status: str = "finished", rows_per_part: int = 3) -> Path:
    """``out/runs/run_id``: a manifest describing ``snapshots`` (real checksums) and outcome parts holding
    ``rows`` (``ref_id``, ``url``, ``outcome`` and any other OUTCOME_SCHEMA column; the rest null)."""
    run_dir = out / "runs" / run_id
    described = describe_snapshots(snapshots)
    manifest = Manifest(run_id=run_id, series=series_id(described), snapshots=described,
                        started_at="2026-01-01T00:00:00.000000Z", status=status,
                        finished_at="2026-01-01T01:00:00.000000Z" if status == "finished" else None)
    write_manifest(run_dir, manifest)
    full = [{**{name: None for name in OUTCOME_SCHEMA.names}, "run_id": run_id, **row} for row in rows]
    parts = run_dir / "outcomes"
    parts.mkdir(parents=True)
    for number, start in enumerate(range(0, max(len(full), 1), rows_per_part)):
        table = pa.Table.from_pylist(full[start:start + rows_per_part], schema=OUTCOME_SCHEMA)
        pq.write_table(table, parts / f"part-{number:05d}.parquet", compression="zstd")
    return run_dir


def row(ref_id: str, outcome: str = "ok", **columns: Any) -> dict[str, Any]:
    return {"ref_id": ref_id, "url": f"https://x.example/{ref_id}", "outcome": outcome, **columns}


def reader_ids(path: Path) -> list[str]:
    return [ref.ref_id for ref in open_snapshot(path, on_bad_record=lambda *_: None)]


def reader_urls(path: Path) -> list[str]:
    return [ref.url for ref in open_snapshot(path, on_bad_record=lambda *_: None)]


# --- snapshots: each a list of (raw bytes, role) so expected outputs are spelled out ------------------------

CSV_NO_ID = [  # refs.csv, no id column: ids are refs.csv:<row>
    (b"url,caption\r\n", "header"),
    (b"https://a.example/0.jpg,zero\r\n", "refs.csv:0"),
    (b"\r\n", "blank"),  # not a row
    (b"https://a.example/bad.jpg,x,extra\r\n", "bad"),  # row 1, skipped by the reader
    (b'https://b.example/2.jpg,"two, with a comma"\r\n', "refs.csv:2"),
    (b'https://c.example/3.jpg,"multi\r\nline ""quoted"""\r\n', "refs.csv:3"),  # one record, two lines
    (b"https://d.example/4.jpg,four\r\n", "refs.csv:4"),
    (b"https://e.example/5.jpg,five\r\n", "refs.csv:5"),
]
JSONL_MIXED = [  # refs.jsonl: ids where the object has one (any case), refs.jsonl:<row> where not
    (b'{"url": "https://a.example/0.jpg", "ID": 7}\n', "7"),
    (b"\n", "blank"),
    (b'{"url": "https://a.example/1.jpg", "caption": "caf\xc3\xa9"}\n', "refs.jsonl:1"),
    (b"not json at all\n", "bad"),  # row 2
    (b"[1, 2]\n", "bad"),  # row 3
    (b'{"URL": "https://b.example/4.jpg", "sample_id": " s4 "}\n', "s4"),
    (b'{"url": "https://c.example/5.jpg"}', "refs.jsonl:5"),  # no newline at the end of the file
]
TSV_WITH_ID = [
    (b"SAMPLE_ID\tURL\tTEXT\n", "header"),
    (b"101\thttps://a.example/101.jpg\t\"a caption starting with a quote\n", "101"),
    (b"\n", "blank"),
    (b"102\thttps://a.example/102.jpg\n", "bad"),  # two fields where the header has three
    (b"103\thttps://b.example/103.jpg\tthree\n", "103"),
    (b"\thttps://b.example/104.jpg\tno id: name and row\n", "refs.tsv.gz:3"),  # row 3: the bad record counted
]


def write_snapshot(path: Path, records: list[tuple[bytes, str]]) -> Path:
    data = b"".join(raw for raw, _ in records)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def expected(records: list[tuple[bytes, str]], dropped: set[str]) -> bytes:
    return b"".join(raw for raw, role in records if role not in dropped)


def text_of(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


# --- text tables --------------------------------------------------------------------------------------------


def test_csv_without_ids_drops_exactly_by_row_and_copies_the_rest_byte_for_byte(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path / "refs.csv", CSV_NO_ID)
    assert reader_ids(snap) == ["refs.csv:0", "refs.csv:2", "refs.csv:3", "refs.csv:4", "refs.csv:5"]
    write_run(tmp_path, [snap], [
        row("refs.csv:0"), row("refs.csv:2", "not_found"), row("refs.csv:3", matched=True),
        row("refs.csv:4", "timeout"),  # failed, not dead: kept when only dead is dropped
    ])  # refs.csv:5 has no row: kept and counted
    out = tmp_path / "clean.csv"
    result = export_clean(snap, tmp_path / "runs" / RUN, out, ["matched", "dead"])
    assert out.read_bytes() == expected(CSV_NO_ID, {"refs.csv:2", "refs.csv:3"})
    assert (result.references, result.kept, result.not_in_run, result.unreadable) == (5, 3, 1, 1)
    assert result.dropped == {"matched": 1, "dead": 1}
    assert reader_urls(out) == ["https://a.example/0.jpg", "https://d.example/4.jpg", "https://e.example/5.jpg"]


def test_jsonl_keeps_original_lines_and_reads_ids_like_the_reader(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path / "refs.jsonl", JSONL_MIXED)
    assert reader_ids(snap) == ["7", "refs.jsonl:1", "s4", "refs.jsonl:5"]
    write_run(tmp_path, [snap], [row("7", "gone"), row("refs.jsonl:1", recorded_matched=True), row("s4"),
                                 row("refs.jsonl:5", "placeholder", placeholder_reason="known_hash")])
    out = tmp_path / "clean.jsonl"
    result = export_clean(snap, tmp_path / "runs" / RUN, out, ["matched", "placeholder", "failed"])
    assert out.read_bytes() == expected(JSONL_MIXED, {"7", "refs.jsonl:1", "refs.jsonl:5"})
    assert result.dropped == {"matched": 1, "placeholder": 1, "failed": 1}
    assert (result.kept, result.unreadable, result.not_in_run) == (1, 2, 0)


def test_gzip_in_gzip_out_round_trip(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path / "refs.tsv.gz", TSV_WITH_ID)
    assert reader_ids(snap) == ["101", "103", "refs.tsv.gz:3"]
    write_run(tmp_path, [snap], [row("101"), row("103", "dns_error"), row("refs.tsv.gz:3")])
    out = tmp_path / "clean.tsv.gz"
    result = export_clean(snap, tmp_path / "runs" / RUN, out, ["dead"])
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(out.read_bytes()) == expected(TSV_WITH_ID, {"103"})
    assert b"clean.tsv\x00" in out.read_bytes()[:40]  # the gzip header names the output, not the temporary file
    assert result.kept == 2 and reader_ids(out) == ["101", "clean.tsv.gz:2"]


def test_renamed_copy_uses_the_file_name_the_run_saw(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path / "refs.csv", CSV_NO_ID)
    write_run(tmp_path, [snap], [row(ref_id, "not_found") for ref_id in reader_ids(snap)])
    copy = tmp_path / "elsewhere" / "renamed.csv"
    copy.parent.mkdir()
    shutil.copyfile(snap, copy)
    result = export_clean(copy, tmp_path / "runs" / RUN, tmp_path / "clean.csv", ["dead"])
    assert result.dropped == {"dead": 5} and result.not_in_run == 0
    assert (tmp_path / "clean.csv").read_bytes() == expected(CSV_NO_ID, {r for _, r in CSV_NO_ID if ":" in r})


def test_opt_out_by_url_registrable_domain_and_subdomain(tmp_path: Path) -> None:
    snap = tmp_path / "refs.csv"
    urls = ["https://img.optout.example/a.jpg", "https://optout.example/b.jpg", "https://keep.example/c.jpg",
            "https://photos.partly.example/d.jpg", "https://other.partly.example/e.jpg",
            "https://keep.example/exact.jpg?x=1", "not a url"]
    snap.write_text("id,url\n" + "".join(f"r{i},{u}\n" for i, u in enumerate(urls)), encoding="utf-8")
    listed = tmp_path / "optout.txt"
    listed.write_text("# opt-out requests\n\noptout.example   # the whole site\nPHOTOS.partly.example.\n"
                      "https://keep.example/exact.jpg?x=1\n", encoding="utf-8")
    write_run(tmp_path, [snap], [row(f"r{i}") for i in range(len(urls))] + [row("r2", matched=True)])
    out = tmp_path / "clean.csv"
    result = export_clean(snap, tmp_path / "runs" / RUN, out, ["opted_out", "matched"], opt_out=listed)
    assert reader_urls(out) == ["https://other.partly.example/e.jpg", "not a url"]
    assert result.dropped == {"matched": 1, "opted_out": 4}  # r2 counts as matched, the first reason


def test_opt_out_file_errors_name_the_line(tmp_path: Path) -> None:
    listed = tmp_path / "optout.txt"
    listed.write_text("ok.example\nnot/a domain\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"optout.txt:2: neither a URL"):
        read_opt_out(listed)


# --- Parquet ------------------------------------------------------------------------------------------------


def laion_like(n: int) -> pa.Table:
    ids = np.arange(1000, 1000 + n, dtype=np.int64)
    schema = pa.schema([pa.field("SAMPLE_ID", pa.int64(), metadata={b"doc": b"row id"}),
                        ("URL", pa.string()), ("TEXT", pa.string()), ("HEIGHT", pa.int32()),
                        ("similarity", pa.float64())],
                       metadata={b"source": b"synthetic test table", b"pandas": b'{"fake": true}'})
    return pa.table([pa.array(ids), pa.array([f"https://img{i % 7}.example/{i}.jpg" for i in ids]),
                     pa.array([f"caption {i}" if i % 5 else None for i in ids]),
                     pa.array(np.full(n, 512, dtype=np.int32)), pa.array(np.linspace(0, 1, n))], schema=schema)


def test_parquet_keeps_schema_metadata_codec_and_row_group_sizes(tmp_path: Path) -> None:
    table = laion_like(1000)
    snap = tmp_path / "part-00000.parquet"
    pq.write_table(table, snap, row_group_size=300, compression="zstd")
    ids = reader_ids(snap)
    outcomes = ["not_found" if i % 3 == 0 else "ok" for i in range(len(ids))]
    rows = [row(ref_id, outcome, matched=(i == 10)) for i, (ref_id, outcome) in enumerate(zip(ids, outcomes))]
    write_run(tmp_path, [snap], rows[:-50], rows_per_part=400)  # the last 50 are not in the run
    out = tmp_path / "clean.parquet"
    result = export_clean(snap, tmp_path / "runs" / RUN, out, ["matched", "dead"])

    keep = [o == "ok" and i != 10 for i, o in enumerate(outcomes)]
    keep[-50:] = [True] * 50
    got = pq.read_table(out)
    assert got.equals(table.filter(pa.array(keep)), check_metadata=True)
    src, dst = pq.ParquetFile(snap), pq.ParquetFile(out)
    assert dst.schema_arrow.equals(src.schema_arrow, check_metadata=True)
    assert dst.schema_arrow.field("SAMPLE_ID").metadata == {b"doc": b"row id"}
    assert dst.metadata.row_group(0).column(1).compression == "ZSTD"
    sizes = [dst.metadata.row_group(i).num_rows for i in range(dst.metadata.num_row_groups)]
    assert sizes[:-1] == [300] * (len(sizes) - 1) and 0 < sizes[-1] <= 300
    assert result.dropped == {"matched": 1, "dead": 317} and result.not_in_run == 50
    assert result.kept == sum(keep) == got.num_rows


def test_parquet_without_ids_and_with_null_string_ids_counts_rows_across_row_groups(tmp_path: Path) -> None:
    n = 20
    urls = [f"https://a.example/{i}.jpg" for i in range(n)]
    no_ids = tmp_path / "noid.parquet"
    pq.write_table(pa.table({"url": urls}), no_ids, row_group_size=6)
    some_ids = tmp_path / "someid.parquet"
    cells = [None if i % 4 == 0 else (f"  s{i} " if i % 3 else "") for i in range(n)]
    pq.write_table(pa.table({"Id": cells, "url": urls}), some_ids, row_group_size=7)
    assert reader_ids(no_ids)[13] == "noid.parquet:13"
    assert reader_ids(some_ids)[:4] == ["someid.parquet:0", "s1", "s2", "someid.parquet:3"]
    for snap in (no_ids, some_ids):
        ids = reader_ids(snap)
        rows = [row(ref_id, "gone" if i % 2 else "ok") for i, ref_id in enumerate(ids)]
        run_dir = write_run(tmp_path / snap.stem, [snap], rows)
        result = export_clean(snap, run_dir, tmp_path / f"clean-{snap.name}", ["dead"])
        assert pq.read_table(tmp_path / f"clean-{snap.name}")["url"].to_pylist() == urls[::2]
        assert (result.dropped, result.not_in_run) == ({"dead": 10}, 0)


def test_every_reader_id_is_found_in_a_run_built_from_the_reader(tmp_path: Path) -> None:
    """The alignment check over every fixture: the export finds each reference the reader yields."""
    texts = {"refs.csv": CSV_NO_ID, "refs.jsonl": JSONL_MIXED, "refs.tsv.gz": TSV_WITH_ID, "refs.jsonl.gz": JSONL_MIXED}
    snaps = [write_snapshot(tmp_path / name, records) for name, records in texts.items()]
    pq.write_table(laion_like(100), tmp_path / "refs.parquet", row_group_size=33)
    snaps.append(tmp_path / "refs.parquet")
    run_dir = write_run(tmp_path, snaps, [row(r, matched=True) for s in snaps for r in reader_ids(s)])
    for snap in snaps:
        out = tmp_path / "out" / snap.name
        out.parent.mkdir(exist_ok=True)
        result = export_clean(snap, run_dir, out, ["matched"])
        assert (result.dropped["matched"], result.not_in_run, result.kept) == (len(reader_ids(snap)), 0, 0)


# --- errors and atomicity -----------------------------------------------------------------------------------


def test_damaged_gzip_fails_midway_and_leaves_nothing_behind(tmp_path: Path) -> None:
    lines = [b"url\n"] + [f"https://a.example/{i}.jpg\n".encode() for i in range(5000)]
    whole = gzip.compress(b"".join(lines))
    snap = tmp_path / "big.csv.gz"
    snap.write_bytes(whole[: len(whole) // 2])  # the header reads; the stream ends early further on
    write_run(tmp_path, [snap], [row("big.csv.gz:0", "not_found")])
    out = tmp_path / "dst" / "clean.csv.gz"
    out.parent.mkdir()
    with pytest.raises(ExportError, match=r"big\.csv\.gz: damaged gzip data after line \d+"):
        export_clean(snap, tmp_path / "runs" / RUN, out, ["dead"])
    assert list(out.parent.iterdir()) == []


def test_a_line_longer_than_the_readers_read_fails_the_export_and_leaves_nothing(tmp_path: Path) -> None:
    from crawler.readers.base import MAX_LINE_BYTES

    snap = tmp_path / "long.csv"
    snap.write_bytes(b"url,caption\nhttps://a.example/0.jpg,ok\nhttps://a.example/1.jpg," + b"x" * (MAX_LINE_BYTES + 5)
                     + b"\nhttps://a.example/2.jpg,ok\n")
    write_run(tmp_path, [snap], [row("long.csv:0", "not_found")])
    out = tmp_path / "dst" / "clean.csv"
    out.parent.mkdir()
    with pytest.raises(ExportError, match=r"long\.csv: line 3 is longer than 8 MiB"):
        export_clean(snap, tmp_path / "runs" / RUN, out, ["dead"])
    assert list(out.parent.iterdir()) == []


def test_existing_output_needs_force(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path / "refs.csv", CSV_NO_ID)
    write_run(tmp_path, [snap], [row("refs.csv:0", "gone")])
    out = tmp_path / "clean.csv"
    out.write_bytes(b"precious")
    with pytest.raises(ExportError, match=r"clean\.csv: already exists \(use --force"):
        export_clean(snap, tmp_path / "runs" / RUN, out, ["dead"])
    assert out.read_bytes() == b"precious"
    export_clean(snap, tmp_path / "runs" / RUN, out, ["dead"], force=True)
    assert out.read_bytes() == expected(CSV_NO_ID, {"refs.csv:0"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.csv", "refs.csv", "runs"]


def test_lookup_without_search_sorted_gives_the_same_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    lookup = RunLookup(pa.array(sorted(["a", "b", "é", "日本", ""])), pa.array([5, 0, 3, 4, 2], pa.int8()))
    needles = pa.array(["b", "zz", "日本", "", "a", "é"])
    fast = lookup.lookup(needles)
    monkeypatch.delattr(pc, "search_sorted", raising=False)
    assert lookup.lookup(needles).tolist() == fast.tolist() == [3, 6, 2, 5, 0, 4]


def test_parse_drop() -> None:
    assert parse_drop("dead,matched") == ("matched", "dead")  # precedence order, not the order given
    assert set(DROP_REASONS) == {"matched", "dead", "failed", "placeholder", "opted_out"}
    with pytest.raises(ExportError, match="unknown word 'alive'"):
        parse_drop("dead,alive")


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crawler.cli.export", "export-clean", *map(str, args)],
                          capture_output=True, text=True, timeout=60, cwd=cwd, check=False,
                          env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})


def test_command_line_prints_counts_and_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path / "refs.csv", CSV_NO_ID)
    write_run(tmp_path, [snap], [row("refs.csv:0", "not_found"), row("refs.csv:2", matched=True)])
    write_run(tmp_path, [snap], [], run_id="unfinished", status="running")
    other = tmp_path / "other.csv"
    other.write_bytes(b"url\nhttps://z.example/1.jpg\n")
    warc = tmp_path / "crawl.warc.gz"
    warc.write_bytes(b"")
    runs = ["--runs-dir", tmp_path]

    done = cli(snap, "--run", RUN, "--drop", "matched,dead", "--out", tmp_path / "clean.csv", *runs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3 of 5 references kept, 2 dropped" in done.stdout
    assert "dropped matched" in done.stdout and "kept, not in run" in done.stdout

    bad_inputs = {
        "no such run directory": (snap, "--run", "nope", "--drop", "dead", "--out", tmp_path / "a.csv", *runs),
        "not a snapshot of run": (other, "--run", RUN, "--drop", "dead", "--out", tmp_path / "a.csv", *runs),
        "unknown word 'alive'": (snap, "--run", RUN, "--drop", "dead,alive", "--out", tmp_path / "a.csv", *runs),
        "already exists": (snap, "--run", RUN, "--drop", "dead", "--out", tmp_path / "clean.csv", *runs),
        "supports URL tables": (warc, "--run", RUN, "--drop", "dead", "--out", tmp_path / "a.warc.gz", *runs),
        "status 'running'": (snap, "--run", "unfinished", "--drop", "dead", "--out", tmp_path / "a.csv", *runs),
        "must be a csv file": (snap, "--run", RUN, "--drop", "dead", "--out", tmp_path / "a.parquet", *runs),
        "go together": (snap, "--run", RUN, "--drop", "opted_out", "--out", tmp_path / "a.csv", *runs),
    }
    for words, args in bad_inputs.items():
        failed = cli(*args, cwd=tmp_path)
        assert failed.returncode == 2, (words, failed.stdout, failed.stderr)
        assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("refwatch: error: "), failed.stderr
        assert words in failed.stderr, failed.stderr
        assert not (tmp_path / "a.csv").exists() and not list(tmp_path.glob(".a.*"))


def test_run_json_summary_is_not_needed(tmp_path: Path) -> None:
    """export-clean reads the manifest and the outcome parts only (a run without summary.json works)."""
    snap = write_snapshot(tmp_path / "refs.jsonl", JSONL_MIXED)
    run_dir = write_run(tmp_path, [snap], [row("7", "gone")])
    assert not (run_dir / "summary.json").exists()
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "finished"
    assert export_clean(snap, run_dir, tmp_path / "c.jsonl", ["dead"]).dropped == {"dead": 1}
