"""Run inputs on S3 (``s3://BUCKET/KEY`` snapshots and hash lists), read the way each reader needs them.

Every worker on every machine must read the same snapshots and lists; a bucket is how they share them. Two
ways to read an object, chosen by how its reader reads:

* ``open_ranged(url)``: a seekable, read-only file whose reads are ranged GETs, each pinned to the ETag the
  object had when it was first looked at in this process (``If-Match``: an object replaced mid-run fails the
  read instead of mixing two versions). Parquet is read through it, so planning costs a HEAD and the footer,
  and a shard its own row groups' column chunks. This is the project's boto3 client behind a file object
  rather than pyarrow's ``S3FileSystem``: measured on the same file, both make the same requests (HEAD, the
  last 64 KiB, one GET per column chunk), and this way there is one credential chain, one endpoint setting
  (``--s3-endpoint-url`` / ``AWS_ENDPOINT_URL``), one error vocabulary and a single AWS SDK in the process.
* ``local_copy(url)``: the whole object in the input cache, downloaded once per machine and reused while S3
  still gives the same ETag (a HEAD per process checks it). The other snapshot formats are read from their
  start, one shard a file, and hash lists are loaded whole, so they are read from this copy: a local file
  is what their readers already validate, re-read and memory-map (a compiled list is mapped from the cache,
  never copied into memory), and a crawl that waits on its downloader for an hour holds no S3 connection.

The cache (where, its layout, one download per machine) is ``crawler.storage.input_cache``; the ranged
file object is ``crawler.storage.ranged``.

Errors are ``StoreError`` (``TransientStoreError`` for what a retry may cure, retried here a few times with
back-off first), one line naming the URL and, where it matters, the endpoint; never a credential.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from crawler.references import SnapshotError
from crawler.storage.base import DEFAULT_BACKOFF, Backoff, NoSuchKey, StoreError, TransientStoreError
from crawler.storage.factory import _BUCKET
from crawler.storage.input_cache import CACHE_SETTING, cache_entry, default_cache_dir, fill_once, is_complete
from crawler.storage.ranged import RangedObject

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_T = TypeVar("_T")


def is_s3_url(path: object) -> bool:
    return str(path)[:5].lower() == "s3://"


def split_s3_url(url: str) -> tuple[str, str]:
    """``(bucket, key)`` of ``s3://BUCKET/KEY``; the key is taken as written (as ``aws s3 cp`` does)."""
    if not is_s3_url(url):
        raise StoreError(f"{url}: not an s3://BUCKET/KEY URL")
    bucket, _, key = url[5:].partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise StoreError(f"{url}: {bucket!r} is not a valid S3 bucket name")
    if object_name(key) in ("", ".", "..") or "\x00" in key:
        raise StoreError(f"{url}: names no object (expected s3://BUCKET/KEY, the key ending in a file name)")
    return bucket, key


def object_name(key: str) -> str:
    return key.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class ObjectStat:
    """What a HEAD says about an object: enough to name a version without reading it."""

    size: int
    etag: str  # without quotes
    last_modified: datetime


