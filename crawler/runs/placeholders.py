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
what must not disappear from the counts. The rules run as SQL in DuckDB (``mark_placeholders``), grouping
a whole run within a memory limit; ``detect`` runs them over an Arrow table.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Any
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa

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


def rules_from_settings(settings: Any) -> PlaceholderRules:
    """The rules the settings ask for: the shipped known list plus ``REFWATCH_PLACEHOLDERS``, and thresholds."""
    known = read_known()
    user_list = settings.get("REFWATCH_PLACEHOLDERS")
    if user_list:
        known = known.merged(read_known(user_list))
    return PlaceholderRules(known=known, min_urls=settings.getint("REFWATCH_PLACEHOLDER_MIN_URLS"),
                            min_redirects=settings.getint("REFWATCH_PLACEHOLDER_MIN_REDIRECTS"))


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


#: What ``mark_placeholders`` reads: a table of the run's rows with these columns (``_f``, ``_r``: a row's key).
ROW_COLUMNS = ("_f", "_r", "url", "domain", "outcome", "md5", "phash", "final_url", "matched")


def mark_placeholders(con: Any, rules: PlaceholderRules, rows: str = "cur") -> None:
    """Create the table ``reasons(_f, _r, reason)`` in the DuckDB connection ``con``: the rows of ``rows`` that
    are placeholders and why (the first rule that fits, in the order of the module docstring).

    SQL, so a run of millions of rows is grouped within DuckDB's memory limit (it spills), not in Python.
    """
    known = rules.known
    con.execute(f"""CREATE OR REPLACE TEMP TABLE eligible AS
        SELECT _f, _r, url, domain, md5, phash, final_url FROM {rows}
        WHERE outcome = 'ok' AND NOT coalesce(matched, false)""")
    con.execute("CREATE OR REPLACE TEMP TABLE reasons (_f VARCHAR, _r BIGINT, reason VARCHAR)")

    def add(reason: str, where: str, params: list[Any] | None = None) -> None:
        con.execute(f"""INSERT INTO reasons SELECT e._f, e._r, '{reason}' FROM eligible e
            WHERE ({where}) AND NOT EXISTS (SELECT 1 FROM reasons r WHERE r._f = e._f AND r._r = e._r)""",
                    params or [])

    if known.final_urls:
        add("known_url", "e.final_url IN (SELECT unnest($1::VARCHAR[]))", [sorted(known.final_urls)])
    if known.domain_paths:
        _mark_known_domain_paths(con, known.domain_paths)
    if known.md5s:
        add("known_hash", "lower(e.md5) IN (SELECT unnest($1::VARCHAR[]))", [sorted(known.md5s)])
    if known.phashes:
        add("known_hash", "lower(e.phash) IN (SELECT unnest($1::VARCHAR[]))", [sorted(known.phashes)])
    if rules.min_redirects >= 1:
        add("same_redirect_target", f"""e.final_url <> e.url AND (e.domain, e.final_url) IN (
            SELECT (domain, final_url) FROM eligible WHERE final_url <> url
            GROUP BY domain, final_url HAVING count(DISTINCT url) >= {int(rules.min_redirects)})""")
    if rules.min_urls >= 1:
        for column in ("md5", "phash"):
            add("same_content", f"""e.{column} IS NOT NULL AND (e.domain, e.{column}) IN (
                SELECT (domain, {column}) FROM eligible WHERE {column} IS NOT NULL
                GROUP BY domain, {column} HAVING count(DISTINCT url) >= {int(rules.min_urls)})""")


def _mark_known_domain_paths(con: Any, domain_paths: frozenset[tuple[str, str]]) -> None:
    """``known_url`` for rows whose final URL ends in a known path on its known domain: the path test in SQL
    over every row, the domain (a Public Suffix List look-up) in Python for the few rows whose path fits."""
    from crawler.domains import url_domain

    suffixes = sorted({suffix.lower() for _, suffix in domain_paths})
    candidates = con.execute("""SELECT DISTINCT e.final_url FROM eligible e, (SELECT unnest($1::VARCHAR[]) AS s) x
        WHERE ends_with(lower(regexp_replace(regexp_replace(e.final_url, '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*', ''),
                                             '[?#].*$', '')), x.s)""", [suffixes]).fetchall()
    known = []
    for (final_url,) in candidates:
        domain = url_domain(final_url)
        path = _path_of_url(final_url).lower()
        if any(domain == d and path.endswith(suffix.lower()) for d, suffix in domain_paths):
            known.append(final_url)
    if known:
        con.execute("""INSERT INTO reasons SELECT e._f, e._r, 'known_url' FROM eligible e
            WHERE e.final_url IN (SELECT unnest($1::VARCHAR[]))
              AND NOT EXISTS (SELECT 1 FROM reasons r WHERE r._f = e._f AND r._r = e._r)""", [known])


def _path_of_url(url: str) -> str:
    """The path of a URL (scheme, host, query and fragment removed)."""
    import re

    without = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*", "", url)
    return re.sub(r"[?#].*$", "", without)


def detect(rows: pa.Table, rules: PlaceholderRules) -> tuple[np.ndarray, pa.Array]:
    """``(is_placeholder, reason)`` for every row of an Arrow table (columns url, domain, outcome, md5, phash,
    final_url, matched), through ``mark_placeholders``: for tests and small tables."""
    import duckdb

    n = rows.num_rows
    table = pa.table({"_f": pa.array([""] * n), "_r": pa.array(range(n), pa.int64()),
                      **{name: rows[name].cast(pa.bool_() if name == "matched" else pa.string())
                         for name in ROW_COLUMNS[2:]}})
    con = duckdb.connect()
    try:
        con.register("cur_arrow", table)
        con.execute("CREATE TEMP TABLE cur AS SELECT * FROM cur_arrow")
        mark_placeholders(con, rules)
        found = dict(con.execute("SELECT _r, reason FROM reasons").fetchall())
    finally:
        con.close()
    reasons = [found.get(i) for i in range(n)]
    return np.array([r is not None for r in reasons], dtype=bool), pa.array(reasons, type=pa.string())
