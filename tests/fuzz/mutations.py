"""Byte-level damage for fuzzing: a valid-looking file, then a few of the ways files get broken on the way.

Positions are drawn as fractions of the file's length, so hypothesis shrinks a mutation towards the start of
the file and a mutation stays meaningful whatever the file's size. Every mutation keeps files small: an
insertion adds at most a few KiB.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

from hypothesis import strategies as st

#: Bytes that mean something to one of the parsers: NUL, line ends, quotes, byte-order marks, a gzip member
#: header, a WARC record start, half of a UTF-8 sequence, a Parquet magic.
SPECIAL_BYTES: tuple[bytes, ...] = (
    b"\x00", b"\n", b"\r", b"\r\n", b"\r\n\r\n", b'"', b"'", b",", b"\t", b"\\", b"#",
    b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x1f\x8b\x08", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff",
    b"WARC/1.0\r\n", b"\nWARC/1.", b"Content-Length: 99999999\r\n", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80",
    b"\xff", b"\x80", b"PAR1", b"{", b"[", b"}", b"]", b"<img src=", b"\xff" * 8, b"\x7f" * 4,
)

Mutation = Callable[[bytes], bytes]


def _at(data: bytes, fraction: float) -> int:
    return min(int(fraction * len(data)), len(data))


@st.composite
def mutation(draw: st.DrawFn) -> Mutation:
    """One way to damage a file (as a function, so it applies to whatever bytes it is given)."""
    kind = draw(st.sampled_from(
        ["truncate", "flip", "insert", "delete", "duplicate", "overwrite", "special", "zero"]))
    where = draw(st.floats(0, 1))
    if kind == "truncate":
        return lambda data: data[: _at(data, where)]
    if kind == "flip":
        bit = draw(st.integers(0, 7))

        def flip(data: bytes) -> bytes:
            if not data:
                return data
            i = min(_at(data, where), len(data) - 1)
            return data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1:]
        return flip
    if kind in ("insert", "overwrite", "special"):
        if kind == "special":
            chunk = draw(st.sampled_from(SPECIAL_BYTES)) * draw(st.sampled_from([1, 1, 2, 3, 64]))
        else:
            chunk = draw(st.binary(min_size=1, max_size=32))
        if kind == "overwrite":
            return lambda data: data[: _at(data, where)] + chunk + data[_at(data, where) + len(chunk):]
        return lambda data: data[: _at(data, where)] + chunk + data[_at(data, where):]
    span = draw(st.floats(0, 0.5))
    if kind == "delete":
        return lambda data: data[: _at(data, where)] + data[_at(data, where + span):]
    if kind == "duplicate":
        return lambda data: data[: _at(data, where + span)] + data[_at(data, where):]
    # zero: a run of NULs over part of the file (a sparse file, a disk that lost a block)
    return lambda data: data[: _at(data, where)] + bytes(_at(data, where + span) - _at(data, where)) + \
        data[_at(data, where + span):]


def mutated(base: st.SearchStrategy[bytes], *, max_mutations: int = 3, keep: int = 0) -> st.SearchStrategy[bytes]:
    """``base``'s bytes with up to ``max_mutations`` mutations applied (sometimes none: intact files too).

    Half the time the first ``keep`` bytes are spared (a header, a first record): a reader that validates
    its file's start at open then has to cope with damage while it streams."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = draw(base)
        head = min(keep, len(data)) if draw(st.booleans()) else 0
        data, tail = data[:head], data[head:]
        for change in draw(st.lists(mutation(), max_size=max_mutations)):
            tail = change(tail)
        return data + tail

    return build()


def gzip_member(data: bytes) -> bytes:
    """``data`` as one gzip member, deterministic (no time stamp) so an example replays byte for byte."""
    return gzip.compress(data, mtime=0)


@st.composite
def maybe_gzipped(draw: st.DrawFn, data: bytes) -> tuple[bytes, bool]:
    """``data`` gzip'd or not (as drawn), sometimes in two members or damaged after compressing; and whether
    the bytes were gzip'd (the file name then says ``.gz``, except when the name lies on purpose)."""
    how = draw(st.sampled_from(["plain"] * 4 + ["gzip"] * 4 + ["two-members", "damaged-gzip", "damaged-gzip",
                                                              "raw-deflate"]))
    if how == "plain":
        return data, False
    if how == "gzip":
        return gzip_member(data), True
    if how == "two-members":
        cut = _at(data, draw(st.floats(0, 1)))
        return gzip_member(data[:cut]) + gzip_member(data[cut:]), True
    if how == "raw-deflate":
        return zlib.compress(data), True
    packed = gzip_member(data)
    head = 0 if draw(st.integers(0, 3)) == 0 else 10  # mostly spare the 10-byte gzip header
    packed, tail = packed[:head], packed[head:]
    for change in draw(st.lists(mutation(), min_size=1, max_size=2)):
        tail = change(tail)
    return packed + tail, True
