"""Placeholders: 200 answers that are not the image any more but a host's stock "image not available" picture.

Hosts answer removed images with a stock picture (Imgur redirects to ``removed.png``, Flickr serves
``photo_unavailable.png``; one such picture became the mean image of an ImageNet download), so a plain
"200 and decodes" overstates what is alive. A run's alive rows are marked ``placeholder`` when

- their final URL or hash is on the known list (``crawler/data/placeholders.csv`` plus the user's own,
  ``--placeholders FILE``, same format);
- the same content (md5, or the same pHash: a re-encoded copy) was served for at least ``min_urls`` distinct
  URLs of one registrable domain in the run;
- at least ``min_redirects`` distinct URLs of one domain were redirected to one final URL.

A row that matched a hash list is never made a placeholder: a known image served at many URLs is exactly
what must not disappear from the counts. Whole columns at a time (pyarrow group-bys), no row loop.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KINDS = ("final_url", "domain_path", "md5", "phash")


class PlaceholderListError(ValueError):
    """A bad line in a placeholder list; the message names file and line."""


@dataclass(frozen=True, slots=True)
class KnownPlaceholders:
    final_urls: frozenset[str] = frozenset()
    domain_paths: frozenset[tuple[str, str]] = frozenset()  # (registrable domain, path suffix)
    md5s: frozenset[str] = frozenset()
    phashes: frozenset[str] = frozenset()

    def merged(self, other: KnownPlaceholders) -> KnownPlaceholders:
        return KnownPlaceholders(self.final_urls | other.final_urls, self.domain_paths | other.domain_paths,
                                 self.md5s | other.md5s, self.phashes | other.phashes)


@dataclass(frozen=True, slots=True)
class PlaceholderRules:
    known: KnownPlaceholders = field(default_factory=KnownPlaceholders)
    min_urls: int = 20  # distinct URLs of one domain serving one content
    min_redirects: int = 20  # distinct URLs of one domain redirected to one final URL


def read_known(path: str | os.PathLike[str] | None = None) -> KnownPlaceholders:
    """The shipped list, or the list at ``path``: ``kind,value[,note]`` lines, ``#`` comments."""
    if path is None:
        text = resources.files("crawler.data").joinpath("placeholders.csv").read_text(encoding="utf-8")
        where = "crawler/data/placeholders.csv"
    else:
        where = os.fspath(path)
        try:
            text = Path(where).read_text(encoding="utf-8")
        except OSError as exc:
            raise PlaceholderListError(f"{where}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise PlaceholderListError(f"{where}: not UTF-8 text") from None
    found: dict[str, set] = {kind: set() for kind in KINDS}
    for number, cells in enumerate(csv.reader(text.splitlines()), 1):
        if not cells or not cells[0].strip() or cells[0].lstrip().startswith("#"):
            continue
        kind, value = cells[0].strip().lower(), (cells[1].strip() if len(cells) > 1 else "")
        if kind not in KINDS or not value:
            raise PlaceholderListError(f"{where}:{number}: expected KIND,VALUE with KIND one of {', '.join(KINDS)}")
        if kind == "domain_path":
            domain, _, suffix = value.partition(" ")
            if not suffix.strip().startswith("/"):
                raise PlaceholderListError(f"{where}:{number}: domain_path is 'DOMAIN /PATH-SUFFIX'")
            found[kind].add((domain.lower(), suffix.strip()))
        elif kind in ("md5", "phash"):
            digits = 32 if kind == "md5" else 16
            if len(value) != digits or any(c not in "0123456789abcdefABCDEF" for c in value):
                raise PlaceholderListError(f"{where}:{number}: not a {digits}-hex-digit {kind}")
            found[kind].add(value.lower())
        else:
            found[kind].add(value)
    return KnownPlaceholders(frozenset(found["final_url"]), frozenset(found["domain_path"]),
                             frozenset(found["md5"]), frozenset(found["phash"]))


def detect(rows: pa.Table, rules: PlaceholderRules) -> tuple[np.ndarray, pa.Array]:
    """``(is_placeholder, reason)`` for every row of a run (columns url, domain, outcome, md5, phash,
    final_url, matched); reason is null where not a placeholder."""
    n = rows.num_rows
    rows = pa.table({name: rows[name].cast(pa.bool_() if name == "matched" else pa.string())
                     for name in ("url", "domain", "outcome", "md5", "phash", "final_url", "matched")})
    alive = _bool(pc.equal(rows["outcome"], "ok"))
    eligible = alive & ~_bool(rows["matched"])
    reasons = np.full(n, None, dtype=object)

    def mark(mask: np.ndarray, reason: str) -> None:
        chosen = mask & eligible & (reasons == None)  # noqa: E711 - elementwise on an object array
        reasons[chosen] = reason

    known = rules.known
    final_url = rows["final_url"]
    if known.final_urls:
        mark(_bool(pc.is_in(final_url, pa.array(sorted(known.final_urls)))), "known_url")
    if known.domain_paths:
        mark(_known_domain_paths(final_url, eligible, known.domain_paths), "known_url")
    if known.md5s:
        mark(_bool(pc.is_in(pc.utf8_lower(rows["md5"]), pa.array(sorted(known.md5s)))), "known_hash")
    if known.phashes:
        mark(_bool(pc.is_in(pc.utf8_lower(rows["phash"]), pa.array(sorted(known.phashes)))), "known_hash")
    redirected = eligible & _bool(pc.not_equal(final_url, rows["url"]))
    mark(_shared(rows, redirected, "final_url", rules.min_redirects), "same_redirect_target")
    for column in ("md5", "phash"):
        mark(_shared(rows, eligible, column, rules.min_urls), "same_content")
    return np.asarray(reasons != None), pa.array(reasons, type=pa.string())  # noqa: E711


def _shared(rows: pa.Table, among: np.ndarray, column: str, threshold: int) -> np.ndarray:
    """Rows (within ``among``) whose (domain, ``column``) value is shared by >= threshold distinct URLs.

    A value held by fewer rows than the threshold cannot qualify, so the rows are first narrowed to the
    values that are common at all (one count over the column: almost every md5 is unique), and only those
    few rows are grouped by domain and counted by distinct URL.
    """
    mask = np.zeros(rows.num_rows, dtype=bool)
    if threshold < 1 or not among.any():
        return mask
    values = rows[column].filter(pa.array(among))
    counted = pc.value_counts(values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values)
    common = counted.field("values").filter(pc.greater_equal(counted.field("counts"), threshold))
    common = common.filter(pc.is_valid(common))  # null content is not shared content
    if len(common) == 0:
        return mask
    index = np.flatnonzero(among & _bool(pc.is_in(rows[column], common)))
    subset = pa.table({"domain": rows["domain"].take(index), "value": rows[column].take(index),
                       "url": rows["url"].take(index), "row": pa.array(index)})
    counts = subset.group_by(["domain", "value"]).aggregate([("url", "count_distinct")])
    busy = counts.filter(pc.greater_equal(counts["url_count_distinct"], threshold))
    if busy.num_rows:
        hit = subset.join(busy, ["domain", "value"], join_type="inner")
        mask[hit["row"].to_numpy()] = True
    return mask


def _path_of(urls: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The path of each URL (scheme, host and query removed)."""
    without_scheme = pc.replace_substring_regex(urls, r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*", "")
    return pc.replace_substring_regex(without_scheme, r"[?#].*$", "")


def _known_domain_paths(final_url: pa.ChunkedArray, among: np.ndarray,
                        domain_paths: frozenset[tuple[str, str]]) -> np.ndarray:
    """Rows (within ``among``) whose final URL is on a known (domain, path suffix): the path test first, over
    every row at once; the domain (a Public Suffix List look-up) only for the few rows whose path fits."""
    mask = np.zeros(len(final_url), dtype=bool)
    path = pc.utf8_lower(_path_of(final_url))
    fits = np.zeros(len(final_url), dtype=bool)
    for suffix in {suffix.lower() for _, suffix in domain_paths}:
        fits |= _bool(pc.ends_with(path, suffix))
    candidates = np.flatnonzero(fits & among)
    if not len(candidates):
        return mask
    domains = _domains_of(final_url.take(candidates))
    paths = path.take(candidates).to_pylist()
    for k, (domain, end) in enumerate(zip(domains, paths)):
        if any(domain == d and end.endswith(suffix.lower()) for d, suffix in domain_paths):
            mask[candidates[k]] = True
    return mask


def _domains_of(urls: pa.Array | pa.ChunkedArray) -> list[str | None]:
    """Registrable domain of each URL (looked up once per distinct host)."""
    from crawler.domains import registrable_domain

    hosts = pc.extract_regex(urls, r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#]*)")
    return [registrable_domain(host) if host else None for host in pc.struct_field(hosts, "host").to_pylist()]


def _bool(values: Iterable) -> np.ndarray:
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)
