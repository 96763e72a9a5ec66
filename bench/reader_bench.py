"""Benchmark refwatch's archive and Parquet readers against bare loops over the same native libraries.

Not a test: run it by hand from the repository root (one core, a few minutes):

    taskset -c 1 python bench/reader_bench.py              # 1,000 pages, 1,000,000 Parquet rows
    taskset -c 1 python bench/reader_bench.py --pages 3000 --rows 2000000

In a temporary folder it builds
- a WARC file: the records of ``../shared/realdata/commoncrawl/whirlwind.warc.gz`` (request, 73 KB Wikipedia
  HTML response, metadata) repeated ``--pages`` times, each page with its own target URI and a few pages'
  bodies varied (extra images, a cp1252 page), one gzip member per record as Common Crawl writes them;
- a WAT file: per page, the real request-metadata record and a response-metadata JSON record shaped like
  Common Crawl's whose ``Links`` are the page's real ``<a href>`` and ``<img src>`` links;
- a LAION-style Parquet file (``SAMPLE_ID``, ``URL``, ``TEXT``, ``WIDTH``, ``HEIGHT``, ``similarity``).

Then, interleaved over ``--rounds`` rounds, it measures CPU seconds (``time.process_time``) of:
- WARC: refwatch's reader · fastwarc iterating response records + selectolax ``LexborHTMLParser`` taking every
  ``img`` ``src`` (the reference) · warcio + the stdlib ``HTMLParser`` (how refwatch read WARC before);
- WAT: refwatch's reader · fastwarc iterating metadata records + ``json.loads`` + the ``IMG@/src`` links;
- Parquet: refwatch's reader · a bare ``pyarrow`` ``iter_batches`` loop turning the same columns into Python.
and prints the best round of each with MB/s of input file, references found and reference_cpu / refwatch_cpu.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import random
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from crawler.readers import open_snapshot  # noqa: E402

REAL = REPO_ROOT.parent / "shared" / "realdata" / "commoncrawl"
PAGE = b"https://an.wikipedia.org/wiki/Escopete"


# --- building the inputs ------------------------------------------------------------------------------------


def real_members(path: Path) -> list[bytes]:
    """The inflated gzip members of a real Common Crawl file, one record each."""
    data = path.read_bytes()
    members = []
    while data:
        inflater = zlib.decompressobj(31)
        members.append(inflater.decompress(data))
        data = inflater.unused_data
    return members


def with_length(headers: bytes, block: bytes) -> bytes:
    lines = [line for line in headers.split(b"\r\n") if not line.lower().startswith(b"content-length:")]
    lines.append(b"Content-Length: %d" % len(block))
    return b"\r\n".join(lines) + b"\r\n\r\n" + block + b"\r\n\r\n"


def split_record(member: bytes) -> tuple[bytes, bytes]:
    headers, rest = member.split(b"\r\n\r\n", 1)
    length = int(next(line for line in headers.split(b"\r\n") if line.lower().startswith(b"content-length:"))
                 .split(b":", 1)[1])
    return headers, rest[:length]


def build_warc(path: Path, pages: int) -> None:
    info, request, response, metadata = real_members(REAL / "whirlwind.warc.gz")
    rnd = random.Random(5)
    resp_headers, resp_block = split_record(response)
    http_head, html = resp_block.split(b"\r\n\r\n", 1)
    variants = []
    for v in range(8):  # a few distinct bodies so that not every page is byte-identical
        body = html
        if v % 2:
            extra = b"".join(b'<img src="/extra/%d-%d.png" alt="x">' % (v, i) for i in range(rnd.randint(5, 40)))
            body = body.replace(b"</body>", extra + b"</body>")
        head = http_head
        if v == 7:  # a cp1252 page declared in the header
            body = body.decode("utf-8").encode("cp1252", errors="replace")
            head = head.replace(b"charset=UTF-8", b"charset=windows-1252")
        variants.append(head + b"\r\n\r\n" + body)
    with open(path, "wb") as out:
        out.write(gzip.compress(info, 6))
        for page in range(pages):
            uri = b"https://an.wikipedia.org/wiki/Page_%d" % page
            for member in (request, None, metadata):
                if member is None:
                    headers, block = resp_headers.replace(PAGE, uri), variants[page % len(variants)]
                else:
                    headers, block = split_record(member)
                    headers = headers.replace(PAGE, uri)
                out.write(gzip.compress(with_length(headers, block), 6))


def page_links() -> list[dict[str, str]]:
    """The real page's links as Common Crawl's WAT extractor lists them (``A@/href``, ``IMG@/src``)."""
    from selectolax.lexbor import LexborHTMLParser

    _, _, response, _ = real_members(REAL / "whirlwind.warc.gz")
    html = split_record(response)[1].split(b"\r\n\r\n", 1)[1]
    links = []
    for node in LexborHTMLParser(html).css("a[href], img[src], link[href]"):
        attrs = node.attrs
        if node.tag == "img":
            link = {"path": "IMG@/src", "url": attrs.get("src") or ""}
            if attrs.get("alt") is not None:
                link["alt"] = attrs.get("alt") or ""
        elif node.tag == "a":
            link = {"path": "A@/href", "url": attrs.get("href") or "", "text": (node.text() or "")[:80]}
        else:
            link = {"path": "LINK@/href", "url": attrs.get("href") or "", "rel": attrs.get("rel") or ""}
        links.append(link)
    return links


def build_wat(path: Path, pages: int) -> None:
    members = real_members(REAL / "whirlwind.warc.wat.gz")
    info, request_meta = members[0], members[1]
    links = page_links()
    with open(path, "wb") as out:
        out.write(gzip.compress(info, 6))
        for page in range(pages):
            uri = f"https://an.wikipedia.org/wiki/Page_{page}"
            headers, block = split_record(request_meta)
            out.write(gzip.compress(with_length(headers.replace(PAGE, uri.encode()), block), 6))
            document = {
                "Container": {"Filename": "CC-MAIN-x.warc.gz", "Compressed": True, "Offset": str(page * 20000)},
                "Envelope": {
                    "Format": "WARC",
                    "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": uri},
                    "Payload-Metadata": {
                        "Actual-Content-Type": "application/http; msgtype=response",
                        "HTTP-Response-Metadata": {
                            "Response-Message": {"Status": "200", "Version": "HTTP/1.1", "Reason": "OK"},
                            "Headers": {"Content-Type": "text/html; charset=UTF-8", "Server": "mw-web"},
                            "HTML-Metadata": {"Head": {"Title": f"Page {page}"}, "Links": links},
                        },
                    },
                },
            }
            block = json.dumps(document).encode()
            out.write(gzip.compress(with_length(headers.replace(PAGE, uri.encode()), block), 6))


def build_parquet(path: Path, rows: int) -> None:
    schema = None
    with _Writer(path) as writer:
        for start in range(0, rows, 250_000):
            n = min(250_000, rows - start)
            ids = np.arange(start, start + n, dtype=np.int64)
            table = pa.table({
                "SAMPLE_ID": ids,
                "URL": pa.array([f"https://img{i % 5000}.example/photos/{i}.jpg" for i in ids]),
                "TEXT": pa.array([f"a synthetic caption number {i}" for i in ids]),
                "WIDTH": np.full(n, 512, dtype=np.int32),
                "HEIGHT": np.full(n, 384, dtype=np.int32),
                "similarity": np.full(n, 0.31),
            })
            schema = schema or table.schema
            writer.write(table.cast(schema))


class _Writer:
    """A ParquetWriter opened on the first table (its schema comes from the data)."""

    def __init__(self, path: Path) -> None:
        self.path, self.writer = path, None

    def __enter__(self) -> _Writer:
        return self

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="snappy")
        self.writer.write_table(table, row_group_size=100_000)

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()


# --- the loops being compared ---------------------------------------------------------------------------------


def refwatch_loop(path: Path) -> int:
    return sum(1 for _ in open_snapshot(path))


def fastwarc_lexbor(path: Path) -> int:
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from selectolax.lexbor import LexborHTMLParser

    found = 0
    with open(path, "rb") as fh:
        for record in ArchiveIterator(fh, record_types=WarcRecordType.response):
            if (record.http_content_type or "") != "text/html":
                continue
            for node in LexborHTMLParser(record.reader.read()).css("img"):
                if node.attributes.get("src") is not None:
                    found += 1
    return found


class _OldCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img" and any(name == "src" for name, _ in attrs):
            self.found += 1


def warcio_htmlparser(path: Path) -> int:
    """Roughly refwatch's WARC reader before fastwarc and Lexbor: warcio records, the stdlib parser."""
    from warcio.archiveiterator import ArchiveIterator

    found = 0
    with open(path, "rb") as fh:
        for record in ArchiveIterator(fh):
            if record.rec_type != "response" or record.http_headers is None:
                continue
            if "html" not in (record.http_headers.get_header("Content-Type") or ""):
                continue
            parser = _OldCollector()
            stream = record.content_stream()
            while chunk := stream.read(1 << 16):
                parser.feed(chunk.decode("utf-8", errors="replace"))
            parser.close()
            found += parser.found
    return found


