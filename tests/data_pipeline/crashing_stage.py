"""A stage that raises on one kind of document, registered through ``stage_modules`` by the tests.

It stands for a filter with a bug that only a rare document triggers (a parser that overflows, a
regex that trips, a division by a count that can be zero). Kept out of data_pipeline/stages/ so it
is never part of a real run; ``stage_modules`` imports it in the driver and in every Ray worker.
"""

from __future__ import annotations

from typing import Any

from data_pipeline.stage import DocumentStage, register

TRIGGER = "\u2063crash-probe\u2063"
"""Text that makes the stage raise (invisible separators around a word: cannot occur in the demo corpus)."""


@register
class CrashProbe(DocumentStage):
    """Keeps every document, except that it raises on one containing TRIGGER, as a buggy filter would."""

    name = "crash_probe"
    # No columns, on purpose: the tests' shared Ray workers keep it registered for the rest of the
    # session, and a registered stage's columns join every stage-1 table those workers write.

    def process(self, text: str, row: dict[str, Any]) -> tuple[str, str | None]:
        if TRIGGER in text:
            words = text.count(TRIGGER) - text.count(TRIGGER)
            return text, "never" if len(text) / words else None  # ZeroDivisionError: the bug being stood for
        return text, None
