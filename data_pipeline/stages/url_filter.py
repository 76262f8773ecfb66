"""URL filtering as a stage: drop documents from blocklisted domains (subdomains included) before any cleaning."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from data_pipeline.stage import DocumentStage, register
from data_pipeline.urls import load_domain_list, match


@lru_cache(maxsize=8)
def _domains(path: str) -> dict[str, str]:
    """Loaded once per worker process: stages are rebuilt per batch, and a UT1 list holds millions of domains."""
    return load_domain_list(path)


@register
class UrlFilter(DocumentStage):
    """Drop reason ``blocklisted_domain:<category>`` (category: the UT1 folder or the list file's stem).

    ``url_filter.blocklist``: a file of domains, one a line, or a UT1-style
    directory (``<dir>/<category>/domains``). ``url_filter.allowlist``: domains
    never dropped by the blocklist (published lists over-block). With
    ``url_filter.allowlist_only`` only allowlisted domains are kept (reason
    ``not_allowlisted``). A document without a URL (``domain`` null) always passes:
    there is nothing to judge it by.
    """

    name = "url_filter"
    config_key = "url_filter"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.blocked = _domains(str(cfg.blocklist)) if cfg.get("blocklist") else {}
        self.allowed = _domains(str(cfg.allowlist)) if cfg.get("allowlist") else {}
        self.allowlist_only = bool(cfg.get("allowlist_only"))

    def process(self, text: str, row: dict[str, Any]) -> tuple[str, str | None]:
        domain = row.get("domain")
        if not domain or match(domain, self.allowed):
            return text, None
        if self.allowlist_only:
            return text, "not_allowlisted"
        category = match(domain, self.blocked)
        return text, f"blocklisted_domain:{category}" if category else None