def fastwarc_json(path: Path) -> int:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    found = 0
    with open(path, "rb") as fh:
        for record in ArchiveIterator(fh, record_types=WarcRecordType.metadata):
            document = json.loads(record.reader.read())
            try:
                links = document["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]["Links"]
            except KeyError:
                continue
            found += sum(1 for link in links if link.get("path") == "IMG@/src")
    return found


def pyarrow_loop(path: Path) -> int:
    found = 0
    with pq.ParquetFile(path) as pf:
        for batch in pf.iter_batches(batch_size=8192, columns=["URL", "TEXT", "SAMPLE_ID"]):
            for _ in zip(*(batch.column(i).to_pylist() for i in range(3))):
                found += 1
    return found


# --- measuring ----------------------------------------------------------------------------------------------------


def cpu(fn: Callable[[Path], int], path: Path) -> tuple[float, int]:
    start = time.process_time()
    found = fn(path)
    return time.process_time() - start, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=1000, help="HTML pages in the WARC and WAT files")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the Parquet file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-old", action="store_true", help="skip the (slow) warcio + HTMLParser loop")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="reader-bench-") as tmp:
        folder = Path(tmp)
        warc, wat, table = folder / "bench.warc.gz", folder / "bench.warc.wat.gz", folder / "laion.parquet"
        build_warc(warc, args.pages)
        build_wat(wat, args.pages)
        build_parquet(table, args.rows)
        cases: list[tuple[str, Path, str, Callable[[Path], int]]] = [
            ("WARC", warc, "refwatch", refwatch_loop),
            ("WARC", warc, "fastwarc+lexbor", fastwarc_lexbor),
            ("WAT", wat, "refwatch", refwatch_loop),
            ("WAT", wat, "fastwarc+json", fastwarc_json),
            ("Parquet", table, "refwatch", refwatch_loop),
            ("Parquet", table, "pyarrow loop", pyarrow_loop),
        ]
        if not args.no_old:
            cases.insert(2, ("WARC", warc, "warcio+HTMLParser (old)", warcio_htmlparser))
        best: dict[tuple[str, str], tuple[float, int]] = {}
        for round_ in range(args.rounds):
            for kind, path, name, fn in cases:
                seconds, found = cpu(fn, path)
                if (kind, name) not in best or seconds < best[kind, name][0]:
                    best[kind, name] = (seconds, found)
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        sizes = {kind: path.stat().st_size for kind, path, _, _ in cases}

    print(f"# reader_bench {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()},"
          f" Python {platform.python_version()}; {args.pages} pages, {args.rows} rows; best of {args.rounds}")
    print(f"{'input':8} {'loop':26} {'CPU s':>7} {'MB/s':>7} {'refs':>9} {'ref/refwatch':>12}")
    for kind, _, name, _ in cases:
        seconds, found = best[kind, name]
        reference = [best[k, n][0] for k, _, n, _ in cases if k == kind and n not in ("refwatch",)
                     and "old" not in n][0]
        ratio = f"{reference / best[kind, 'refwatch'][0]:.2f}" if name == "refwatch" else ""
        mbs = sizes[kind] / 1e6 / seconds if seconds else float("inf")
        print(f"{kind:8} {name:26} {seconds:7.2f} {mbs:7.1f} {found:9d} {ratio:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
