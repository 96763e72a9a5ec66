"""``refwatch hashlist``: look at hash lists without crawling (``stats``, ``match``, ``compile``).

``crawler/cli/main.py`` wires it in with ``add_hashlist_commands(subparsers)`` and ``cmd_hashlist(args)``. Like the
rest of the CLI it only translates options and prints; the work is in ``crawler.matching.hashlist`` (loading, the
compiled cache) and ``crawler.matching.matcher.Matcher`` (the same index the crawl matches with). Bad input raises
``HashListError`` naming the file and line (or the ``--hash`` argument), which ``cli.main`` turns into exit
status 2; finding no match is a normal answer (exit 0).

The output of ``match`` shows hashes (the analyst's queries and the entries they matched): that is what it is
for. Nothing here logs one, and error messages describe a bad value instead of repeating it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crawler.cli.common import EXIT_OK, radius

ALGORITHMS = ("md5", "sha1", "sha256", "phash", "dhash", "pdq")


def add_hashlist_commands(subparsers: Any) -> None:
    """Add ``hashlist stats|match|compile`` to the ``refwatch`` sub-command parsers."""
    hashlist = subparsers.add_parser("hashlist", help="inspect, query and compile hash lists without crawling")
    commands = hashlist.add_subparsers(dest="hashlist_command", required=True, metavar="HASHLIST_COMMAND")

    stats = commands.add_parser("stats", help="entries and duplicates per algorithm, bad and ignored lines")
    _add_list_options(stats, nargs="+")
    stats.add_argument("--json", action="store_true", help="one JSON object per list")

    match = commands.add_parser("match", help="every list entry within the radius of the given hashes")
    _add_list_options(match, nargs="+")
    queries = match.add_mutually_exclusive_group(required=True)
    queries.add_argument("--hash", action="append", default=[], metavar="ALGO:HEX", dest="hashes",
                         help="a hash to look up, repeatable (e.g. pdq:5a3f...)")
    queries.add_argument("--hashes-file", metavar="FILE",
                         help="hashes to look up: ALGO:HEX lines, or a CSV with algorithm,hash columns")
    match.add_argument("--radius", action="append", type=radius, default=[], metavar="ALGO=N",
                       help="Hamming radius for phash/dhash/pdq (defaults phash=8 dhash=6 pdq=31)")
    match.add_argument("--json", action="store_true", help="one JSON object per match")

    compile_ = commands.add_parser("compile", help="write LIST.rwidx: the list's built indexes, memory-mapped on load")
    _add_list_options(compile_, nargs="+")
    compile_.add_argument("--radius", action="append", type=radius, default=[], metavar="ALGO=N",
                          help="radius to lay the phash/dhash/pdq indexes out for (the crawl's; any radius "
                               "stays exact, a larger one is slower)")


def _add_list_options(p: argparse.ArgumentParser, nargs: str) -> None:
    p.add_argument("lists", nargs=nargs, metavar="LIST", help="[NAME=]PATH of a hash list (or s3://BUCKET/KEY)")
    p.add_argument("--s3-endpoint-url", default=None, metavar="URL",
                   help="S3-compatible endpoint for s3:// lists (default: boto3's, e.g. AWS_ENDPOINT_URL); "
                        "lists are cached in REFWATCH_INPUT_CACHE")
    p.add_argument("--hashlist-algorithm", choices=ALGORITHMS,
                   help="algorithm of plain-text hash lists (one hex hash a line)")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip and count malformed lines instead of stopping at the first")


def cmd_hashlist(args: argparse.Namespace) -> int:
    """Run ``refwatch hashlist ...``; returns the exit status (bad input raises HashListError)."""
    handlers = {"stats": _stats, "match": _match, "compile": _compile}
    return handlers[args.hashlist_command](args)


def _stats(args: argparse.Namespace) -> int:
    from crawler.matching.loading import load_hashlists

    for hashlist in load_hashlists(args.lists, args.hashlist_algorithm, skip_bad_lines=args.skip_bad_lines,
                                   remote=_remote(args)):
        report = {
            "list": hashlist.name,
            "path": hashlist.path,
            "format": hashlist.source_format,
            "from_cache": hashlist.from_cache,
            "entries": hashlist.count_by_algorithm(),
            "duplicates": hashlist.duplicate_counts(),
            "bad_lines": hashlist.bad_lines,
            "bad_line_samples": [{"line": line, "reason": reason} for line, reason in hashlist.bad_line_samples],
            "ignored_lines": hashlist.ignored_lines,
        }
        if args.json:
            print(json.dumps(report))
            continue
        cache = ", from its compiled cache" if hashlist.from_cache else ""
        print(f"{hashlist.name}  {hashlist.path}  ({hashlist.source_format}{cache})")
        print(f"  {'algorithm':<10} {'entries':>12} {'duplicates':>12}")
        for algorithm, count in report["entries"].items():
            print(f"  {algorithm:<10} {count:>12,} {report['duplicates'][algorithm]:>12,}")
        print(f"  bad lines skipped: {hashlist.bad_lines:,}")
        for line, reason in hashlist.bad_line_samples:
            print(f"    line {line}: {reason}")
        if hashlist.ignored_lines:
            print(f"  lines ignored (other signal types, false positives): {hashlist.ignored_lines:,}")
    return EXIT_OK


@dataclass(frozen=True, slots=True)
class Query:
    """One hash to look up, normalised; ``source`` names where it came from, for error messages."""

    algorithm: str
    hash: str
    source: str


def _match(args: argparse.Namespace) -> int:
    from crawler.matching.hashlist import HashListError
    from crawler.matching.loading import load_hashlists
    from crawler.matching.matcher import Matcher

    queries = list(_queries_from_file(args.hashes_file) if args.hashes_file else _queries_from_args(args.hashes))
    lists = load_hashlists(args.lists, args.hashlist_algorithm, skip_bad_lines=args.skip_bad_lines,
                           remote=_remote(args))
    try:
        matcher = Matcher(lists, radii=dict(args.radius))
    except ValueError as exc:
        raise HashListError("--radius", None, str(exc)) from None
    if not args.json:
        print("\t".join(("query", "list", "entry_id", "label", "distance", "matched_hash")))
    for query in queries:
        matches = matcher.match({query.algorithm: query.hash})
        shown = f"{query.algorithm}:{query.hash}"
        if not matches and not args.json:
            print(f"{shown}\tno match")
        for m in matches:
            if args.json:
                print(json.dumps({"query": shown, "algorithm": m.algorithm, "list": m.list_name,
                                  "entry_id": m.entry_id, "label": m.label, "distance": m.distance,
                                  "matched_hash": m.matched_hash}, ensure_ascii=False))
            else:
                print("\t".join((shown, m.list_name, _cell(m.entry_id), _cell(m.label), str(m.distance),
                                 m.matched_hash)))
    return EXIT_OK


def _cell(value: str | None) -> str:
    return "-" if value is None else value.replace("\t", " ").replace("\n", " ")


def _query(source: str, algorithm: str, value: str) -> Query:
    """A validated query; HashListError (naming ``source``, never the value) if it is not one."""
    from crawler.matching.hashlist import HashListError, normalize_algorithm, normalize_hash

    try:
        name = normalize_algorithm(algorithm)
        return Query(name, normalize_hash(name, value), source)
    except ValueError as exc:
        raise HashListError(source, None, str(exc)) from None


def _queries_from_args(values: list[str]) -> Iterator[Query]:
    for position, text in enumerate(values, 1):
        source = f"--hash #{position}"
        algorithm, sep, value = text.partition(":")
        if not sep:
            from crawler.matching.hashlist import HashListError

            raise HashListError(source, None, "expected ALGO:HEX, e.g. pdq:<64 hex digits>")
        yield _query(source, algorithm, value)


def _queries_from_file(path: str) -> Iterator[Query]:
    """``ALGO:HEX`` lines (blank lines and ``#`` comments skipped), or a CSV with algorithm and hash columns."""
    from crawler.matching.hashlist import HashListError

    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise HashListError(path, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HashListError(path, None, f"cannot read as UTF-8 text: {type(exc).__name__}") from None
    content = [(number, line) for number, line in enumerate(text.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#")]
    header: dict[str, int] | None = None
    if content:
        names = [c.strip().lower() for c in next(csv.reader([content[0][1]]))]
        if {"algorithm", "hash"} <= set(names):
            header = {"algorithm": names.index("algorithm"), "hash": names.index("hash")}
            content = content[1:]
    for number, line in content:
        source = f"{path}:{number}"
        if header is not None:
            cells = next(csv.reader([line]))
            algorithm, value = (cells[header[c]] if header[c] < len(cells) else "" for c in ("algorithm", "hash"))
            yield _query(source, algorithm, value)
            continue
        algorithm, sep, value = line.strip().partition(":")
        if not sep:
            raise HashListError(path, number, "expected ALGO:HEX (or a CSV with an algorithm,hash header)")
        yield _query(source, algorithm, value)


def _remote(args: argparse.Namespace) -> Any:
    """S3 access for ``s3://`` lists (the crawl's: same endpoint option, same input cache), else None."""
    from crawler.matching.hashlist import parse_hashlist_spec
    from crawler.storage.inputs import configure_inputs, is_s3_url

    if not any(is_s3_url(parse_hashlist_spec(spec)[1]) for spec in args.lists):
        return None
    return configure_inputs(args.s3_endpoint_url)


def _compile(args: argparse.Namespace) -> int:
    from crawler.matching.compiled import SUFFIX, compile_hashlist
    from crawler.matching.hashlist import HashListError, parse_hashlist_spec
    from crawler.storage.inputs import is_s3_url

    remote = _remote(args)
    for spec in args.lists:
        _, path = parse_hashlist_spec(spec)
        started = time.perf_counter()
        # An s3:// list is compiled from its cached copy, and the compiled file goes beside the object, where
        # every worker's loader looks for it (crawler/matching/loading.py).
        source = remote.local_copies(path, None)[0] if is_s3_url(path) else path
        try:
            hashlist, target = compile_hashlist(source, algorithm=args.hashlist_algorithm,
                                                skip_bad_lines=args.skip_bad_lines, radii=dict(args.radius))
        except HashListError as exc:
            raise HashListError(path, exc.line, exc.reason.replace(str(source), path)) from None
        where = str(target)
        if is_s3_url(path):
            where = path + SUFFIX
            remote.upload(target, where)
        seconds = time.perf_counter() - started
        counts = ", ".join(f"{algorithm} {count:,}" for algorithm, count in hashlist.count_by_algorithm().items())
        print(f"{path} -> {where}: {len(hashlist):,} entries ({counts}), {hashlist.bad_lines:,} bad lines "
              f"skipped, {target.stat().st_size / 2**20:.1f} MiB, {seconds:.1f} s")
    sys.stdout.flush()
    return EXIT_OK
