"""A stage that takes a fixed time per document, registered through ``stage_modules`` by the tests.

It holds a run in stage 1 long enough that a test can kill the driver there on a small corpus, however
fast or loaded the machine is. Only CLI runs in subprocesses import it, so the test process's stage
registry never sees it.
"""

from __future__ import annotations

import time
from typing import Any

from data_pipeline.stage import DocumentStage, register

SECONDS_PER_DOCUMENT = 0.25


@register
class SlowProbe(DocumentStage):
    """Keeps every document, after sleeping SECONDS_PER_DOCUMENT."""

    name = "slow_probe"

    def process(self, text: str, row: dict[str, Any]) -> tuple[str, str | None]:
        time.sleep(SECONDS_PER_DOCUMENT)
        return text, None
