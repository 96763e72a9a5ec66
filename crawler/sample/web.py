"""A small sample web on loopback whose paths choose behaviour, for the demo, the tests and the benchmarks.

Every image it serves is synthetic and benign (``crawler.sample.images``), made on the fly from a seed in the
path, so nothing real is ever served and nothing is stored. It binds port 0 on 127.0.0.1 and says its
address; ``stop()`` (or leaving the ``with`` block) shuts it down.

Paths:
  /img/<seed>.<jpg|png|webp|gif>   a synthetic image (``?size=WxH``)
  /variant/<seed>/<name>.jpg       a benign near-copy of image <seed> (resized, jpeg_q50, png, brightness)
  /status/<code>                   that status with a short text body (``?retry-after=S`` adds the header)
  /redirect/<n>?to=PATH            a chain of n 302 redirects, then PATH
  /slow/<seconds>                  answers after a delay (capped at 30 s)
  /truncated.jpg                   promises more bytes than it sends, then closes (body cut short)
  /reset                           closes the connection without answering
  /page.html                       an HTML page with <img> tags (not an image itself)
  /garbage.jpg                     ``image/jpeg`` whose bytes are not an image
  /big/<n>                         n bytes claiming to be a JPEG
  /gzipbomb/<n>                    n zero bytes, gzip-encoded (a tiny answer that decompresses huge)
  /rotated/<seed>.jpg              image <seed> turned 90 degrees (a dihedral copy)
  /xrobots/<seed>.jpg              an image with ``X-Robots-Tag: noai, noimageai``
  /flaky/<key>/<seed>.jpg          503 the first time a key is asked for, then the image
  /ratelimit/<key>/<seed>.jpg      429 with ``Retry-After: 1`` the first time, then the image
  /robots.txt                      disallows /private/
  /private/<seed>.jpg              an image robots.txt forbids
"""

from __future__ import annotations

import gzip
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from crawler.sample import images

logger = logging.getLogger(__name__)

_IMAGE_FORMATS = {"jpg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp"),
                  "gif": ("GIF", "image/gif")}
