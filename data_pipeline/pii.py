"""Replace personal data with placeholders: e-mail, IP, phone, Chinese resident ID, US SSN.

Documents are kept; only the matched spans change, and each replacement is
counted so the report shows how much was scrubbed. Patterns are deliberately
conservative (word boundaries, checksums for resident IDs, separators for
phone numbers): in technical text a false positive destroys a version number
or a port, which costs more than the rare miss.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable

PLACEHOLDERS = {"email": "<EMAIL>", "ip": "<IP_ADDRESS>", "phone": "<PHONE>", "cn_id": "<ID_NUMBER>",
                "us_ssn": "<ID_NUMBER>"}

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}"   # international: +86 138 0013 8000, +1 (555) 123-4567
    r"|\(\d{3}\)\s?\d{3}-\d{4}"                             # (555) 123-4567
    r"|\d{3}-\d{3}-\d{4}"                                   # 555-123-4567
    r"|1[3-9]\d{9}"                                         # Chinese mobile 13800138000
    r")(?![\w])")
# Patterns open with a character class, and the "no digit before" lookbehind comes after it: Python's
# re only skips ahead quickly to a possible start when the first item is a character or a class
# (4x faster on prose than a leading lookbehind, same matches).
CN_ID = re.compile(r"[1-9](?<!\d[1-9])\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?!\d)")
US_SSN = re.compile(r"\d(?<!\d\d)\d\d-\d\d-\d{4}(?!\d)")  # never-issued numbers: see ssn_issuable
# Where an IPv4 address can be: the last digit of its first octet and the dots after it. Unlike IPV4,
# whose leading lookbehind denies Python's re its fast skip to a possible first character, this opens
# with a digit class; see sub_ipv4.
IPV4_HINT = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")
_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_ID_CHECK = "10X98765432"


def cn_id_checksum_ok(number: str) -> bool:
    """GB 11643-1999 check digit: rejects most 18-digit numbers that are not resident IDs."""
    total = sum(int(d) * w for d, w in zip(number[:17], _CN_ID_WEIGHTS))
    return _CN_ID_CHECK[total % 11] == number[17].upper()


def ssn_issuable(number: str) -> bool:
    """SSA rules: no area 000, 666 or 9xx, no group 00, no serial 0000 (those were never issued)."""
    area, group, serial = number.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _is_public_ip(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # "20.1.8.02": a leading zero is no IP address (ipaddress rejects it); a version or date
        return False
    return not (ip.is_private or ip.is_loopback or ip.is_reserved or ip.is_multicast
                or ip.is_unspecified or ip.is_link_local)


def sub_ipv4(repl: Callable[[re.Match], str], text: str) -> str:
    """``IPV4.sub(repl, text)``, trying the full pattern only next to an IPV4_HINT match.

    Every IPV4 match starting at ``s`` contains a hint match starting in
    ``[s, s + 2]`` (the last digit of a 1-3 digit first octet), so the leftmost
    match at or after ``pos`` starts within two characters before the next
    hint: the same matches as a full scan, in the same order, at a fraction of
    the cost on text full of section numbers like "6.2.4.1".
    """
    pieces, pos, copied = [], 0, 0
    while (hint := IPV4_HINT.search(text, pos)) is not None:
        found = None
        for start in range(max(hint.start() - 2, pos), hint.start() + 1):
            if (found := IPV4.match(text, start)) is not None:
                break
        if found is None:
            pos = hint.start() + 1
            continue
        pieces += [text[copied:found.start()], repl(found)]
        copied = pos = found.end()
    pieces.append(text[copied:])
    return "".join(pieces)


def scrub(text: str, cfg: Any) -> tuple[str, dict[str, int]]:
    """(text with placeholders, replacements per kind)."""
    counts = {kind: 0 for kind in PLACEHOLDERS}
    kinds = set(cfg.kinds)
    unknown = kinds - set(PLACEHOLDERS)
    if unknown:
        raise ValueError(f"pii.kinds: unknown kind(s) {sorted(unknown)}; known: {sorted(PLACEHOLDERS)}")

    def replace(substitute: Callable, kind: str, accept: Callable[[str], bool] | None = None) -> None:
        """``substitute(repl, text)``: a pattern's ``sub`` or sub_ipv4, which has the same signature."""
        nonlocal text

        def sub(match: re.Match) -> str:
            if accept is not None and not accept(match.group(0)):
                return match.group(0)
            counts[kind] += 1
            return PLACEHOLDERS[kind]

        text = substitute(sub, text)

    if "email" in kinds and "@" in text:
        replace(EMAIL.sub, "email")
    if "cn_id" in kinds:  # before phone: an ID contains digit runs a phone pattern could bite into
        replace(CN_ID.sub, "cn_id", cn_id_checksum_ok)
    if "us_ssn" in kinds:
        replace(US_SSN.sub, "us_ssn", ssn_issuable)
    if "ip" in kinds:
        replace(sub_ipv4, "ip", _is_public_ip if cfg.keep_private_ips else None)
    if "phone" in kinds:
        replace(PHONE.sub, "phone")
    return text, counts