class S3Inputs:
    """Reads ``s3://`` inputs for one process: HEADs, ranged reads and cached copies (thread-safe).

    An object is looked up once per instance (its size and ETag are then fixed for the process, so every
    shard a process reads comes from one version). Nothing is contacted until the first look-up.
    """

    def __init__(self, endpoint_url: str | None = None, cache_dir: str | os.PathLike[str] | None = None, *,
                 attempts: int = 4, backoff: Backoff = DEFAULT_BACKOFF,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.endpoint_url = endpoint_url or None
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._attempts = attempts
        self._backoff = backoff
        self._sleep = sleep
        self._lock = threading.Lock()
        self._client: Any = None
        self._stats: dict[str, ObjectStat] = {}
        self._copies: dict[tuple[str, str], tuple[Path, Path | None]] = {}

    # --- looking objects up ----------------------------------------------------------------------------

    def stat(self, url: str) -> ObjectStat:
        """Size, ETag and last-modified time of the object (one HEAD per process); ``StoreError`` naming the
        URL for a missing bucket or key, no credentials or an unreachable endpoint."""
        with self._lock:
            known = self._stats.get(url)
        if known is not None:
            return known
        bucket, key = split_s3_url(url)
        try:
            # retried quietly: when the endpoint stays away the one line the caller prints says it all
            answer = self._retry(lambda: self._call(url, "head", "head_object", Bucket=bucket, Key=key),
                                 level=logging.INFO)
        except NoSuchKey:
            if not self._bucket_exists(url, bucket):
                raise StoreError(f"{url}: bucket {bucket!r} does not exist at {self.endpoint}") from None
            raise
        found = ObjectStat(int(answer["ContentLength"]), str(answer["ETag"]).strip('"'), answer["LastModified"])
        with self._lock:
            return self._stats.setdefault(url, found)

    def _bucket_exists(self, url: str, bucket: str) -> bool:
        try:
            self._call(url, "head bucket", "head_bucket", Bucket=bucket)
        except NoSuchKey:  # a HEAD has no body: a missing bucket is a bare 404
            return False
        except StoreError:
            return True  # let the object's own 404 speak
        return True

    @property
    def endpoint(self) -> str:
        return str(self.client().meta.endpoint_url)

    # --- ranged reads ----------------------------------------------------------------------------------

    def open_ranged(self, url: str) -> RangedObject:
        """The object as a seekable binary file; each read is one ranged GET of just the bytes asked for."""
        bucket, key = split_s3_url(url)
        stat = self.stat(url)
        return RangedObject(self, url, bucket, key, stat.size, stat.etag)

    def read_range(self, url: str, bucket: str, key: str, etag: str, start: int, stop: int) -> bytes:
        """Bytes ``start`` to ``stop`` (exclusive) of the version ``etag`` of the object."""

        def get() -> bytes:
            with self._errors(url, "get"):
                answer = self.client().get_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"',
                                                  Range=f"bytes={start}-{stop - 1}")
                return bytes(answer["Body"].read())

        data = self._retry(get)
        if len(data) != stop - start:
            raise StoreError(f"{url}: asked S3 for {stop - start} bytes at {start}, got {len(data)}")
        return data

    # --- cached copies ---------------------------------------------------------------------------------

    def local_copy(self, url: str) -> Path:
        """A complete local copy of the object, named like it, in the input cache."""
        return self.local_copies(url, None)[0]

    def local_copies(self, url: str, companion: str | None) -> tuple[Path, Path | None]:
        """The object's local copy and, if ``url + companion`` exists and is no older than the object, a copy
        of that one beside it (a hash list and its compiled file, which must sit in one folder); a companion
        older than the object was made from an earlier version and is left out."""
        with self._lock:
            known = self._copies.get((url, companion or ""))
        if known is not None:
            return known
        bucket, key = split_s3_url(url)
        stat = self.stat(url)
        plain = self._entry(bucket, key, stat.etag) / object_name(key)
        other: tuple[str, ObjectStat] | None = None
        if companion:
            other_url = url + companion
            try:
                other_stat = self.stat(other_url)
            except NoSuchKey:
                pass
            except StoreError as exc:  # e.g. 403 for a missing key without s3:ListBucket: as if absent
                logger.info("%s: not used (%s)", other_url, exc)
            else:
                if other_stat.last_modified >= stat.last_modified:
                    other = (other_url, other_stat)
                else:
                    logger.info("%s is older than %s: not used (it was made from an earlier version)",
                                other_url, url)
        if other is None:
            found: tuple[Path, Path | None] = (self._fetch(url, bucket, key, stat, plain), None)
        else:
            other_url, other_stat = other
            folder = self._entry(bucket, key, f"{stat.etag}+{other_stat.etag}")
            copy = folder / object_name(key)
            if not is_complete(copy, stat.size) and is_complete(plain, stat.size):
                folder.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):  # a hard link saves a second download; else download
                    os.link(plain, copy)
            beside = folder / (object_name(key) + companion)
            found = (self._fetch(url, bucket, key, stat, copy),
                     self._fetch(other_url, bucket, key + companion, other_stat, beside))
        with self._lock:
            return self._copies.setdefault((url, companion or ""), found)

    def _entry(self, bucket: str, key: str, version: str) -> Path:
        return cache_entry(self.cache_dir, bucket, key, version)

    def _fetch(self, url: str, bucket: str, key: str, stat: ObjectStat, target: Path) -> Path:
        try:
            return fill_once(target, stat.size, lambda tmp: self._download(url, bucket, key, stat, tmp), url)
        except OSError as exc:
            raise StoreError(f"{url}: cannot write the input cache {self.cache_dir}: {exc.strerror or exc}") from None

    def _download(self, url: str, bucket: str, key: str, stat: ObjectStat, tmp: Path) -> None:
        """The whole object into ``tmp``; a transient failure resumes from the bytes already written."""
        failures = 0
        with open(tmp, "wb") as handle:
            while handle.tell() < stat.size:
                args: dict[str, Any] = {"Bucket": bucket, "Key": key, "IfMatch": f'"{stat.etag}"'}
                if handle.tell():
                    args["Range"] = f"bytes={handle.tell()}-"
                before = handle.tell()
                try:
                    with self._errors(url, "get"):
                        body = self.client().get_object(**args)["Body"]
                        for chunk in body.iter_chunks(_CHUNK):
                            handle.write(chunk)
                    if handle.tell() == before:
                        raise TransientStoreError(f"{url}: S3 sent no bytes from {before} on")
                except TransientStoreError as exc:
                    failures += 1
                    if failures >= self._attempts:
                        raise
                    self._wait(exc, failures)
            if handle.tell() != stat.size:
                raise StoreError(f"{url}: S3 sent {handle.tell()} bytes of an object of {stat.size}")
            handle.flush()
            os.fsync(handle.fileno())

    def upload(self, local: Path, url: str) -> None:
        """Put the file ``local`` at ``url`` (multipart when large, retried like reads): what ``refwatch hashlist
        compile`` does with the compiled file of an ``s3://`` list, beside it, for every worker's loader."""
        bucket, key = split_s3_url(url)
        self._retry(lambda: self._call(url, "upload", "upload_file", Filename=str(local), Bucket=bucket, Key=key))

    # --- S3 calls ----------------------------------------------------------------------------------------

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from crawler.storage.s3 import s3_client  # boto3 is imported only when an s3:// input is read

                self._client = s3_client("s3:// inputs", self.endpoint_url)
            return self._client

    def _call(self, url: str, operation: str, method: str, **args: Any) -> Any:
        with self._errors(url, operation):
            return getattr(self.client(), method)(**args)

    def _retry(self, call: Callable[[], _T], level: int = logging.WARNING) -> _T:
        for attempt in range(1, self._attempts + 1):
            try:
                return call()
            except TransientStoreError as exc:
                if attempt == self._attempts:
                    raise
                self._wait(exc, attempt, level)
        raise AssertionError("unreachable")

    def _wait(self, exc: Exception, attempt: int, level: int = logging.WARNING) -> None:
        delay = self._backoff.delay(attempt - 1)
        logger.log(level, "%s (attempt %d of %d; retrying in %.1f s)", exc, attempt, self._attempts, delay)
        self._sleep(delay)

    @contextlib.contextmanager
    def _errors(self, url: str, operation: str) -> Iterator[None]:
        """boto3's exceptions as one line naming the URL (and the endpoint where it matters)."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            HTTPClientError,
            IncompleteReadError,
            NoCredentialsError,
            PartialCredentialsError,
        )
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        from crawler.storage.s3 import _DENIED_CODES, _TRANSIENT_CODES

        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code == "NoSuchBucket":
                raise StoreError(f"{url}: bucket {url[5:].partition('/')[0]!r} does not exist "
                                 f"at {self.endpoint}") from None
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                raise NoSuchKey(f"{url}: no such object at {self.endpoint}") from None
            if code == "PreconditionFailed" or status == 412:
                raise StoreError(f"{url}: the object changed while it was being read; run again to read "
                                 f"the new version") from None
            if code in _DENIED_CODES or status == 403:
                raise StoreError(f"{url}: access denied ({code or status})") from None
            if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
                raise TransientStoreError(f"{url}: {operation}: S3 answered {status} {code}".rstrip()) from None
            raise StoreError(f"{url}: {operation}: S3 answered {status} {code}".rstrip()) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise StoreError(f"{url}: no usable AWS credentials (environment, profile or role)") from None
        except (BotoConnectionError, HTTPClientError) as exc:
            raise TransientStoreError(f"{url}: cannot reach the S3 endpoint {self.endpoint} "
                                      f"({type(exc).__name__})") from None
        except IncompleteReadError:  # the connection closed mid-body
            raise TransientStoreError(f"{url}: {operation}: S3 closed the connection mid-answer") from None
        except BotoCoreError as exc:
            raise StoreError(f"{url}: {operation} failed: {type(exc).__name__}") from None
        except S3UploadFailedError as exc:  # upload_file's wrapper around the ClientError of a part
            raise StoreError(f"{url}: {operation} failed: {str(exc).splitlines()[0][:200]}") from None

    # --- what the readers see ----------------------------------------------------------------------------

    def snapshots(self) -> SnapshotInputs:
        """These inputs as ``crawler.readers.remote.RemoteSnapshots``: failures to reach an object are
        ``SnapshotError``, the readers' own one-line error."""
        return SnapshotInputs(self)


