"""Strategies for URL tables (CSV, TSV, JSON Lines, Parquet) and hash lists: valid-looking files, then damaged.

Each strategy draws a ``Case``: a file name (its suffix picks the reader) and the file's bytes. The structure
is drawn first (column names a reader looks for, cells that mean something to a parser: quotes, separators,
line ends, NULs, hex that is nearly a hash, huge fields), serialised the way real writers do (or naively,
which gives odd quoting), encoded (sometimes not as UTF-8), mutated byte by byte and maybe gzip'd.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import strategies as st

from tests.fuzz.mutations import maybe_gzipped, mutated


@dataclass(frozen=True)
class Case:
    """One fuzz input: the file's name (its suffix chooses the reader), its bytes and options for the call."""

    name: str
    data: bytes
    options: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # what hypothesis prints for a failing example: enough to rebuild it
        shown = self.data if len(self.data) <= 2048 else self.data[:2048] + b"..."
        return f"Case(name={self.name!r}, options={self.options!r}, size={len(self.data)}, data={shown!r})"


# --- cells and names ----------------------------------------------------------------------------------------------

COLUMN_NAMES = ("url", "url", "URL", " Url ", "text", "TEXT", "caption", "alt", "id", "sample_id", "SAMPLE_ID",
                "page_url", "md5", "sha256", "phash", "width", "", "url\n", 'u"rl', "x,y", "url\tx", "\ufeffurl")
URLS = ("https://img.example.com/a.jpg", "/rel/b.png", "b.png", "//cdn.example.com/c.gif", "", " ",
        "data:image/png;base64,iVBORw0KGgo=", "javascript:alert(1)", "http://[::1", "http://[2001:db8::1]/x.png",
        "http://127.0.0.1/x.png", "http://user:pass@example.com/x.jpg", "https://例え.jp/画像.png",
        "https://example.com/%zz", "http://example.com:99999/x", "\x00", "file:///etc/passwd")
CELLS = URLS + ("0" * 32, "f" * 64, "0x" + "ab" * 8, "AB" * 16, "g" * 32, "NaN", "nan", "inf", "1e400", "-0",
                "12345678901234567890123", "1.5", "True", "null", '"', '""', '"a,b"', "a\nb", "a\r\nb", "\r", "\t",
                "\ufeff", "\u2028", "\x1b[31m", "#comment", "é", "\udcff")


def _encodable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become '?' before encoding


cell_text = st.one_of(st.sampled_from(CELLS), st.text(max_size=24)).map(_encodable)
#: Sizes of the one huge cell a table may have: over a field-size or line limit some parser has.
HUGE_SIZES = (5_000, 140_000, 300_000)
ENCODINGS = ("utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252", "utf-32")


@st.composite
def _encoded(draw: st.DrawFn, text: str) -> bytes:
    return text.encode(draw(st.sampled_from(ENCODINGS)), "replace")


@st.composite
def _huge_cell(draw: st.DrawFn, rows: list[list[str]]) -> None:
    """Maybe make one cell huge, in place."""
    if rows and draw(st.integers(0, 5)) == 0:
        row = draw(st.integers(0, len(rows) - 1))
        if rows[row]:
            column = draw(st.integers(0, len(rows[row]) - 1))
            rows[row][column] = draw(st.sampled_from(["x", '"', "a,", "\t"])) * draw(st.sampled_from(HUGE_SIZES))


@st.composite
def _lines(draw: st.DrawFn, rows: list[list[str]], delimiter: str) -> str:
    """Rows as text: by ``csv.writer`` (minimal or full quoting) or joined naively (unbalanced quotes)."""
    newline = draw(st.sampled_from(["\n", "\n", "\r\n", "\r"]))
    style = draw(st.sampled_from(["naive", "minimal", "all"])) if delimiter == "," else "naive"
    if style == "naive":
        return "".join(delimiter.join(row) + newline for row in rows)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=newline,
                        quoting=csv.QUOTE_ALL if style == "all" else csv.QUOTE_MINIMAL)
    writer.writerows(rows)
    return out.getvalue()


