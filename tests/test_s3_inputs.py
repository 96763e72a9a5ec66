"""Snapshots and hash lists as ``s3://`` URLs, against a real S3 endpoint (moto_server on loopback).

A counting proxy sits between refwatch and moto and records every request (method, key, Range, bytes sent
back), so the tests can show what a read costs: a Parquet shard fetches a footer and its own row groups, a
cached copy is fetched once per machine and then only looked at with HEADs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawler.matching.compiled import compile_hashlist
from crawler.matching.loading import load_hashlists
from crawler.readers import open_snapshot
from crawler.readers.remote import use_remote_snapshots
from crawler.runs.history import describe_snapshots, series_id
from crawler.shards.plan import plan_shards
from crawler.storage.base import StoreError
from crawler.storage.inputs import S3Inputs
from tests.helpers import free_port, run_refwatch
from tests.s3server import FaultProxy, _ProxyHandler

# --- a proxy that counts ------------------------------------------------------------------------------------


class _CountingHandler(_ProxyHandler):
    server: CountingProxy

    def _handle(self) -> None:
        self._range = self.headers.get("Range")
        super()._handle()

    def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes, length: str | None = None) -> None:
        self.server.record(self.command, self.path.split("?")[0], self._range, status,
                           0 if self.command == "HEAD" else len(data))
        super()._answer(status, headers, data, length)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class CountingProxy(FaultProxy):
    """Forwards to moto and records ``(method, path, range, status, body bytes)`` for each request."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.RequestHandlerClass = _CountingHandler
        self.requests: list[tuple[str, str, str | None, int, int]] = []
        self._count_lock = threading.Lock()

    def record(self, method: str, path: str, range_: str | None, status: int, size: int) -> None:
        with self._count_lock:
            self.requests.append((method, path, range_, status, size))

    def take(self) -> list[tuple[str, str, str | None, int, int]]:
        with self._count_lock:
            taken, self.requests = self.requests, []
        return taken


def _gets(requests: list[tuple[str, str, str | None, int, int]], key: str = "") -> list[tuple[str | None, int]]:
    return [(range_, size) for method, path, range_, _, size in requests if method == "GET" and path.endswith(key)]


@pytest.fixture()
def proxy(s3_server) -> Iterator[CountingProxy]:
    with CountingProxy(s3_server.port) as counting:
        yield counting


@pytest.fixture()
def bucket(s3_server) -> str:
    return s3_server.new_bucket()


@pytest.fixture()
def no_installed_remote() -> Iterator[None]:
    """Whatever a test installs as the process's remote snapshots is undone afterwards."""
    previous = use_remote_snapshots(None)
    try:
        yield
    finally:
        use_remote_snapshots(previous)


def _put(s3_server, bucket: str, key: str, path: Path) -> str:
    s3_server.client().upload_file(str(path), bucket, key)
    return f"s3://{bucket}/{key}"


def _table(path: Path, rows: int, row_group_size: int) -> Path:
    """URLs and captions plus an incompressible column no reference needs, in row groups."""
    rng = __import__("random").Random(7)
    pq.write_table(pa.table({
        "SAMPLE_ID": pa.array(range(rows), pa.int64()),
        "URL": [f"http://img.example.test/{i}/{rng.getrandbits(64):016x}.jpg" for i in range(rows)],
        "TEXT": [f"caption {i} " + rng.randbytes(40).hex() for i in range(rows)],
        "EMBEDDING": [rng.randbytes(600) for _ in range(rows)],
    }), path, row_group_size=row_group_size)
    return path


def _refs(snapshot) -> list[tuple]:
    return [(r.ref_id, r.url, r.page_url, r.alt) for r in snapshot]


# --- Parquet: plans from footers, shards by ranged reads ---------------------------------------------------


