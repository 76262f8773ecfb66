"""The URL filter stage: domain lists (plain file or UT1 directory), subdomains, allowlist."""

from __future__ import annotations

import pytest

from data_pipeline.config import ConfigError, plain, validate
from data_pipeline.stages.url_filter import UrlFilter
from data_pipeline.urls import domain_of, load_domain_list, match

from .conftest import load_config
from .crawl_data import BLOCKLIST


@pytest.mark.parametrize("url, domain", [
    ("https://www.Example.COM/a", "example.com"), ("http://user:pw@news.example.com:8080/x", "news.example.com"),
    ("https://example.com./", "example.com"), ("not a url", None), ("http://[::1/", None)])
def test_domain_of(url, domain):
    assert domain_of(url) == domain


def test_ut1_directory_reads_only_domains_files_and_matches_subdomains(tmp_path):
    (tmp_path / "adult").mkdir()
    (tmp_path / "adult" / "domains").write_text("# comment\nbad.example\nwww.porn.example\n")
    (tmp_path / "adult" / "urls").write_text("good.example/some/page\n")
    (tmp_path / "phishing").mkdir()
    (tmp_path / "phishing" / "domains").write_text("evil.example.org\n")
    lists = load_domain_list(str(tmp_path))
    assert lists == {"bad.example": "adult", "porn.example": "adult", "evil.example.org": "phishing"}
    assert match("a.b.bad.example", lists) == "adult"
    assert match("notbad.example", lists) is None  # a suffix of the name is not a parent domain
    assert match("good.example", lists) is None and match(None, lists) is None


def _stage(**cfg):
    return UrlFilter(plain({"blocklist": None, "allowlist": None, "allowlist_only": False, **cfg}))


def test_stage_drops_blocklisted_domains_with_its_reason(tmp_path):
    allow = tmp_path / "allow.txt"
    allow.write_text("safe.blocked.example.com\n")
    stage = _stage(blocklist=str(BLOCKLIST), allowlist=str(allow))
    assert stage.process("t", {"domain": "casino.blocked.example.com"}) == ("t", "blocklisted_domain:gambling")
    assert stage.process("t", {"domain": "badsite.example.net"})[1] == "blocklisted_domain:gambling"
    assert stage.process("t", {"domain": "docs.safe.blocked.example.com"})[1] is None  # allowlisted
    assert stage.process("t", {"domain": "example.net"})[1] is None
    assert stage.process("t", {"domain": None})[1] is None  # no URL: nothing to judge by
    only = _stage(allowlist=str(allow), allowlist_only=True)
    assert only.process("t", {"domain": "example.net"})[1] == "not_allowlisted"
    assert only.process("t", {"domain": "safe.blocked.example.com"})[1] is None


def test_a_missing_blocklist_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config key 'url_filter.blocklist'"):
        validate(load_config(input="x", output="y", **{"url_filter.blocklist": str(tmp_path / "nope")}))