@st.composite
def _named(draw: st.DrawFn, stem: str, suffixes: tuple[str, ...], data: bytes, gz_allowed: bool = True) -> Case:
    """A ``Case`` for ``data``, maybe gzip'd; the name says ``.gz`` when it is, except now and then."""
    gzipped = False
    if gz_allowed:
        data, gzipped = draw(maybe_gzipped(data))
    if draw(st.integers(0, 19)) == 0:
        gzipped = not gzipped  # a name that lies about the compression
    return Case(stem + draw(st.sampled_from(suffixes)) + (".gz" if gzipped else ""), data)


# --- CSV and TSV -----------------------------------------------------------------------------------------------------

@st.composite
def delimited_case(draw: st.DrawFn, fmt: str) -> Case:
    delimiter = "," if fmt == "csv" else "\t"
    if draw(st.integers(0, 9)) == 0:  # not a table at all: random bytes
        return draw(_named("snap", (f".{fmt}",), draw(st.binary(max_size=300))))
    header = draw(st.lists(st.sampled_from(COLUMN_NAMES), min_size=0, max_size=6))
    if draw(st.integers(0, 3)):
        header.insert(draw(st.integers(0, len(header))), "url")
    width = max(len(header), 1)
    rows = [header] + draw(st.lists(st.lists(cell_text, min_size=0, max_size=width + 2), max_size=10))
    draw(_huge_cell(rows))
    text = draw(_lines(rows, delimiter))
    data = draw(_encoded(text))
    data = draw(mutated(st.just(data), keep=data.find(b"\n") + 1))
    return draw(_named("snap", (f".{fmt}",), data))


# --- JSON Lines ------------------------------------------------------------------------------------------------------

json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([10**30, -(2**63), 2**64, 0]),
    st.floats(allow_nan=True, allow_infinity=True), cell_text,
)
json_value = st.recursive(
    json_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(cell_text, inner, max_size=3),
    max_leaves=8,
)
json_object = st.dictionaries(st.one_of(st.sampled_from(COLUMN_NAMES), cell_text), json_value, max_size=6)
DEPTHS = (20, 999, 5_000, 100_000)


@st.composite
def json_line(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["object", "object", "object", "value", "deep", "deep-in-object", "garbage",
                                 "big-number", "dupes"]))
    if kind == "object":
        return json.dumps(draw(json_object), ensure_ascii=draw(st.booleans()))
    if kind == "value":
        return json.dumps(draw(json_value))
    if kind == "deep":
        depth = draw(st.sampled_from(DEPTHS))
        return draw(st.sampled_from(["[", '{"a":'])) * depth
    if kind == "deep-in-object":
        depth = draw(st.sampled_from(DEPTHS))
        return '{"url": "https://e.com/x.jpg", "text": ' + "[" * depth + "]" * depth + "}"
    if kind == "big-number":
        return '{"url": "u", "id": ' + "9" * draw(st.sampled_from([20, 4301, 20_000])) + "}"
    if kind == "dupes":
        return '{"url": "a", "URL": 1, "Url": null, "id": 1.0, "ID": "x"}'
    return draw(cell_text)


@st.composite
def jsonl_case(draw: st.DrawFn) -> Case:
    if draw(st.integers(0, 9)) == 0:
        return draw(_named("rows", (".jsonl", ".ndjson", ".json"), draw(st.binary(max_size=300))))
    lines = draw(st.lists(json_line(), min_size=0, max_size=8))
    if draw(st.integers(0, 2)):
        lines.insert(0, json.dumps({"url": draw(st.sampled_from(URLS)), "id": draw(json_value)}))
    if draw(st.integers(0, 5)) == 0:  # a pretty-printed array: what JSON Lines is not
        lines = json.dumps([json.loads(line) for line in lines if _is_json(line)], indent=2).splitlines()
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = "".join(line + newline for line in lines)
    data = draw(_encoded(text))
    data = draw(mutated(st.just(data), keep=data.find(newline.encode()) + 1))
    return draw(_named("rows", (".jsonl", ".ndjson", ".json"), data))


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except (ValueError, RecursionError):
        return False
    return True


# --- Parquet ----------------------------------------------------------------------------------------------------------

#: Arrow types a column may have; pyarrow writes each to Parquet.
ARROW_TYPES = ("string", "string", "large_string", "string_view", "binary", "dictionary", "int64", "uint64",
               "int8", "float64", "float16", "bool", "null", "timestamp", "date32", "duration", "time64",
               "decimal", "list", "struct", "map", "fixed_binary")


