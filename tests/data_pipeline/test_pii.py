"""PII scrubbing: placeholders and counts; conservative on technical text."""

from hypothesis import given, settings
from hypothesis import strategies as st

from data_pipeline.config import plain
from data_pipeline.pii import IPV4, cn_id_checksum_ok, scrub, sub_ipv4

from .conftest import load_config


def _cfg(**kw):
    return plain(load_config(input="x", output="y", **kw)).pii


def _valid_cn_id(prefix17: str) -> str:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return prefix17 + "10X98765432"[sum(int(d) * w for d, w in zip(prefix17, weights)) % 11]


def test_each_kind_is_replaced_and_counted():
    cn_id = _valid_cn_id("11010519491231002")
    text = (f"Mail alice.smith@example.org or call +1 (555) 123-4567 / 13800138000. "
            f"Server 8.8.8.8, SSN 123-45-6789, 身份证 {cn_id}.")
    out, counts = scrub(text, _cfg())
    assert counts == {"email": 1, "ip": 1, "phone": 2, "cn_id": 1, "us_ssn": 1}
    for secret in ("alice.smith@example.org", "555", "13800138000", "8.8.8.8", "123-45-6789", cn_id):
        assert secret not in out
    assert "<EMAIL>" in out and "<IP_ADDRESS>" in out and "<PHONE>" in out and "<ID_NUMBER>" in out


def test_private_ips_versions_and_bad_checksums_survive():
    valid = _valid_cn_id("11010519491231002")
    invalid = valid[:17] + ("0" if valid[17] != "0" else "1")
    assert cn_id_checksum_ok(valid) and not cn_id_checksum_ok(invalid)
    text = f"Bind to 127.0.0.1 and 192.168.1.10; upgrade to ray 2.60.0; id {invalid} is not valid."
    out, counts = scrub(text, _cfg())
    assert counts["ip"] == 0 and counts["cn_id"] == 0 and counts["phone"] == 0
    assert out == text


def test_private_ips_are_scrubbed_when_configured():
    out, counts = scrub("host 192.168.1.10", _cfg(**{"pii.keep_private_ips": False}))
    assert counts["ip"] == 1 and out == "host <IP_ADDRESS>"


def test_dotted_quad_with_leading_zero_is_kept_not_a_crash():
    # ipaddress rejects "02"; the pattern admits it: once a ValueError that failed the whole batch
    text, counts = scrub("released 20.1.8.02, mirror at 8.8.8.8", _cfg())
    assert text == "released 20.1.8.02, mirror at <IP_ADDRESS>" and counts["ip"] == 1


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="0123456789.25 x", max_size=60))
def test_hinted_ipv4_scan_equals_the_full_scan(text):
    mark = lambda m: f"<{m.group(0)}>"  # noqa: E731
    assert sub_ipv4(mark, text) == IPV4.sub(mark, text)
