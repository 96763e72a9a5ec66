"""The object store contract, the same tests on a local folder and on S3 (moto_server on loopback)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from crawler.storage.local import LocalStore
from crawler.storage.base import (
    NoSuchKey,
    ObjectStore,
    PreconditionFailed,
    RetryingStore,
    StoreError,
    TransientStoreError,
    content_etag,
)
from crawler.storage.factory import open_store
from crawler.storage.s3 import S3Store
from tests.helpers import free_port


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store(f"file://{tmp_path}/store")
    s3 = request.getfixturevalue("s3_server")
    return open_store(f"s3://{s3.new_bucket()}/some/prefix", endpoint_url=s3.endpoint)


def test_put_get_delete(store: ObjectStore) -> None:
    etag = store.put("a/b.json", b"hello")
    assert etag == content_etag(b"hello")
    got = store.get("a/b.json")
    assert (got.data, got.etag) == (b"hello", etag)
    assert store.put("a/b.json", b"again") == content_etag(b"again")  # a plain put replaces
    store.delete("a/b.json")
    store.delete("a/b.json")  # absent already is fine
    with pytest.raises(NoSuchKey):
        store.get("a/b.json")
    store.check()


def test_conditional_writes(store: ObjectStore) -> None:
    first = store.put("lease.json", b"one", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("lease.json", b"two", if_none_match=True)
    second = store.put("lease.json", b"two", if_match=first)
    with pytest.raises(PreconditionFailed):
        store.put("lease.json", b"three", if_match=first)  # stale etag
    with pytest.raises(PreconditionFailed):
        store.put("missing.json", b"x", if_match=second)  # the version named is not there
    assert store.get("lease.json").data == b"two"
    with pytest.raises(ValueError):
        store.put("lease.json", b"x", if_none_match=True, if_match=second)


def test_list_sorted_prefix_start_after(store: ObjectStore) -> None:
    for key in ("b/2", "b/1", "a/x/y", "b/10", "bb", "c"):
        store.put(key, key.encode())
    assert [i.key for i in store.list()] == ["a/x/y", "b/1", "b/10", "b/2", "bb", "c"]
    assert [i.key for i in store.list("b/")] == ["b/1", "b/10", "b/2"]
    assert [i.key for i in store.list("b")] == ["b/1", "b/10", "b/2", "bb"]
    assert [i.key for i in store.list("b/", start_after="b/10")] == ["b/2"]
    info = next(iter(store.list("c")))
    assert info.size == 1 and info.last_modified.tzinfo is not None
    assert info.etag in (None, content_etag(b"c"))


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", ".hidden", "a/.tmp", "a\\b"])
def test_invalid_keys(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, b"x")


def test_s3_listing_paginates(s3_server) -> None:
    store = open_store(f"s3://{s3_server.new_bucket()}/p", endpoint_url=s3_server.endpoint)
    assert isinstance(store, S3Store)
    for n in range(5):
        store.put(f"k{n}", b"x")
    calls = []
    store.client.meta.events.register("before-send.s3.ListObjectsV2", lambda **kw: calls.append(1))
    store.page_size = 2
    assert [i.key for i in store.list()] == [f"k{n}" for n in range(5)]
    assert len(calls) == 3


def test_s3_server_side_encryption(s3_server) -> None:
    bucket = s3_server.new_bucket()
    store = open_store(f"s3://{bucket}/p", endpoint_url=s3_server.endpoint, sse="aws:kms",
                       sse_kms_key_id="alias/refwatch-test")
    store.put("x", b"secret-free")
    head = s3_server.client().head_object(Bucket=bucket, Key="p/x")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"].endswith("alias/refwatch-test")
    open_store(f"s3://{bucket}/q", endpoint_url=s3_server.endpoint, sse="AES256").put("y", b"y")
    assert s3_server.client().head_object(Bucket=bucket, Key="q/y")["ServerSideEncryption"] == "AES256"


def test_s3_errors_are_one_line_and_name_the_url(s3_server, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = open_store("s3://no-such-bucket-here/p", endpoint_url=s3_server.endpoint)
    with pytest.raises(StoreError, match=r"^s3://no-such-bucket-here/p: bucket 'no-such-bucket-here' does not exist"):
        missing.check()
    down = open_store("s3://some-bucket/p", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientStoreError, match=r"^s3://some-bucket/p: cannot reach the S3 endpoint http://127"):
        down.check()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    nocreds = open_store("s3://some-bucket/p", endpoint_url=s3_server.endpoint)
    with pytest.raises(StoreError, match="no usable AWS credentials"):
        nocreds.check()


def test_aws_endpoint_url_from_the_environment(s3_server, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_server.new_bucket()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    store = open_store(f"s3://{bucket}")
    store.put("k", b"v")
    assert store.get("k").data == b"v" and store.url == f"s3://{bucket}/"


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("", {}, "empty"),
        ("file://", {}, "names no folder"),
        ("file:///tmp/x?y=1", {}, "query"),
        ("gopher://x/y", {}, "unsupported URL scheme 'gopher'"),
        ("s3://Bad_Bucket/p", {}, "not a valid S3 bucket name"),
        ("s3://bucket/a/../b", {}, "not a valid key prefix"),
        ("s3://bucket/p", {"sse": "rot13"}, "server-side encryption must be one of"),
        ("s3://bucket/p", {"sse_kms_key_id": "k"}, "needs server-side encryption aws:kms"),
    ],
)
def test_open_store_errors(url: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(StoreError, match=message):
        open_store(url, **options)


def test_local_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert isinstance(open_store("plain/dir"), LocalStore) and (tmp_path / "plain" / "dir").is_dir()
    open_store("file://rel/dir").put("k", b"v")
    assert (tmp_path / "rel" / "dir" / "k").read_bytes() == b"v"
    open_store("file://with%20space")
    assert (tmp_path / "with space").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="cannot use"):
        open_store(str(tmp_path / "f"))


def test_local_writes_are_whole_and_leave_no_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    big = [bytes([n]) * 200_000 for n in range(1, 40)]
    done = threading.Event()

    def write() -> None:
        for data in big:
            store.put("obj", data)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    while not done.is_set() or reads == 0:
        try:
            data = store.get("obj").data
        except NoSuchKey:
            continue
        assert data in big  # never half of one write
        reads += 1
    writer.join()
    assert [i.key for i in store.list()] == ["obj"]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [".lock", "obj"]


def test_local_create_only_has_one_winner(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    winners = []
    barrier = threading.Barrier(16)

    def race(n: int) -> None:
        barrier.wait()
        try:
            store.put("lease", str(n).encode(), if_none_match=True)
            winners.append(n)
        except PreconditionFailed:
            pass

    threads = [threading.Thread(target=race, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and store.get("lease").data == str(winners[0]).encode()


def test_local_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "s")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StoreError, match="No space left"):
        store.put("k", b"v")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == []


class _Flaky:
    """A store whose calls fail with the given errors first."""

    def __init__(self, store: ObjectStore, errors: list[Exception]) -> None:
        self.store, self.errors = store, errors
        self.url = store.url

    def get(self, key: str):
        if self.errors:
            raise self.errors.pop(0)
        return self.store.get(key)


def test_retrying_store_retries_transient_errors_only(tmp_path: Path) -> None:
    inner = LocalStore(tmp_path / "s")
    inner.put("k", b"v")
    seen: list[BaseException] = []
    flaky = _Flaky(inner, [TransientStoreError("503"), TransientStoreError("reset")])
    retrying = RetryingStore(flaky, attempts=3, on_error=seen.append, sleep=lambda s: None)  # type: ignore[arg-type]
    assert retrying.get("k").data == b"v" and len(seen) == 2
    flaky.errors = [StoreError("access denied")]
    with pytest.raises(StoreError, match="access denied"):
        retrying.get("k")
    flaky.errors = [TransientStoreError(str(n)) for n in range(3)]
    with pytest.raises(TransientStoreError):
        retrying.get("k")
