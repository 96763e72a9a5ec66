"""``S3Store``: the object store over S3 or any S3-compatible endpoint, through boto3.

Conditional writes are S3's own (``If-None-Match: *`` creates only, ``If-Match: <etag>`` replaces only that
version); S3 answers a lost condition with 412, or 409 ``ConditionalRequestConflict`` when two conditional
writes race, and both become ``PreconditionFailed``. botocore's own retries are off
(``total_max_attempts=1``): callers retry with their own back-off (``RetryingStore``, the queue's producer),
so that every failure is seen, counted and reported instead of being absorbed silently.

Error messages name the store URL and the endpoint, never an object's content.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from crawler import __version__
from crawler.storage.base import (
    NoSuchKey,
    ObjectInfo,
    PreconditionFailed,
    StoredObject,
    StoreError,
    TransientStoreError,
    check_key,
)

_TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                              "ServiceUnavailable", "RequestTimeTooSkewed"})
_DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                           "InvalidToken", "AllAccessDisabled"})


def s3_client(url: str, endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client configured the standard way (environment, profile, AWS_ENDPOINT_URL)."""
    try:
        session = boto3.session.Session()
        return session.client("s3", endpoint_url=endpoint_url or None, config=Config(
            retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=60,
            user_agent_extra=f"refwatch/{__version__}"))
    except (BotoCoreError, ValueError) as exc:
        raise StoreError(f"{url}: cannot set up an S3 client: {exc}") from None


class S3Store:
    """Objects under ``s3://bucket/prefix/``; keys are relative to the prefix. boto3 clients are thread-safe."""

    def __init__(self, bucket: str, prefix: str, client: Any, *, sse: str | None = None,
                 sse_kms_key_id: str | None = None, page_size: int = 1000) -> None:
        self.bucket = bucket
        self.page_size = page_size
        self.prefix = prefix.strip("/")
        self.client = client
        self._root = f"{self.prefix}/" if self.prefix else ""
        self._url = f"s3://{bucket}/{self.prefix}"
        self._sse: dict[str, str] = {}
        if sse:
            self._sse["ServerSideEncryption"] = sse
        if sse_kms_key_id:
            self._sse["SSEKMSKeyId"] = sse_kms_key_id

    @property
    def url(self) -> str:
        return self._url

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    def get(self, key: str) -> StoredObject:
        with self._errors("get", key):
            answer = self.client.get_object(Bucket=self.bucket, Key=self._root + check_key(key))
            data = answer["Body"].read()
        return StoredObject(data, answer["ETag"].strip('"'))

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        if if_none_match and if_match is not None:
            raise ValueError("if_none_match and if_match exclude each other")
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._root + check_key(key), "Body": data, **self._sse}
        if if_none_match:
            args["IfNoneMatch"] = "*"
        if if_match is not None:
            args["IfMatch"] = f'"{if_match}"'
        with self._errors("put", key, conditional=if_none_match or if_match is not None):
            answer = self.client.put_object(**args)
        return str(answer["ETag"]).strip('"')

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._root + check_key(key))

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._root + prefix}
        if start_after is not None:
            args["StartAfter"] = self._root + start_after
        with self._errors("list", prefix or "/"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                **args, PaginationConfig={"PageSize": self.page_size})
            for page in pages:
                for entry in page.get("Contents", ()):
                    yield ObjectInfo(key=entry["Key"][len(self._root):], size=int(entry["Size"]),
                                     etag=str(entry.get("ETag", "")).strip('"') or None,
                                     last_modified=entry["LastModified"])

    def check(self) -> None:
        with self._errors("list", "/"):
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._root, MaxKeys=1)

    @contextmanager
    def _errors(self, operation: str, key: str, *, conditional: bool = False) -> Iterator[None]:
        """boto3's exceptions as this package's, each one line naming the URL (and the endpoint if relevant)."""
        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, operation, key, conditional) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise StoreError(f"{self._url}: no usable AWS credentials (environment, profile or role)") from None
        except (BotoConnectionError, HTTPClientError) as exc:
            raise TransientStoreError(f"{self._url}: cannot reach the S3 endpoint {self.endpoint} "
                                      f"({type(exc).__name__})") from None
        except BotoCoreError as exc:
            raise StoreError(f"{self._url}: {operation} {key} failed: {type(exc).__name__}") from None

    def _client_error(self, exc: ClientError, operation: str, key: str, conditional: bool) -> StoreError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        where = f"{self._url}: {operation} {key}"
        if code == "NoSuchBucket":
            return StoreError(f"{self._url}: bucket {self.bucket!r} does not exist at {self.endpoint}")
        if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict") or (
                status == 409 and conditional):
            return PreconditionFailed(f"{where}: precondition failed ({code or status})")
        if code in ("NoSuchKey", "404") or status == 404:
            # If-Match on a missing key answers 404: for the caller, the version it named is not there.
            return (PreconditionFailed if conditional else NoSuchKey)(f"{where}: no such key")
        if code in _DENIED_CODES or status == 403:
            return StoreError(f"{where}: access denied ({code or status})")
        if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
            return TransientStoreError(f"{where}: S3 answered {status} {code}".rstrip())
        return StoreError(f"{where}: S3 answered {status} {code}".rstrip())
