"""Which store a URL names, and the S3 options the settings give: the one place that picks an implementation.

It imports ``LocalStore`` and ``S3Store`` only when a URL names them, so boto3 is loaded only for ``s3://``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

from crawler.storage.base import SSE_MODES, ObjectStore, StoreError, check_key


def store_options(settings: Any) -> dict[str, Any]:
    """``open_store``'s S3 keyword arguments from the ``REFWATCH_S3_*`` settings (none when ``settings`` is None)."""
    if settings is None:
        return {}
    return {"endpoint_url": settings.get("REFWATCH_S3_ENDPOINT_URL") or None,
            "sse": settings.get("REFWATCH_S3_SSE") or None,
            "sse_kms_key_id": settings.get("REFWATCH_S3_SSE_KMS_KEY_ID") or None}


def open_store(url: str, *, endpoint_url: str | None = None, sse: str | None = None,
               sse_kms_key_id: str | None = None) -> ObjectStore:
    """The store a URL names: ``file:///abs``, ``file://rel/dir``, a plain path, or ``s3://BUCKET/PREFIX``.

    S3 endpoint, region and credentials come the standard boto3 way (environment, profile,
    ``AWS_ENDPOINT_URL``); ``endpoint_url`` overrides the endpoint. ``sse``/``sse_kms_key_id`` choose
    server-side encryption of S3 writes and are ignored for local folders. Nothing is contacted here:
    ``check()`` does that.
    """
    if sse is not None and sse not in SSE_MODES:
        raise StoreError(f"server-side encryption must be one of {', '.join(SSE_MODES)}, not {sse!r}")
    if sse_kms_key_id and sse != "aws:kms":
        raise StoreError("an SSE KMS key id needs server-side encryption aws:kms")
    if not url.strip():
        raise StoreError("empty store URL")
    from crawler.storage.local import LocalStore

    if "://" not in url and not url.startswith("file:"):
        return LocalStore(url, url=url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise StoreError(f"{url}: a store URL must not have a query or fragment")
    if scheme == "file":
        path = unquote(parts.netloc + parts.path)  # file://relative/dir is the relative folder relative/dir
        if not path:
            raise StoreError(f"{url}: names no folder")
        return LocalStore(path, url=url)
    if scheme == "s3":
        bucket, prefix = parts.netloc, unquote(parts.path).strip("/")
        if not _BUCKET.fullmatch(bucket):
            raise StoreError(f"{url}: {bucket!r} is not a valid S3 bucket name")
        if prefix:
            try:
                check_key(prefix)
            except ValueError:
                raise StoreError(f"{url}: {prefix!r} is not a valid key prefix") from None
        from crawler.storage.s3 import (  # boto3 is imported only for s3:// URLs
            S3Store,
            s3_client,
        )

        return S3Store(bucket, prefix, s3_client(url, endpoint_url), sse=sse, sse_kms_key_id=sse_kms_key_id)
    raise StoreError(f"{url}: unsupported URL scheme {parts.scheme!r} (use file://DIR or s3://BUCKET/PREFIX)")


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
