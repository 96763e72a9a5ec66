"""The numba kernels behind ``crawler.matching.index.HammingIndex``: the build's counting sorts and the search.

Kept apart from the index so that importing the index (to load one, plan one, or read a compiled list's
metadata) does not load numba; ``HammingIndex`` imports this module the first time it builds or searches.
Compiled kernels are cached beside this file (``cache=True``): the first import on a new machine compiles
them (~10 s), later ones load them.

Why the kernels look the way they do is explained in ``crawler.matching.index``. Nothing here logs a hash.
"""

from __future__ import annotations

from typing import Final

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: How many probes / candidates ahead the kernels prefetch.
_AHEAD: Final = 16

@intrinsic
def _prefetch(typingctx, array, index):  # type: ignore[no-untyped-def]
    """Hint the CPU to load ``array[index]`` (first element of that row) into cache; no effect on results."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        array_type = signature.args[0]
        ary = context.make_array(array_type)(context, builder, args[0])
        position = context.cast(builder, args[1], signature.args[1], types.intp)
        indices = [position] + [context.get_constant(types.intp, 0)] * (array_type.ndim - 1)
        pointer = cgutils.get_item_pointer(context, builder, array_type, ary, indices, wraparound=False)
        byte_pointer = ir.IntType(8).as_pointer()
        function_type = ir.FunctionType(ir.VoidType(), [byte_pointer] + [ir.IntType(32)] * 3)
        function = cgutils.get_or_insert_function(builder.module, function_type, "llvm.prefetch.p0")
        i32 = ir.IntType(32)
        builder.call(function, [builder.bitcast(pointer, byte_pointer), ir.Constant(i32, 0), ir.Constant(i32, 3),
                                ir.Constant(i32, 1)])  # read, keep in all cache levels, data cache
        return context.get_dummy_value()

    return types.void(array, index), codegen


@numba.njit
def _popcount(x):  # type: ignore[no-untyped-def]
    x = np.uint64(x)
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))  # LLVM emits one popcnt for this


@numba.njit
def _key(codes, row, start, width):  # type: ignore[no-untyped-def]
    """Bits ``start .. start + width`` of ``codes[row]`` (bit 0 = lowest bit of word 0) as an int."""
    word, shift = start >> 6, start & 63
    value = codes[row, word] >> np.uint64(shift)
    if shift + width > 64:
        value |= codes[row, word + 1] << np.uint64(64 - shift)
    return np.int64(value & ((np.uint64(1) << np.uint64(width)) - np.uint64(1)))


@numba.njit
def _sketch(codes, row, key_bits, extra):  # type: ignore[no-untyped-def]
    """Table 0's key, then ``32 - key_bits`` bits from ``extra`` on: the 32 bits a sketch table stores."""
    return (_key(codes, row, np.int64(0), key_bits) << (32 - key_bits)) | _key(codes, row, extra, 32 - key_bits)


@numba.njit(cache=True, nogil=True)
def counting_order(codes, start, width, offsets):  # type: ignore[no-untyped-def]
    """Stable order of the rows by their key; fills ``offsets`` (bucket k is ``offsets[k]:offsets[k + 1]``)."""
    n = codes.shape[0]
    keys = np.empty(n, dtype=np.uint32)
    offsets[:] = 0
    for row in range(n):
        key = _key(codes, row, start, width)
        keys[row] = key
        offsets[key + 1] += 1
    for key in range(offsets.shape[0] - 1):
        offsets[key + 1] += offsets[key]
    fill = offsets[:-1].copy()
    order = np.empty(n, dtype=np.uint32)
    for row in range(n):
        key = keys[row]
        order[fill[key]] = row
        fill[key] += 1
    return order


@numba.njit(cache=True, nogil=True)
def fill_sketches(codes, start, width, extra, offsets, sketches):  # type: ignore[no-untyped-def]
    """A sketch table: the rows' sketches bucketed by key, each bucket sorted (equal sketches side by side)."""
    order = counting_order(codes, start, width, offsets)
    for position in range(order.shape[0]):
        sketches[position] = _sketch(codes, np.int64(order[position]), width, extra)
    for key in range(offsets.shape[0] - 1):  # Shell sort each bucket: a handful of values on average
        first, end = np.int64(offsets[key]), np.int64(offsets[key + 1])
        gap = 1
        while gap < (end - first) // 3:
            gap = 3 * gap + 1
        while gap > 0:
            for i in range(first + gap, end):
                value = sketches[i]
                j = i
                while j - gap >= first and sketches[j - gap] > value:
                    sketches[j] = sketches[j - gap]
                    j -= gap
                sketches[j] = value
            gap //= 3


