"""The one interface every per-document stage implements, and the registry ``stages`` is resolved in.

Modelled on datatrove's PipelineStep/BaseFilter: a stage is an object built
once from its config block and then called on document after document. It
declares the columns it adds, so the stage-1 schema is assembled from the
registered stages rather than listed by hand, and its name, so ``stages`` in
the config can pick it. Adding a filter is then one module under
``data_pipeline/stages/`` (found there without any import list) plus its test.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import pyarrow as pa

REGISTRY: dict[str, type[DocumentStage]] = {}


class DocumentStage(ABC):
    """One per-document step: may rewrite the text, record columns on the row, or ask for a drop."""

    name: ClassVar[str]
    """What ``stages`` lists, and the ``stage`` a dropped row records."""
    config_key: ClassVar[str | None] = None
    """Config block handed to ``__init__``; None for a stage without settings."""
    columns: ClassVar[tuple[pa.Field, ...]] = ()
    """Columns this stage fills; every stage-1 table has them, even when the stage is not configured."""
    defaults: ClassVar[Mapping[str, Any]] = {}
    """Values of ``columns`` on rows the stage did not reach (missing: null)."""
    requires: ClassVar[tuple[str, ...]] = ()
    """Stages that must run earlier because this one reads what they put on the row."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @abstractmethod
    def process(self, text: str, row: dict[str, Any]) -> tuple[str, str | None]:
        """Return the (possibly rewritten) text and a drop reason, or None to keep the document.

        ``row`` is the stage-1 row being built: read what earlier stages put
        there, write this stage's ``columns``. Called once per document, so
        anything that can be computed once belongs in ``__init__``.
        """

    def dedup_text(self, text: str, row: dict[str, Any]) -> str:
        """The form of a kept document's text that dedup hashes and shingles (default: the text itself).

        Lets a stage make equivalent texts compare equal without changing what is
        stored: zh_script hands dedup the Simplified form of Traditional Chinese.
        Called in stage order on kept documents only, each stage given the
        previous one's result.
        """
        return text


def register(cls: type[DocumentStage]) -> type[DocumentStage]:
    """Class decorator: make ``cls`` selectable by its ``name`` in ``stages``."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"stage '{cls.name}' is registered twice: {REGISTRY[cls.name]} and {cls}")
    taken = {f.name: other.name for other in REGISTRY.values() if other is not cls for f in other.columns}
    clash = [f.name for f in cls.columns if f.name in taken]
    if clash:
        raise ValueError(f"stage '{cls.name}': column(s) {clash} already added by stage '{taken[clash[0]]}'")
    REGISTRY[cls.name] = cls
    return cls
