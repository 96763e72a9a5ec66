"""The real command line in its other modes: address guard, robots.txt, DNS failure, every snapshot format,
bad input, the demo, ``scrapy crawl replay``, ``refs`` and ``hash``. All traffic stays on loopback."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from crawler.sample.web import SampleWeb
from tests.helpers import REPO_ROOT, run_refwatch
from tests.test_crawl_e2e import read_rows, write_snapshot


def crawl(tmp_path: Path, *snapshots: Path | str, extra: tuple[str, ...] = ()) -> dict[str, dict]:
    done = run_refwatch("crawl", *map(str, snapshots), "--out", str(tmp_path / "out"), "--run-id", "r",
                        "--json", "--no-progress", "--timeout", "5", *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return {row["ref_id"]: row for row in read_rows(tmp_path / "out" / "runs" / "r")}


def test_address_guard_refuses_private_addresses_by_default(web: SampleWeb, tmp_path: Path) -> None:
    port = web.base_url.rsplit(":", 1)[1]
    snapshot = write_snapshot(tmp_path / "s.csv", [
        ("loopback-literal", web.url("/img/1.jpg")),
        ("loopback-name", f"http://localhost:{port}/img/1.jpg"),
        ("metadata-service", "http://169.254.169.254/latest/meta-data/"),
        ("private", "http://10.0.0.1/x.jpg"),
        ("ipv6-loopback", f"http://[::1]:{port}/img/1.jpg"),
    ])
    rows = crawl(tmp_path, snapshot)
    assert {ref: row["outcome"] for ref, row in rows.items()} == dict.fromkeys(rows, "blocked_address")
    assert web.hits["/img/1.jpg"] == 0 or all(r["http_status"] is None for r in rows.values())


def test_robots_txt_only_when_asked(web: SampleWeb, tmp_path: Path) -> None:
    snapshot = write_snapshot(tmp_path / "s.csv", [("private", web.url("/private/1.jpg")),
                                                   ("public", web.url("/img/1.jpg"))])
    rows = crawl(tmp_path, snapshot, extra=("--allow-private-networks", "--obey-robots"))
    assert rows["private"]["outcome"] == "robots_blocked"
    assert rows["public"]["outcome"] == "ok"


def test_dns_failure_is_dns_error(tmp_path: Path) -> None:
    # A name the local resolver rejects without sending a query: the test makes no traffic off loopback.
    snapshot = write_snapshot(tmp_path / "s.csv", [("nxdomain", "http://a..b/x.jpg")])
    rows = crawl(tmp_path, snapshot, extra=("--allow-private-networks",))
    assert rows["nxdomain"]["outcome"] == "dns_error"


def _wat(path: Path, page: str, links: list[dict[str, str]]) -> Path:
    with path.open("wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        envelope = {"Envelope": {
            "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": page},
            "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Links": links}}}}}
        record = writer.create_warc_record(page, "metadata", payload=io.BytesIO(json.dumps(envelope).encode()),
                                           warc_content_type="application/json")
        writer.write_record(record)
    return path


def _warc(path: Path, page: str, html: str) -> Path:
    with path.open("wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        record = writer.create_warc_record(page, "response", payload=io.BytesIO(html.encode()),
                                           http_headers=headers)
        writer.write_record(record)
    return path


def test_every_snapshot_format_replays(web: SampleWeb, tmp_path: Path) -> None:
    page = web.url("/gallery/index.html")
    wat = _wat(tmp_path / "s.warc.wat.gz", page, [
        {"path": "IMG@/src", "url": "/img/1.jpg", "alt": "relative in WAT"},
        {"path": "A@/href", "url": "/elsewhere.html"},
    ])
    warc = _warc(tmp_path / "s.warc.gz", page,
                 "<html><body><img src='../img/2.png' alt='from warc'><img src='/status/404'></body></html>")
    table = pa.table({"SAMPLE_ID": pa.array([7, 8], pa.int64()), "URL": [web.url("/img/3.jpg"), web.url("/x")],
                      "TEXT": ["laion caption", None], "HEIGHT": [256, 1], "WIDTH": [256, 1]})
    parquet = tmp_path / "laion.parquet"
    pq.write_table(table, parquet)
    jsonl = tmp_path / "s.jsonl.gz"
    with gzip.open(jsonl, "wt") as fh:
        fh.write(json.dumps({"url": web.url("/img/4.jpg"), "caption": "jsonl"}) + "\n")
    tsv = tmp_path / "s.tsv"
    tsv.write_text(f"id\turl\n t1\t{web.url('/img/5.jpg')}\n")
    rows = crawl(tmp_path, wat, warc, parquet, jsonl, tsv, extra=("--allow-private-networks",))
    by_url = {row["url"]: row for row in rows.values()}
    assert len(rows) == 7
    assert by_url[web.url("/img/1.jpg")]["page_url"] == page
    assert by_url[web.url("/img/1.jpg")]["alt"] == "relative in WAT"
    assert by_url[web.url("/img/2.png")]["alt"] == "from warc"
    assert by_url[web.url("/status/404")]["outcome"] == "not_found"
    assert rows["7"]["alt"] == "laion caption" and rows["7"]["outcome"] == "ok"
    assert rows["8"]["outcome"] == "not_found"
    assert by_url[web.url("/img/4.jpg")]["outcome"] == "ok"
    assert all(row["outcome"] in ("ok", "not_found") for row in rows.values())


def test_corrupt_archive_record_is_skipped_counted_and_the_run_goes_on(web: SampleWeb, tmp_path: Path) -> None:
    pages = [_warc(tmp_path / f"{i}.warc.gz", web.url(f"/p{i}.html"), f"<img src='/img/{i}.jpg'>")
             for i in (1, 2, 3)]
    parts = [p.read_bytes() for p in pages]
    middle = bytearray(parts[1])
    middle[len(middle) // 2: len(middle) // 2 + 16] = b"\0" * 16  # garble the middle gzip member
    joined = tmp_path / "joined.warc.gz"
    joined.write_bytes(parts[0] + bytes(middle) + parts[2])
    done = run_refwatch("crawl", str(joined), "--out", str(tmp_path / "out"), "--run-id", "r", "--json",
                        "--no-progress", "--allow-private-networks")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["bad_records"] == 1
    assert summary["outcomes"]["ok"] == 2
    assert f"{joined}" in done.stderr and str(len(parts[0])) in done.stderr  # file and offset, logged once
    assert done.stderr.count("corrupt record") == 1


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("missing.csv", None, "missing.csv"),
        ("fake.parquet", b"url\nhttp://x/\n", "fake.parquet"),
        ("nourl.csv", b"caption,id\na,1\n", "nourl.csv"),
        ("fake.warc.gz", b"this is not a warc", "fake.warc.gz"),
    ],
)
def test_bad_snapshot_is_one_line_exit_2_nothing_written(tmp_path: Path, name: str, content: bytes | None,
                                                         needle: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out"
    done = run_refwatch("crawl", str(path), "--out", str(out), "--no-progress")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refwatch: error: ") and needle in lines[0], done.stderr
    assert not out.exists()


def test_bad_hashlist_names_file_and_line(web: SampleWeb, tmp_path: Path) -> None:
    snapshot = write_snapshot(tmp_path / "s.csv", [("a", web.url("/img/1.jpg"))])
    hashlist = tmp_path / "list.csv"
    hashlist.write_text("algorithm,hash\nmd5,00112233445566778899aabbccddeeff\nphash,nothex!\n")
    done = run_refwatch("crawl", str(snapshot), "--hashlist", str(hashlist), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert f"{hashlist}:3" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_text_hashlist_and_hash_command_build_a_list(web: SampleWeb, tmp_path: Path) -> None:
    image = tmp_path / "known.jpg"
    image.write_bytes(web.image_bytes(5))  # a list owner's own (synthetic) image
    listing = tmp_path / "built.csv"
    hashed = run_refwatch("hash", str(image), "--json", "--hashlist-out", str(listing), "--label", "test")
    assert hashed.returncode == 0, hashed.stderr
    digest = json.loads(hashed.stdout)
    assert digest["width"] == 256 and len(digest["pdq"]) == 64
    text_list = tmp_path / "dhash.txt"
    text_list.write_text(f"# dhashes\n{digest['dhash']}\n")
    snapshot = write_snapshot(tmp_path / "s.csv", [("hit", web.url("/img/5.jpg")), ("miss", web.url("/img/6.jpg"))])
    rows = crawl(tmp_path, snapshot, extra=("--allow-private-networks", "--hashlist", f"owner={listing}",
                                            "--hashlist", f"dh={text_list}", "--hashlist-algorithm", "dhash"))
    assert rows["hit"]["matched"] and rows["hit"]["match_count"] == 6  # md5 sha256 phash dhash pdq + dh list
    assert not rows["miss"]["matched"]


def test_refs_lists_without_fetching(web: SampleWeb, tmp_path: Path) -> None:
    snapshot = write_snapshot(tmp_path / "s.csv", [("a", web.url("/img/1.jpg")), ("b", "not a url")])
    before = sum(web.hits.values())
    done = run_refwatch("refs", str(snapshot), "--json")
    assert done.returncode == 0, done.stderr
    refs = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["ref_id"], r["url"]) for r in refs] == [("a", web.url("/img/1.jpg")), ("b", "not a url")]
    assert sum(web.hits.values()) == before


def test_scrapy_crawl_replay_does_the_same_job(web: SampleWeb, tmp_path: Path) -> None:
    snapshot = write_snapshot(tmp_path / "s.csv", [("a", web.url("/img/1.jpg")), ("b", web.url("/status/410"))])
    done = subprocess.run(
        [sys.executable, "-m", "scrapy", "crawl", "replay", "-a", f"snapshot={snapshot}", "-a", "run_id=scrapy",
         "-s", f"REFWATCH_OUT={tmp_path / 'out'}", "-s", "REFWATCH_ALLOW_PRIVATE_NETWORKS=True"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["ref_id"]: r["outcome"] for r in read_rows(tmp_path / "out" / "runs" / "scrapy")}
    assert rows == {"a": "ok", "b": "gone"}
    summary = json.loads((tmp_path / "out" / "runs" / "scrapy" / "summary.json").read_text())
    assert summary["outcomes"]["gone"] == 1
    manifest = json.loads((tmp_path / "out" / "runs" / "scrapy" / "manifest.json").read_text())
    assert [Path(s["path"]).name for s in manifest["snapshots"]] == ["s.csv"] and manifest["status"] == "finished"
    # No code-executing consoles in a crawler that fetches hostile content.
    assert "Telnet console listening" not in done.stderr
    assert "Remote control HTTP server listening" not in done.stderr
    assert "remote_control" not in done.stderr


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    done = run_refwatch("demo", "--out", str(tmp_path / "out"), timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "match events of this run" in done.stdout
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert events and {e["list"] for e in events} == {"demo"}
    assert {"md5", "phash", "pdq"} <= {e["algorithm"] for e in events}


def test_queue_stats(tmp_path: Path) -> None:
    done = run_refwatch("queue", "stats", "--queue", f"file://{tmp_path}/q", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"pending": 0, "in_flight": 0, "acknowledged": 0, "malformed": 0,
                                       "oldest_pending_age_seconds": None}
    table = run_refwatch("queue", "stats", "--queue", f"file://{tmp_path}/q")
    assert table.returncode == 0 and "in flight     0 events" in table.stdout


def test_unsupported_queue_is_bad_input(tmp_path: Path) -> None:
    done = run_refwatch("queue", "drain", "--queue", "gopher://x/y")
    assert done.returncode == 2 and "gopher" in done.stderr



def test_pdq_dihedral_finds_a_rotated_copy_only_when_asked(web: SampleWeb, tmp_path: Path) -> None:
    from crawler.hashing.digest import hash_bytes

    listing = tmp_path / "pdq.csv"
    listing.write_text(f"algorithm,hash,id\npdq,{hash_bytes(web.image_bytes(5)).pdq},p5\n")
    snapshot = write_snapshot(tmp_path / "s.csv", [("rotated", web.url("/rotated/5.jpg")),
                                                   ("other", web.url("/rotated/6.jpg"))])
    base = ("--allow-private-networks", "--hashlist", f"list={listing}")
    plain = crawl(tmp_path / "plain", snapshot, extra=base)
    assert plain["rotated"]["outcome"] == "ok" and not plain["rotated"]["matched"]
    dihedral = crawl(tmp_path / "dihedral", snapshot, extra=(*base, "--pdq-dihedral"))
    assert dihedral["rotated"]["matched"] and not dihedral["other"]["matched"]


def test_hashes_option_computes_only_what_is_asked(web: SampleWeb, tmp_path: Path) -> None:
    snapshot = write_snapshot(tmp_path / "s.csv", [("a", web.url("/img/1.jpg"))])
    rows = crawl(tmp_path, snapshot, extra=("--allow-private-networks", "--hashes", "sha256,PDQ"))
    row = rows["a"]
    assert row["outcome"] == "ok" and len(row["sha256"]) == 64 and len(row["pdq"]) == 64
    assert (row["md5"], row["sha1"], row["phash"], row["dhash"]) == (None, None, None, None)
    hashed = run_refwatch("hash", "--json", "--hashes", "md5", str(_image_file(web, tmp_path)))
    assert hashed.returncode == 0, hashed.stderr
    assert json.loads(hashed.stdout)["phash"] is None


def test_hashes_option_refuses_what_a_list_needs(web: SampleWeb, tmp_path: Path) -> None:
    snapshot = write_snapshot(tmp_path / "s.csv", [("a", web.url("/img/1.jpg"))])
    listing = tmp_path / "list.csv"
    listing.write_text("algorithm,hash\npdq," + "ab" * 32 + "\n")
    cases = {("--hashes", "md5,sha256", "--hashlist", str(listing)): f"{listing}: list 'list' holds pdq hashes",
             ("--hashes", "md5,crc32"): "--hashes: expected some of md5,sha1,sha256,phash,dhash,pdq",
             ("--hashes", "md5", "--pdq-dihedral"): "--pdq-dihedral needs pdq among --hashes"}
    for extra, message in cases.items():
        done = run_refwatch("crawl", str(snapshot), "--out", str(tmp_path / "out"), *extra)
        assert done.returncode == 2 and message in done.stderr, (extra, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _image_file(web: SampleWeb, folder: Path) -> Path:
    path = folder / "one.jpg"
    path.write_bytes(web.image_bytes(1))
    return path