def test_parquet_on_s3_plans_and_reads_row_ranges_like_the_local_file(
        s3_server, proxy: CountingProxy, bucket: str, tmp_path: Path, no_installed_remote: None) -> None:
    local = _table(tmp_path / "part-00000.parquet", 3000, row_group_size=1000)
    url = _put(s3_server, bucket, "laion/part-00000.parquet", local)
    size = local.stat().st_size
    inputs = S3Inputs(proxy.endpoint, tmp_path / "cache")
    use_remote_snapshots(inputs.snapshots())  # plan_shards opens snapshots by name, as the runner has it
    proxy.take()

    plan = plan_shards("r", [url], shard_size=700)
    planned = proxy.take()
    assert [(s.start, s.stop, s.references) for s in plan.shards] == [
        (s.start, s.stop, s.references) for s in plan_shards("r", [str(local)], shard_size=700).shards]
    assert {s.path for s in plan.shards} == {url}
    # planning: one HEAD and the footer (pyarrow reads the last 64 KiB), nothing else
    assert [m for m, *_ in planned] == ["HEAD", "GET"]
    assert sum(size for _, size in _gets(planned)) <= 64 << 10 < size

    remote, whole = open_snapshot(url, remote=inputs.snapshots()), open_snapshot(local)
    assert remote.total == whole.total == 3000 and remote.splittable
    expected = _refs(whole)
    assert _refs(remote) == expected
    for start, stop in [(0, 1), (999, 1001), (1200, 1300), (2100, None), (700, 1400), (2999, 3000)]:
        assert _refs(remote.rows(start, stop)) == expected[start:stop], (start, stop)

    # A shard inside the second row group: a fresh process reads a HEAD, the footer and that group's
    # URL, TEXT and id column chunks (never the EMBEDDING column, nor the other groups).
    proxy.take()
    fresh = open_snapshot(url, remote=S3Inputs(proxy.endpoint, tmp_path / "cache").snapshots())
    assert _refs(fresh.rows(1200, 1300)) == expected[1200:1300]
    requests = proxy.take()
    gets = _gets(requests)
    fetched = sum(size for _, size in gets)
    assert all(range_ and range_.startswith("bytes=") for range_, _ in gets)  # no GET of the whole object
    assert [m for m, *_ in requests].count("HEAD") == 1
    group = pq.ParquetFile(local).metadata.row_group(1)
    needed = sum(group.column(i).total_compressed_size for i in range(group.num_columns)
                 if group.column(i).path_in_schema != "EMBEDDING")
    assert fetched < size / 8, (fetched, size)
    assert len(gets) == 1 + 3 and fetched <= (64 << 10) + needed, (gets, needed)  # the footer, once
    print(f"\nshard of 100 rows in row group 1 of 3: {len(gets)} GETs, {fetched} of {size} bytes")

    # Every read is pinned to the version first looked at: an object replaced mid-run fails the read
    # (the shard is tried again) instead of mixing two files' rows.
    _put(s3_server, bucket, "laion/part-00000.parquet", _table(tmp_path / "other.parquet", 3000, 500))
    with pytest.raises(StoreError, match="changed while it was being read"):
        list(fresh.rows(2100, 2200))


# --- other formats: one local copy per machine ------------------------------------------------------------


