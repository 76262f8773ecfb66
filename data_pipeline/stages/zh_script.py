"""Chinese script as a stage: label hans/hant, let dedup compare the Simplified form, convert on request."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from data_pipeline.chinese_script import HANS, HANT, detect_script, to_simplified, to_traditional
from data_pipeline.stage import DocumentStage, register

CONVERT = {None: None, "none": None, HANS: to_simplified, HANT: to_traditional}


@register
class ZhScript(DocumentStage):
    """Fills ``zh_script`` (``hans``/``hant``, null for other languages); never drops.

    The stored text keeps its script unless ``zh_script.convert`` is ``hans`` or
    ``hant``; the exact hash and MinHash signature of a Traditional document are
    always computed on its Simplified form (``dedup_text``), so a Traditional
    mirror of a Simplified page is found as a duplicate.
    """

    name = "zh_script"
    config_key = "zh_script"
    columns = (pa.field("zh_script", pa.string()),)
    requires = ("language",)

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.langs = set(cfg.get("langs") or ["zh"])
        target = cfg.get("convert")
        if target not in CONVERT:
            from data_pipeline.errors import ConfigError

            raise ConfigError(f"config key 'zh_script.convert': '{target}' is not one of none, hans, hant")
        self.target = None if CONVERT[target] is None else target

    def process(self, text: str, row: dict[str, Any]) -> tuple[str, str | None]:
        if row["lang"] not in self.langs:
            return text, None
        script = detect_script(text)
        if self.target and script != self.target:
            text, script = CONVERT[self.target](text), self.target
        row["zh_script"] = script
        return text, None

    def dedup_text(self, text: str, row: dict[str, Any]) -> str:
        return to_simplified(text) if row.get("zh_script") == HANT else text
