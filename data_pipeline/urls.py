"""Hosts of URLs and domain lists: what the ``domain`` column holds and the URL filter matches.

A domain list entry covers its subdomains (``example.com`` blocks
``news.example.com``), as in UT1 and most published blocklists, so matching
walks the host's parent domains rather than comparing the whole host.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit


def domain_of(url: str) -> str | None:
    """Lower-case host without port, credentials, trailing dot or a leading ``www.``; None if there is none."""
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None
    if not host:
        return None
    host = host.rstrip(".")
    return host[4:] if host.startswith("www.") else host


def parent_domains(domain: str) -> Iterable[str]:
    """``a.b.example.com`` -> itself, ``b.example.com``, ``example.com``, ``com``."""
    parts = domain.split(".")
    for i in range(len(parts)):
        yield ".".join(parts[i:])


def _read_list(path: Path) -> Iterable[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            entry = line.split("#", 1)[0].strip().lower()
            if entry:
                yield domain_of(entry if "//" in entry else f"http://{entry}") or entry


def load_domain_list(path: str) -> dict[str, str]:
    """{domain: category} from a file of domains (category: the file's stem) or a UT1-style directory.

    UT1 (Université Toulouse 1 Capitole) lists are ``<dir>/<category>/domains``;
    every file named ``domains`` under the directory is read, its category being
    its folder's name, and other files (``urls``, ``usage``, READMEs) are not.
    """
    root = Path(os.path.expanduser(path))
    if not root.exists():
        raise FileNotFoundError(f"domain list not found: {root}")
    lists = sorted(root.rglob("domains")) if root.is_dir() else [root]
    out: dict[str, str] = {}
    for list_path in lists:
        category = list_path.parent.name if root.is_dir() else list_path.stem
        for domain in _read_list(list_path):
            out.setdefault(domain, category)
    return out


def match(domain: str | None, domains: dict[str, str]) -> str | None:
    """The category of the most specific listed domain covering ``domain``, or None."""
    if not domain or not domains:
        return None
    for candidate in parent_domains(domain):
        if candidate in domains:
            return domains[candidate]
    return None