def test_csv_wat_and_warc_on_s3_give_the_local_references_from_one_download(
        s3_server, proxy: CountingProxy, bucket: str, tmp_path: Path, realdata: Path) -> None:
    csv = tmp_path / "refs.csv"
    csv.write_text("url,caption\nhttp://a.example.test/1.jpg,one\nhttp://a.example.test/2.jpg,\n"
                   "http://a.example.test/3.jpg,three\n", encoding="utf-8")
    wat = realdata / "commoncrawl" / "whirlwind.warc.wat.gz"  # read in place, uploaded here
    warc = realdata / "commoncrawl" / "whirlwind.warc.gz"
    cache = tmp_path / "cache"
    inputs = S3Inputs(proxy.endpoint, cache)
    for local, key in [(csv, "in/refs.csv"), (wat, "cc/whirlwind.warc.wat.gz"), (warc, "cc/whirlwind.warc.gz")]:
        url = _put(s3_server, bucket, key, local)
        proxy.take()
        snapshot = open_snapshot(url, remote=inputs.snapshots())
        assert snapshot.format == open_snapshot(local).format and not snapshot.splittable
        assert _refs(snapshot) == _refs(open_snapshot(local)), key  # ids from the same file name
        first = proxy.take()
        assert [size for _, size in _gets(first)] == [local.stat().st_size], key  # downloaded once, whole
        # another process on this machine: a HEAD to check the ETag, no GET
        again = open_snapshot(url, remote=S3Inputs(proxy.endpoint, cache).snapshots())
        assert _refs(again) == _refs(open_snapshot(local))
        assert [m for m, *_ in proxy.take()] == ["HEAD"], key
    assert len(_refs(open_snapshot(warc))) > 0  # the WARC has references; the tutorial's WAT has none
    copies = sorted(p.name for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock")
    assert copies == ["refs.csv", "whirlwind.warc.gz", "whirlwind.warc.wat.gz"]

    # a new version of the object is a new copy; the cached one is not used for it
    csv.write_text("url\nhttp://a.example.test/4.jpg\n", encoding="utf-8")
    url = _put(s3_server, bucket, "in/refs.csv", csv)
    assert _refs(open_snapshot(url, remote=S3Inputs(proxy.endpoint, cache).snapshots())) == [
        ("refs.csv:0", "http://a.example.test/4.jpg", None, None)]


def test_refs_command_reads_s3_snapshots(s3_server, bucket: str, tmp_path: Path) -> None:
    local = _table(tmp_path / "t.parquet", 50, row_group_size=20)
    url = _put(s3_server, bucket, "t.parquet", local)
    env = {"REFWATCH_INPUT_CACHE": str(tmp_path / "cache")}
    remote = run_refwatch("refs", url, "--json", "--s3-endpoint-url", s3_server.endpoint, env=env)
    here = run_refwatch("refs", str(local), "--json")
    assert remote.returncode == 0, remote.stderr[-2000:]
    assert remote.stdout == here.stdout and len(remote.stdout.splitlines()) == 50


# --- hash lists ------------------------------------------------------------------------------------------------


def _entries(hashlist) -> list[tuple]:
    return [(e.algorithm, e.hash, e.entry_id, e.label) for e in hashlist.entries]


def test_hash_lists_on_s3_load_like_local_ones_and_come_from_the_cache_after(
        s3_server, proxy: CountingProxy, bucket: str, tmp_path: Path) -> None:
    text = tmp_path / "plain.txt"
    text.write_text("".join(f"{i:032x}\n" for i in range(1, 40)), encoding="utf-8")
    known = tmp_path / "known.csv"
    known.write_text("algorithm,hash,id,label\n" + "".join(
        f"phash,{i * 7919:016x},img{i},l{i % 3}\n" for i in range(1, 200)), encoding="utf-8")
    compile_hashlist(known)
    text_url = _put(s3_server, bucket, "lists/plain.txt", text)
    known_url = _put(s3_server, bucket, "lists/known.csv", known)
    _put(s3_server, bucket, "lists/known.csv.rwidx", tmp_path / "known.csv.rwidx")
    local = load_hashlists([str(text), f"k={known}"], "md5")
    assert local[1].from_cache  # the local list uses its compiled file

    cache = tmp_path / "cache"
    proxy.take()
    lists = load_hashlists([text_url, f"k={known_url}"], "md5", remote=S3Inputs(proxy.endpoint, cache))
    assert [h.name for h in lists] == ["plain", "k"] and [h.path for h in lists] == [text_url, known_url]
    assert [_entries(h) for h in lists] == [_entries(h) for h in local]
    assert not lists[0].from_cache and lists[1].from_cache  # the compiled list is mapped from the cache copy
    assert sorted(path.rsplit("/", 1)[-1] for method, path, *_ in proxy.take() if method == "GET") == [
        "known.csv", "known.csv.rwidx", "plain.txt"]

    again = load_hashlists([text_url, f"k={known_url}"], "md5", remote=S3Inputs(proxy.endpoint, cache))
    assert [_entries(h) for h in again] == [_entries(h) for h in local] and again[1].from_cache
    assert {m for m, *_ in proxy.take()} == {"HEAD"}  # a cache hit: ETags looked at, no body fetched

    # A compiled file older than its list was made from an earlier version: it is not used (parsed instead).
    time.sleep(1.1)  # S3's Last-Modified has one-second resolution
    known.write_text(known.read_text(encoding="utf-8") + "phash,00000000000000ff,new,\n", encoding="utf-8")
    _put(s3_server, bucket, "lists/known.csv", known)
    (fresh,) = load_hashlists([f"k={known_url}"], remote=S3Inputs(proxy.endpoint, cache))
    assert not fresh.from_cache and len(fresh) == len(local[1]) + 1


def test_hashlist_commands_take_s3_lists_and_compile_beside_them(s3_server, bucket: str, tmp_path: Path) -> None:
    known = tmp_path / "known.csv"
    known.write_text("algorithm,hash,id,label\n" + "".join(
        f"phash,{i * 7919:016x},img{i},l{i % 3}\n" for i in range(1, 200)), encoding="utf-8")
    url = _put(s3_server, bucket, "lists/known.csv", known)
    env = {"REFWATCH_INPUT_CACHE": str(tmp_path / "cache")}
    endpoint = ("--s3-endpoint-url", s3_server.endpoint)

    stats = run_refwatch("hashlist", "stats", url, "--json", *endpoint, env=env)
    assert stats.returncode == 0, stats.stderr[-2000:]
    report = json.loads(stats.stdout)
    assert (report["path"], report["entries"], report["from_cache"]) == (url, {"phash": 199}, False)

    compiled = run_refwatch("hashlist", "compile", url, *endpoint, env=env)
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    assert f"{url} -> {url}.rwidx: 199 entries" in compiled.stdout
    # a new cache (another worker): the list comes with its compiled file, mapped instead of parsed
    other = {"REFWATCH_INPUT_CACHE": str(tmp_path / "cache2")}
    again = run_refwatch("hashlist", "stats", url, "--json", *endpoint, env=other)
    assert json.loads(again.stdout)["from_cache"] is True

    matched = run_refwatch("hashlist", "match", url, "--hash", f"phash:{7919:016x}", "--json", *endpoint, env=other)
    assert matched.returncode == 0 and json.loads(matched.stdout.splitlines()[0])["entry_id"] == "img1"

    missing = run_refwatch("hashlist", "stats", f"s3://{bucket}/lists/none.csv", *endpoint, env=env)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such object" in missing.stderr


# --- manifests ---------------------------------------------------------------------------------------------------


def test_manifest_names_an_s3_snapshot_by_etag_and_size_without_reading_it(
        s3_server, proxy: CountingProxy, bucket: str, tmp_path: Path) -> None:
    local = _table(tmp_path / "m.parquet", 10, row_group_size=10)
    url = _put(s3_server, bucket, "m.parquet", local)
    proxy.take()
    (entry,) = described = describe_snapshots([url], inputs=S3Inputs(proxy.endpoint, tmp_path / "cache"))
    assert [m for m, *_ in proxy.take()] == ["HEAD"]
    assert entry.path == url and entry.size == local.stat().st_size and entry.sha256 is None and entry.etag
    assert series_id(described) == series_id(describe_snapshots([url], inputs=S3Inputs(s3_server.endpoint)))
    assert series_id(described) != series_id(describe_snapshots([local]))
    from crawler.runs.history import Manifest

    manifest = Manifest("r", series_id(described), described, "2026-01-01T00:00:00Z")
    data = json.loads(manifest.to_json())
    assert data["snapshots"] == [{"path": url, "size": entry.size, "sha256": None, "etag": entry.etag,
                                  "checksum": "s3-etag"}]
    assert Manifest.from_json(manifest.to_json(), "m").snapshots == described

    # a local file's entry and series id are what they always were: its sha256, and a digest of those
    import hashlib

    (here,) = describe_snapshots([local])
    file_sha = hashlib.sha256(local.read_bytes()).hexdigest()
    assert (here.sha256, here.etag, here.checksum) == (file_sha, None, file_sha)
    assert series_id([here]) == hashlib.sha256(file_sha.encode()).hexdigest()[:16]
    assert json.loads(Manifest("r", "s", [here], "t").to_json())["snapshots"] == [
        {"path": str(local.resolve()), "size": local.stat().st_size, "sha256": file_sha}]


# --- a sharded crawl of an s3:// snapshot -------------------------------------------------------------------------


def _crawl_snapshot(web, path: Path, n: int) -> Path:
    urls = [web.url("/status/404") if i % 5 == 3 else web.url(f"/img/{i}.jpg") for i in range(n)]
    pq.write_table(pa.table({"SAMPLE_ID": pa.array(range(n), pa.int64()), "URL": urls}), path, row_group_size=16)
    return path


def test_crawl_of_an_s3_parquet_snapshot_with_processes_gives_the_local_outcomes(
        web, s3_server, bucket: str, tmp_path: Path) -> None:
    local = _crawl_snapshot(web, tmp_path / "snap.parquet", 40)
    url = _put(s3_server, bucket, "snapshots/snap.parquet", local)
    hashes = tmp_path / "known.txt"
    hashes.write_text("0" * 32 + "\n", encoding="utf-8")
    list_url = _put(s3_server, bucket, "lists/known.txt", hashes)
    common = ("--out", str(tmp_path / "out"), "--allow-private-networks", "--json", "--no-progress",
              "--hashlist-algorithm", "md5", "-s", f"REFWATCH_INPUT_CACHE={tmp_path / 'cache'}")
    there = run_refwatch("crawl", url, "--run-id", "s3", "--s3-endpoint-url", s3_server.endpoint,
                         "--hashlist", f"known={list_url}", "--processes", "2", "--shard-size", "16", *common,
                         timeout=240)
    assert there.returncode == 0, there.stderr[-3000:]
    here = run_refwatch("crawl", str(local), "--run-id", "local", "--hashlist", f"known={hashes}",
                        "--processes", "1", *common, timeout=240)
    assert here.returncode == 0, here.stderr[-3000:]
    summary_there, summary_here = json.loads(there.stdout), json.loads(here.stdout)
    assert summary_there["shards"] == 4  # 40 rows, at most 16 a shard, in a multiple of 2 processes
    assert summary_there["references"] == summary_here["references"] == 40
    assert summary_there["outcomes"] == summary_here["outcomes"]
    assert summary_there["outcomes"]["not_found"] == 8
    run_dir = tmp_path / "out" / "runs" / "s3"
    rows = pq.read_table(run_dir / "outcomes").sort_by("ref_id")
    assert rows.column("ref_id").to_pylist() == sorted(f"{i}" for i in range(40))
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["snapshots"][0]["path"] == url and manifest["snapshots"][0]["checksum"] == "s3-etag"
    assert json.loads((run_dir / "plan.json").read_text(encoding="utf-8"))["shards"][0]["path"] == url
    assert [p.name for p in (tmp_path / "cache").rglob("known.txt")] == ["known.txt"]  # -s REFWATCH_INPUT_CACHE


# --- S3 having a bad moment ----------------------------------------------------------------------------------------


def test_transient_failures_are_retried_and_a_lasting_one_fails_the_read(
        s3_server, bucket: str, tmp_path: Path) -> None:
    local = _table(tmp_path / "t.parquet", 300, row_group_size=100)
    url = _put(s3_server, bucket, "t.parquet", local)
    csv = tmp_path / "r.csv"
    csv.write_text("url\nhttp://a.example.test/1.jpg\n", encoding="utf-8")
    csv_url = _put(s3_server, bucket, "r.csv", csv)
    with FaultProxy(s3_server.port) as faults:
        inputs = S3Inputs(faults.endpoint, tmp_path / "cache", sleep=lambda _: None)
        faults.inject([503, "drop"], method="HEAD")  # queued faults go to the requests the last inject names
        snapshot = open_snapshot(url, remote=inputs.snapshots())
        faults.inject([503, "drop", 500], method="GET")
        assert _refs(snapshot.rows(150, 160)) == _refs(open_snapshot(local))[150:160]
        faults.inject([503, "drop"], method="GET")
        assert _refs(open_snapshot(csv_url, remote=inputs.snapshots())) == _refs(open_snapshot(csv))
        assert faults.injected == 7
        # S3 gone for good mid-shard: the read fails (not a skipped "corrupt" row group)
        faults.failing = 503
        with pytest.raises(StoreError, match="503"):
            list(snapshot.rows(0, 300))


# --- bad input: one line naming the URL, exit status 2 ------------------------------------------------------------


def test_missing_objects_buckets_credentials_and_endpoints_are_one_line_and_exit_2(
        s3_server, bucket: str, tmp_path: Path) -> None:
    local = _table(tmp_path / "ok.parquet", 5, row_group_size=5)
    ok = _put(s3_server, bucket, "ok.parquet", local)
    secret = "Sekr1t-never-printed-0123456789abcdef"
    env = {"AWS_ACCESS_KEY_ID": "AKIANEVERPRINTED0001", "AWS_SECRET_ACCESS_KEY": secret,
           "REFWATCH_INPUT_CACHE": str(tmp_path / "cache")}
    endpoint = ("--s3-endpoint-url", s3_server.endpoint)
    out = tmp_path / "out"
    crawl = ("crawl", "--out", str(out), "--allow-private-networks", "--processes", "2", *endpoint)
    cases = [
        (crawl + (f"s3://{bucket}/no/such.parquet",), f"s3://{bucket}/no/such.parquet", "no such object"),
        (crawl + ("s3://no-such-bucket-here/a.csv",), "s3://no-such-bucket-here/a.csv", "does not exist"),
        (crawl + (ok, "--hashlist", f"s3://{bucket}/lists/none.csv"), f"s3://{bucket}/lists/none.csv",
         "no such object"),
        (("refs", f"s3://{bucket}/ok.parquet", "--s3-endpoint-url", f"http://127.0.0.1:{free_port()}"),
         f"s3://{bucket}/ok.parquet", "cannot reach the S3 endpoint"),
    ]
    for args, named, reason in cases:
        result = run_refwatch(*args, env=env)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0] and reason in lines[0], lines
        assert secret not in result.stderr + result.stdout and "AKIANEVERPRINTED0001" not in result.stderr
    assert not (out / "runs").exists()  # nothing written, nothing fetched

    no_credentials = {**env, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    result = run_refwatch("refs", ok, *endpoint, env=no_credentials)
    assert result.returncode == 2 and result.stderr.strip() == (
        f"refwatch: error: {ok}: no usable AWS credentials (environment, profile or role)")


def test_bad_urls_are_refused_before_any_request(tmp_path: Path) -> None:
    inputs = S3Inputs("http://127.0.0.1:9", tmp_path)
    for url, reason in [("s3://Bad_Bucket/a.csv", "not a valid S3 bucket name"),
                        ("s3://bucket/dir/", "names no object"), ("s3://bucket/..", "names no object")]:
        with pytest.raises(StoreError, match=reason):
            inputs.stat(url)
    from crawler.references import SnapshotError

    with pytest.raises(SnapshotError, match="unsupported URL scheme 'https'"):
        open_snapshot("https://example.test/a.csv")
    with pytest.raises(SnapshotError, match="needs S3 access"):
        previous = use_remote_snapshots(None)
        try:
            open_snapshot("s3://bucket/a.csv")
        finally:
            use_remote_snapshots(previous)
    assert os.listdir(tmp_path) == []