@numba.njit(cache=True, nogil=True)
def fill_masks(width, depth, masks):  # type: ignore[no-untyped-def]
    """All ``width``-bit values with 0, 1, .. ``depth`` bits set, by popcount (Gosper's hack within each)."""
    position = 0
    limit = np.int64(1) << width
    for ones in range(depth + 1):
        value = (np.int64(1) << ones) - 1
        while value < limit:
            masks[position] = value
            position += 1
            if ones == 0:
                break
            lowest = value & -value
            ripple = value + lowest
            value = (((ripple ^ value) >> 2) // lowest) | ripple


@numba.njit
def _first_table(codes, row, query_keys, starts, key_bits, probe_radii, table):  # type: ignore[no-untyped-def]
    """True if no table before ``table`` would have probed this entry (so it is reported exactly once)."""
    for s in range(table):
        if probe_radii[s] >= 0 and _popcount(_key(codes, row, starts[s], key_bits) ^ query_keys[s]) <= probe_radii[s]:
            return False
    return True


@numba.njit
def _distance(codes, row, queries, q, words):  # type: ignore[no-untyped-def]
    """Hamming distance (no early exit: for wide codes that branch is a coin toss, and mispredicts cost more)."""
    distance = 0
    for w in range(words):
        distance += _popcount(codes[row, w] ^ queries[q, w])
    return distance


@numba.njit(cache=True, nogil=True)
def search(queries, radius, codes, refs, offsets, starts, key_bits, extras, sketch,  # type: ignore[no-untyped-def]
            probe_radii, masks, mask_counts):
    words = codes.shape[1]
    tables = starts.shape[0]
    out = np.empty((256, 3), dtype=np.int64)  # query, position in codes, distance
    found = 0
    query_keys = np.empty(tables, dtype=np.int64)
    first = np.empty(masks.shape[0], dtype=np.int64)
    end = np.empty(masks.shape[0], dtype=np.int64)
    candidates = np.empty(1024, dtype=np.int64)
    sketch_bits = 32 - key_bits
    offsets0 = offsets[0]
    for q in range(queries.shape[0]):
        for t in range(tables):
            query_keys[t] = _key(queries, q, starts[t], key_bits)
        for t in range(tables):
            depth = probe_radii[t]
            if depth < 0:
                continue
            probes = mask_counts[min(depth, mask_counts.shape[0] - 1)]
            table_offsets = offsets[t]
            own_key = query_keys[t]
            for m in range(probes):  # bucket bounds, the offsets prefetched a few probes ahead
                if m + _AHEAD < probes:
                    _prefetch(table_offsets, own_key ^ masks[m + _AHEAD])
                key = own_key ^ masks[m]
                first[m] = table_offsets[key]
                end[m] = table_offsets[key + 1]
            if t == 0:  # the codes themselves, read in order
                for m in range(probes):
                    if m + _AHEAD < probes:
                        _prefetch(codes, first[m + _AHEAD])
                    for row in range(first[m], end[m]):
                        distance = _distance(codes, row, queries, q, words)
                        if distance <= radius:
                            out = _emit(out, found, q, row, distance)
                            found += 1
            elif sketch:  # 64-bit codes: rule candidates out on their sketch, find survivors in table 0
                table_refs = refs[t - 1]
                query_sketch = _sketch(queries, q, key_bits, extras[t])
                for m in range(probes):
                    if m + _AHEAD < probes:
                        _prefetch(table_refs, first[m + _AHEAD])
                    flipped = _popcount(np.int64(masks[m]))
                    for j in range(first[m], end[m]):
                        value = table_refs[j]
                        if flipped + _popcount(value ^ query_sketch) > radius:
                            continue
                        if j > first[m] and table_refs[j - 1] == value:
                            continue  # same sketch as the previous one: its rows were all handled then
                        key = own_key ^ masks[m]
                        bucket0 = value >> sketch_bits
                        for row in range(offsets0[bucket0], offsets0[bucket0 + 1]):
                            if _key(codes, row, starts[t], key_bits) != key or _sketch(codes, row, key_bits,
                                                                                       extras[t]) != value:
                                continue
                            distance = _distance(codes, row, queries, q, words)
                            if distance <= radius and _first_table(codes, row, query_keys, starts, key_bits,
                                                                   probe_radii, t):
                                out = _emit(out, found, q, row, distance)
                                found += 1
            else:  # wide codes: positions into table 0, gathered with prefetching
                table_refs = refs[t - 1]
                count = 0
                for m in range(probes):
                    if m + _AHEAD < probes:
                        _prefetch(table_refs, first[m + _AHEAD])
                    if count + end[m] - first[m] > candidates.shape[0]:
                        larger = np.empty(2 * (count + end[m] - first[m]), dtype=np.int64)
                        larger[:count] = candidates[:count]
                        candidates = larger
                    for j in range(first[m], end[m]):
                        candidates[count] = table_refs[j]
                        count += 1
                for c in range(count):
                    if c + 2 * _AHEAD < count:
                        _prefetch(codes, candidates[c + 2 * _AHEAD])
                    row = candidates[c]
                    distance = _distance(codes, row, queries, q, words)
                    if distance <= radius and _first_table(codes, row, query_keys, starts, key_bits,
                                                           probe_radii, t):
                        out = _emit(out, found, q, row, distance)
                        found += 1
    return out[:found].copy()


@numba.njit
def _emit(out, found, query, entry, distance):  # type: ignore[no-untyped-def]
    """Row ``found`` of ``out`` set to one result; ``out`` doubled first when full."""
    if found == out.shape[0]:
        larger = np.empty((2 * found, 3), dtype=np.int64)
        larger[:found] = out
        out = larger
    out[found, 0] = query
    out[found, 1] = entry
    out[found, 2] = distance
    return out