@st.composite
def arrow_column(draw: st.DrawFn, n: int) -> pa.Array:
    kind = draw(st.sampled_from(ARROW_TYPES))

    def values(strategy: st.SearchStrategy[Any]) -> list[Any]:
        return draw(st.lists(st.one_of(st.none(), strategy), min_size=n, max_size=n))

    if kind in ("string", "large_string", "string_view", "dictionary"):
        array = pa.array(values(cell_text), type=pa.string() if kind != "large_string" else pa.large_string())
        if kind == "dictionary":
            return array.dictionary_encode()
        return array.cast(pa.string_view()) if kind == "string_view" else array
    if kind == "binary":
        return pa.array(values(st.binary(max_size=40)), type=pa.binary())
    if kind == "fixed_binary":
        return pa.array(values(st.binary(min_size=16, max_size=16)), type=pa.binary(16))
    if kind in ("int64", "uint64", "int8"):
        bits = {"int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1), "int8": (-128, 127)}[kind]
        return pa.array(values(st.integers(*bits)), type=getattr(pa, kind)())
    if kind == "float64":
        return pa.array(values(st.floats(allow_nan=True, allow_infinity=True)), type=pa.float64())
    if kind == "float16":
        return pa.array(values(st.floats(width=16, allow_nan=True)), type=pa.float64()).cast(pa.float16())
    if kind == "bool":
        return pa.array(values(st.booleans()), type=pa.bool_())
    if kind == "null":
        return pa.nulls(n)
    if kind in ("timestamp", "duration"):
        unit = draw(st.sampled_from(["s", "ms", "us", "ns"]))
        typ = pa.timestamp(unit) if kind == "timestamp" else pa.duration(unit)
        # Past year 9999 as seconds, yet within int64 once pyarrow coerces seconds to microseconds.
        return pa.array(values(st.integers(-(2**63 // 10**6), 2**63 // 10**6)), type=typ)
    if kind == "date32":
        return pa.array(values(st.integers(-(2**31), 2**31 - 1)), type=pa.date32())
    if kind == "time64":
        return pa.array(values(st.integers(0, 86_400 * 10**9 - 1)), type=pa.time64("ns"))
    if kind == "decimal":
        return pa.array(values(st.decimals(allow_nan=False, allow_infinity=False, places=2,
                                           min_value=-(10**20), max_value=10**20)), type=pa.decimal128(38, 2))
    if kind == "list":
        return pa.array(values(st.lists(cell_text, max_size=3)), type=pa.list_(pa.string()))
    if kind == "map":
        return pa.array(values(st.lists(st.tuples(cell_text, cell_text), max_size=2)),
                        type=pa.map_(pa.string(), pa.string()))
    return pa.array(values(st.fixed_dictionaries({"url": cell_text})), type=pa.struct([("url", pa.string())]))


@st.composite
def parquet_table_bytes(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(0, 12))
    names = draw(st.lists(st.sampled_from(COLUMN_NAMES), min_size=0, max_size=5, unique=True))
    if draw(st.integers(0, 3)) and not {"url", "URL"} & set(names):
        names.insert(draw(st.integers(0, len(names))), draw(st.sampled_from(["url", "URL"])))
    if names and draw(st.integers(0, 9)) == 0:
        names.append(draw(st.sampled_from(names)))  # a name twice
    table = pa.Table.from_arrays([draw(arrow_column(n)) for _ in names], names=names)
    sink = io.BytesIO()
    pq.write_table(
        table, sink,
        row_group_size=draw(st.integers(1, 8)),
        compression=draw(st.sampled_from(["NONE", "SNAPPY", "GZIP", "ZSTD", "LZ4", "BROTLI"])),
        use_dictionary=draw(st.booleans()),
        write_statistics=draw(st.booleans()),
        data_page_size=draw(st.sampled_from([16, 1 << 20])),
        data_page_version=draw(st.sampled_from(["1.0", "2.0"])),
        **draw(st.sampled_from([{"version": "2.6"},  # version 1.0 keeps microseconds at most
                                {"version": "1.0", "coerce_timestamps": "us", "allow_truncated_timestamps": True}])),
    )
    return sink.getvalue()


@st.composite
def parquet_case(draw: st.DrawFn) -> Case:
    if draw(st.integers(0, 19)) == 0:
        data = draw(st.sampled_from([b"", b"PAR1", b"PAR1PAR1", b"PAR1" + bytes(8) + b"PAR1"])) \
            + draw(st.binary(max_size=64))
    else:
        data = draw(mutated(parquet_table_bytes(), max_mutations=3))
    start = draw(st.integers(0, 14))
    stop = draw(st.one_of(st.none(), st.integers(0, 16)))
    case = draw(_named("laion", (".parquet",), data, gz_allowed=False))
    return Case(case.name.removesuffix(".gz"), case.data, {"rows": (start, stop)})


# --- hash lists ----------------------------------------------------------------------------------------------------

ALGORITHM_NAMES = ("md5", "MD5", " pdq ", "pdq", "sha1", "sha256", "phash", "dhash", "bogus", "", "0123456789abcdef",
                   "video_md5", "video_sha256", "url", "raw_text")
HEX_LENGTHS = (16, 32, 40, 64)


@st.composite
def hash_cell(draw: st.DrawFn) -> str:
    digits = draw(st.sampled_from(HEX_LENGTHS))
    value = draw(st.binary(min_size=digits // 2, max_size=digits // 2)).hex()
    how = draw(st.sampled_from(["plain", "plain", "upper", "0x", "spaced", "short", "long", "nonhex", "inner", "any"]))
    if how == "upper":
        return value.upper()
    if how == "0x":
        return "0x" + value
    if how == "spaced":
        return f"  {value}\t"
    if how == "short":
        return value[:-1]
    if how == "long":
        return value + "0"
    if how == "nonhex":
        return value[:-1] + "g"
    if how == "inner":
        return value[:4] + " " + value[5:]
    if how == "any":
        return draw(cell_text)
    return value


@st.composite
def hashlist_case(draw: st.DrawFn) -> Case:
    fmt = draw(st.sampled_from(["csv", "csv", "threatexchange", "hma", "text", "text", "bytes"]))
    algorithm = draw(st.sampled_from([None, None, "pdq", "md5", "PDQ", "sha1", "nope"]))
    skip = draw(st.booleans())
    label = st.one_of(cell_text, st.just(""))
    if fmt == "bytes":
        return Case(draw(st.sampled_from(["list.csv", "list.txt", "g.hash_pdq.te"])),
                    draw(st.binary(max_size=300)), {"algorithm": algorithm, "skip_bad_lines": skip})
    rows: list[list[str]]
    if fmt == "csv":
        header = draw(st.permutations(["algorithm", "hash", "id", "label", "extra"]))
        header = [draw(st.sampled_from([h, h.upper(), f" {h} "])) for h in header[: draw(st.integers(1, 5))]]
        if draw(st.integers(0, 9)) == 0:
            header.append(draw(st.sampled_from(header)))  # a column twice
        rows = [header] + draw(st.lists(st.lists(st.one_of(st.sampled_from(ALGORITHM_NAMES), hash_cell(), label),
                                                 min_size=0, max_size=len(header) + 1), max_size=10))
        name = draw(st.sampled_from(["list.csv", "list.txt", "list"]))
    elif fmt == "threatexchange":
        header = ["signal_type", "signal_str", "collab", "category", "tags"]
        header = header[: draw(st.integers(2, 5))]
        rows = [header] + draw(st.lists(st.tuples(
            st.sampled_from(ALGORITHM_NAMES), hash_cell(), label,
            st.sampled_from(["", "FALSE_POSITIVE", "false_positive", "TRUE_POSITIVE"]), label,
        ).map(list), max_size=10))
        name = "tx.csv"
    elif fmt == "hma":
        rows = draw(st.lists(st.tuples(hash_cell(), label, label, label, label).map(list), max_size=10))
        name = draw(st.sampled_from(["grp.hash_pdq.te", "grp.hash_md5.te", "grp.HASH_VIDEO_MD5.TE"]))
    else:
        rows = draw(st.lists(st.one_of(hash_cell(), st.sampled_from(["", "# comment", "  "])).map(lambda c: [c]),
                             max_size=12))
        name = draw(st.sampled_from(["list.txt", "list"]))
    if draw(st.booleans()):
        rows.insert(0, ["# made by the fuzzer, a comment line first"])
    draw(_huge_cell(rows))
    text = draw(_lines(rows, ","))
    data = draw(_encoded(text))
    data = draw(mutated(st.just(data), keep=data.find(b"\n") + 1))
    return Case(name, data, {"algorithm": algorithm, "skip_bad_lines": skip})
