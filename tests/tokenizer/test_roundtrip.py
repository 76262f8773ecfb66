"""Decoding an encoding gives back the input exactly, for any Unicode text (property-based)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Characters the corpus rarely or never has: emoji (with ZWJ and skin tones), CJK extension
# ideographs, combining marks, and the whitespace and punctuation of source code.
TRICKY = ("😀👍🏽👨‍👩‍👧🇯🇵🧬" "\U00020000\U0002a6d6\U00030000𠀋𪚥龘" "é\u0301\u200b\u00a0\u3000\ufeff"
          " \t\n\r\x0b\x0c{}()[];:=<>#\"'\\`~$%^&*-_/|" "abcXYZ019中文日本語한국어Ωж")
texts = st.one_of(st.text(max_size=200), st.text(alphabet=TRICKY, max_size=200),
                  st.lists(st.sampled_from(["    ", "\t", "\n", "def ", "x = 1", "  # c", "\r\n", "😀", "\U00020000"]),
                           max_size=40).map("".join))
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(text=texts)
def test_sentencepiece_round_trip_is_exact(sp, text):
    ids = sp.encode(text)
    assert sp.unk_id() not in ids
    assert sp.decode(ids) == text


@pytest.mark.parametrize("text", [
    "", " ", "  leading and trailing  ", "\n\n\n", "tab\tsep\tvalues\n",
    "if x:\r\n    return {'a': [1, 2]}  # comment\n",
    "家族 👨‍👩‍👧 and 🇫🇷 flags; rare 𠀋𪚥 and 龘",
    "zero\u200bwidth, nbsp\u00a0, ideographic\u3000space, BOM\ufeff",
])
def test_round_trip_examples(sp, text):
    assert sp.decode(sp.encode(text)) == text