class SnapshotInputs:
    """``S3Inputs`` for the snapshot readers (``crawler.readers.remote.RemoteSnapshots``)."""

    def __init__(self, inputs: S3Inputs) -> None:
        self.inputs = inputs

    def open_ranged(self, url: str) -> RangedObject:
        try:
            return self.inputs.open_ranged(url)
        except StoreError as exc:
            raise SnapshotError(str(exc)) from None

    def local_copy(self, url: str) -> Path:
        try:
            return self.inputs.local_copy(url)
        except StoreError as exc:
            raise SnapshotError(str(exc)) from None


# --- the process's inputs ------------------------------------------------------------------------------

_configured: S3Inputs | None = None
_configured_lock = threading.Lock()


def configure_inputs(endpoint_url: str | None = None, cache_dir: str | os.PathLike[str] | None = None) -> S3Inputs:
    """The process's ``S3Inputs`` for this endpoint and cache (kept, with what it looked up, while they
    stay the same); what ``default_inputs`` returns from now on."""
    global _configured
    wanted = (endpoint_url or None, Path(cache_dir) if cache_dir else default_cache_dir())
    with _configured_lock:
        if _configured is None or (_configured.endpoint_url, _configured.cache_dir) != wanted:
            _configured = S3Inputs(*wanted)
        return _configured


def default_inputs() -> S3Inputs:
    """The inputs ``configure_inputs`` set up last (else boto3's endpoint and the default cache)."""
    return _configured if _configured is not None else configure_inputs()


def inputs_from_settings(settings: Any) -> S3Inputs:
    """``configure_inputs`` from ``REFWATCH_S3_ENDPOINT_URL`` and ``REFWATCH_INPUT_CACHE``."""
    return configure_inputs(settings.get("REFWATCH_S3_ENDPOINT_URL") or None, settings.get(CACHE_SETTING) or None)