_MAX_SLOW_SECONDS = 30.0


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        logger.debug("sampleweb: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        self.server.hits[path] += 1
        for pattern, handler in _ROUTES:
            match = pattern.fullmatch(path)
            if match:
                handler(self, match, query)
                return
        self._send(404, b"not found\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _image(self, seed: int, ext: str, query: dict[str, str], headers: dict[str, str] | None = None) -> None:
        fmt, content_type = _IMAGE_FORMATS[ext]
        size = tuple(int(n) for n in query.get("size", "256x256").split("x"))
        self._send(200, self.server.image(seed, fmt, size), content_type, headers)  # type: ignore[arg-type]


def _img(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    h._image(int(m["seed"]), m["ext"], q)


def _variant(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    variants = images.variants(images.synthetic_image(int(m["seed"])))
    body = variants.get(m["name"])
    if body is None:
        h._send(404, b"no such variant\n", "text/plain")
    else:
        h._send(200, body, "image/png" if m["name"] == "png" else "image/jpeg")


def _status(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    headers = {"Retry-After": q["retry-after"]} if "retry-after" in q else None
    code = int(m["code"])
    h._send(code, f"status {code}\n".encode(), "text/plain", headers)


def _redirect(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    n = int(m["n"])
    target = q.get("to", "/img/1.jpg")
    location = f"/redirect/{n - 1}?to={target}" if n > 1 else target
    h._send(302, b"", "text/plain", {"Location": location})


def _slow(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    time.sleep(min(float(m["seconds"]), _MAX_SLOW_SECONDS))
    h._image(7, "jpg", q)


def _truncated(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    body = h.server.image(3, "JPEG", (256, 256))
    h.send_response(200)
    h.send_header("Content-Type", "image/jpeg")
    h.send_header("Content-Length", str(len(body) + 5000))
    h.end_headers()
    h.wfile.write(body[: len(body) // 2])
    h.wfile.flush()
    h.close_connection = True


def _reset(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    h.close_connection = True
    h.connection.close()


def _page(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    html = b"<!doctype html><title>sample</title><img src='/img/1.jpg' alt='one'><img src='img/2.png'>\n"
    h._send(200, html, "text/html; charset=utf-8")


def _garbage(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    h._send(200, b"\xff\xd8\xff\xe0 this is not really a jpeg " * 20, "image/jpeg")


def _big(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    h._send(200, b"\0" * min(int(m["n"]), 64 * 1024 * 1024), "image/jpeg")


def _gzipbomb(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    body = gzip.compress(b"\0" * min(int(m["n"]), 256 * 1024 * 1024), compresslevel=9)
    h._send(200, body, "image/jpeg", {"Content-Encoding": "gzip"})


def _rotated(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    image = images.synthetic_image(int(m["seed"])).transpose(Image.Transpose.ROTATE_90)
    h._send(200, images.encode(image, "JPEG"), "image/jpeg")


def _xrobots(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    h._image(int(m["seed"]), "jpg", q, {"X-Robots-Tag": "noai, noimageai"})


def _first_time(status: int) -> object:
    def handler(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
        if h.server.first_time(f"{status}:{m['key']}"):
            h._send(status, b"try again later\n", "text/plain", {"Retry-After": "1"})
        else:
            h._image(int(m["seed"]), "jpg", q)

    return handler


def _epoch(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    """What this URL serves in the web's current epoch (``SampleWeb.epoch``), from ``?plan=a,b,c``: step ``e``
    of the plan in epoch ``e`` (the last step afterwards). Steps: ``img`` (the seed's image), ``near`` (the
    same image recompressed), ``other`` (another image), ``404``, ``removed`` (a redirect to the shared
    ``/removed.png`` placeholder picture). For longitudinal tests: the same snapshot, a changing web."""
    plan = q.get("plan", "img").split(",")
    step = plan[min(h.server.epoch, len(plan) - 1)]  # type: ignore[attr-defined]
    seed = int(m["seed"])
    if step == "img":
        h._image(seed, "jpg", {})
    elif step == "near":
        h._send(200, h.server.near_copy(seed), "image/jpeg")  # type: ignore[attr-defined]
    elif step == "other":
        h._image(seed + 100_000, "jpg", {})
    elif step == "removed":
        h._send(302, b"", "text/plain", {"Location": "/removed.png"})
    else:
        h._send(404, b"gone\n", "text/plain")


def _removed(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    h._image(999_999, "png", {"size": "64x64"})


def _robots(h: _Handler, m: re.Match[str], q: dict[str, str]) -> None:
    h._send(200, b"User-agent: *\nDisallow: /private/\n", "text/plain")


_ROUTES = [
    (re.compile(r"/img/(?P<seed>\d+)\.(?P<ext>jpg|png|webp|gif)"), _img),
    (re.compile(r"/variant/(?P<seed>\d+)/(?P<name>\w+)\.jpg"), _variant),
    (re.compile(r"/status/(?P<code>\d{3})"), _status),
    (re.compile(r"/redirect/(?P<n>\d+)"), _redirect),
    (re.compile(r"/slow/(?P<seconds>[\d.]+)"), _slow),
    (re.compile(r"/truncated\.jpg"), _truncated),
    (re.compile(r"/reset"), _reset),
    (re.compile(r"/page\.html"), _page),
    (re.compile(r"/garbage\.jpg"), _garbage),
    (re.compile(r"/big/(?P<n>\d+)"), _big),
    (re.compile(r"/gzipbomb/(?P<n>\d+)"), _gzipbomb),
    (re.compile(r"/rotated/(?P<seed>\d+)\.jpg"), _rotated),
    (re.compile(r"/xrobots/(?P<seed>\d+)\.jpg"), _xrobots),
    (re.compile(r"/flaky/(?P<key>\w+)/(?P<seed>\d+)\.jpg"), _first_time(503)),
    (re.compile(r"/ratelimit/(?P<key>\w+)/(?P<seed>\d+)\.jpg"), _first_time(429)),
    (re.compile(r"/robots\.txt"), _robots),
    (re.compile(r"/epoch/(?P<key>\w+)/(?P<seed>\d+)\.jpg"), _epoch),
    (re.compile(r"/removed\.png"), _removed),
    (re.compile(r"/private/(?P<seed>\d+)\.(?P<ext>jpg|png)"), _img),
]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.hits: Counter[str] = Counter()
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._images: dict[tuple[int, str, tuple[int, int]], bytes] = {}
        self.epoch = 0

    def first_time(self, key: str) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            return True

    def near_copy(self, seed: int) -> bytes:
        """The seed's image recompressed (JPEG q50): other bytes, the same picture to a perceptual hash."""
        key = (seed, "near", (0, 0))
        body = self._images.get(key)
        if body is None:
            body = images.encode(images.synthetic_image(seed).convert("RGB"), "JPEG", quality=50)
            with self._lock:
                self._images[key] = body
        return body

    def image(self, seed: int, fmt: str, size: tuple[int, int]) -> bytes:
        """Synthetic image bytes, memoised: the same URL always serves the same bytes."""
        key = (seed, fmt, size)
        body = self._images.get(key)
        if body is None:
            body = images.encode(images.synthetic_image(seed, size), fmt)
            with self._lock:
                self._images[key] = body
        return body


class SampleWeb:
    """The sample web, running in a background thread on 127.0.0.1."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port))
        self._thread = threading.Thread(target=self._server.serve_forever, name="sampleweb", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def hits(self) -> Counter[str]:
        """Requests served per path, for tests that count retries and politeness."""
        return self._server.hits

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def epoch(self) -> int:
        """Which step of their ``?plan=`` the ``/epoch/`` URLs serve (0 first): set it between two crawls."""
        return self._server.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._server.epoch = value

    def image_bytes(self, seed: int, fmt: str = "JPEG", size: tuple[int, int] = (256, 256)) -> bytes:
        """The exact bytes the server sends for an image path (tests search for them)."""
        return self._server.image(seed, fmt, size)

    def start(self) -> SampleWeb:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> SampleWeb:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def running_sampleweb() -> Iterator[SampleWeb]:
    with SampleWeb() as web:
        yield web
