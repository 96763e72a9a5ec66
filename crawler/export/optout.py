"""Opt-out lists: the URLs and domains whose owners asked for their images to be left out of a dataset.

``refwatch export-clean --drop opted_out --opt-out FILE`` drops the references they cover. A URL line covers
that exact URL (as written in the snapshot); a domain line covers references whose registrable domain it is
(``crawler.domains.url_domain``) and, for a listed sub-domain, every host under it: ``example.com`` covers
``img.example.com``; ``photos.example.com`` covers ``a.photos.example.com`` but not ``www.example.com``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from crawler.domains import url_domain


@dataclass(frozen=True, slots=True)
class OptOut:
    """URLs (exact) and domains (that host and every host under it) whose references must go."""

    urls: frozenset[str]
    domains: frozenset[str]

    def __contains__(self, url: object) -> bool:
        if not isinstance(url, str) or not url:
            return False
        if url in self.urls:
            return True
        if not self.domains:
            return False
        if url_domain(url) in self.domains:  # the registrable domain (cached per host)
            return True
        try:
            host = (urlsplit(url).hostname or "").rstrip(".")
        except ValueError:
            return False
        labels = host.split(".")
        # A listed sub-domain (photos.example.com) covers the hosts under it, not the rest of example.com.
        return any(".".join(labels[i:]) in self.domains for i in range(len(labels) - 1))


def read_opt_out(path: str | os.PathLike[str]) -> OptOut:
    """One URL (``scheme://...``) or domain a line; blank lines and ``#`` comments (whole line or after the
    entry) are skipped. ValueError (one line naming the file and line) for anything else."""
    urls: set[str] = set()
    domains: set[str] = set()
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{os.fspath(path)}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{os.fspath(path)}: cannot read as UTF-8 text ({type(exc).__name__})") from None
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if not entry or entry.startswith("#"):
            continue
        if "://" in entry:
            urls.add(entry)
            continue
        domain = entry.lower().rstrip(".").removeprefix("*.")
        if not domain or any(ch in domain for ch in "/ \t?#@:") or ("." not in domain and domain != "localhost"):
            raise ValueError(f"{os.fspath(path)}:{number}: neither a URL (scheme://...) nor a domain "
                              f"({len(entry)} characters)")
        domains.add(domain)
    return OptOut(frozenset(urls), frozenset(domains))
