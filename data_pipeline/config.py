"""Check the configuration before any work starts, and hand workers a fast plain copy.

A typo in a threshold found after an hour of cleaning costs the hour; found
here it costs nothing. Every error names the offending key.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data_pipeline.errors import ConfigError  # noqa: F401  (re-exported)
from data_pipeline.stages import import_stage_modules, stage_classes


class Plain(dict):
    """A dict with attribute access: OmegaConf lookups cost ~40 us each, which adds up per document."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


def plain(cfg: Any) -> Any:
    """Recursive Plain copy of a DictConfig or dict (keys as given, ints kept)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])  # hydra's own settings
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, dict):
        return Plain({k: plain(v) for k, v in cfg.items()})
    if isinstance(cfg, list):
        return [plain(v) for v in cfg]
    return cfg


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first bad key."""
    for key in ("input", "output"):
        _require(OmegaConf.select(cfg, key, default=None) not in (None, "", "???")
                 and not OmegaConf.is_missing(cfg, key), key, "is required (e.g. input='data/*.jsonl.gz' output=/tmp/out)")

    import_stage_modules(cfg)
    stage_classes(list(cfg.stages))  # unknown, repeated or out-of-order names
    from data_pipeline.html_text import EXTRACTORS

    extractor = OmegaConf.select(cfg, "read.warc.extractor", default="trafilatura")
    _require(extractor in EXTRACTORS, "read.warc.extractor", f"must be one of {sorted(EXTRACTORS)}")
    for name, rules in (OmegaConf.select(cfg, "read.sources", default=None) or {}).items():
        _require(hasattr(rules, "get") and bool(rules.get("files")), f"read.sources.{name}.files",
                 "is required: a glob naming the files of this source")
    if "url_filter" in cfg.stages:
        for key in ("blocklist", "allowlist"):
            path = OmegaConf.select(cfg, f"url_filter.{key}", default=None)
            _require(not path or os.path.exists(os.path.expanduser(str(path))), f"url_filter.{key}",
                     f"'{path}' does not exist")
    if "zh_script" in cfg.stages:
        convert = OmegaConf.select(cfg, "zh_script.convert", default=None)
        _require(convert in (None, "none", "hans", "hant"), "zh_script.convert", "must be none, hans or hant")
    if "decontaminate" in cfg.stages:
        _validate_decontaminate(cfg)
    for name in ("quality_model", "perplexity"):
        if name in cfg.stages:
            _validate_model_stage(cfg, name)
    _require(0.0 <= float(cfg.normalize.max_bad_char_fraction) <= 1.0, "normalize.max_bad_char_fraction", "must be in [0, 1]")
    _require(len(cfg.language.allowed) > 0, "language.allowed", "must list at least one language")
    _require(int(cfg.language.max_bytes) > 0, "language.max_bytes", "must be positive")
    _require(int(cfg.language.retry_bytes) >= 0, "language.retry_bytes", "must be >= 0 (0: no retry)")
    _require("default" in cfg.quality, "quality.default", "is required (thresholds for languages without a block)")
    for lang, block in cfg.quality.items():
        _require(block.get("units", "words") in ("words", "chars"), f"quality.{lang}.units", "must be 'words' or 'chars'")
        for name in ("max_top_ngram_char_fraction", "max_dup_ngram_char_fraction"):
            for n in block.get(name, {}):
                _require(str(n).isdigit() and int(n) > 0, f"quality.{lang}.{name}", f"n-gram size '{n}' is not a positive integer")
    d = cfg.dedup
    _require(int(d.bands) > 0 and int(d.rows) > 0, "dedup.bands", "bands and rows must be positive")
    _require(int(d.bands) * int(d.rows) <= int(d.num_perm), "dedup.num_perm",
             f"must be >= bands * rows ({int(d.bands)} * {int(d.rows)})")
    thresholds = d.threshold.items() if hasattr(d.threshold, "items") else [(None, d.threshold)]
    _require(not hasattr(d.threshold, "items") or "default" in d.threshold, "dedup.threshold.default",
             "is required when dedup.threshold is per language")
    for lang, value in thresholds:
        key = "dedup.threshold" if lang is None else f"dedup.threshold.{lang}"
        _require(isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0, key, "must be a number in [0, 1]")
    _require(int(d.shuffle_partitions) > 0, "dedup.shuffle_partitions", "must be positive")
    _require(int(d.word_ngram) > 0 and int(d.char_ngram) > 0, "dedup.word_ngram", "n-gram sizes must be positive")
    _require(0.0 <= float(cfg.heldout.fraction) < 1.0, "heldout.fraction", "must be in [0, 1)")
    for source, weight in cfg.mixture.weights.items():
        _require(float(weight) >= 0, f"mixture.weights.{source}", "must be >= 0")
    _require(int(cfg.ray.num_cpus) > 0, "ray.num_cpus", "must be positive")
    _require(int(cfg.ray.batch_size) > 0, "ray.batch_size", "must be positive")
    _require(int(cfg.resume.files_per_commit) > 0, "resume.files_per_commit", "must be positive")


def _validate_model_stage(cfg: DictConfig, name: str) -> None:
    """Model paths and thresholds of quality_model / perplexity, checked without loading the models."""
    from data_pipeline.stage import REGISTRY

    block = OmegaConf.select(cfg, name, default=None)
    _require(block is not None, name, f"is required by stage '{name}'")
    REGISTRY[name].check(plain(block))  # type: ignore[attr-defined]


def _validate_decontaminate(cfg: DictConfig) -> None:
    """Settings, paths, and the benchmark files themselves (the index is built here once, so a malformed
    line or a benchmark without usable text fails before any work; workers build their own copy)."""
    block = OmegaConf.select(cfg, "decontaminate", default=None)
    _require(block is not None, "decontaminate", "is required by stage 'decontaminate'")
    _require(block.get("action", "drop") in ("drop", "cut"), "decontaminate.action", "must be drop or cut")
    benchmarks = block.get("benchmarks") or {}
    _require(hasattr(benchmarks, "items"), "decontaminate.benchmarks", "must be a mapping {name: path}")
    for name, spec in benchmarks.items():
        path = spec.get("path") if hasattr(spec, "items") else spec
        _require(bool(path) and os.path.exists(os.path.expanduser(str(path))), f"decontaminate.benchmarks.{name}",
                 f"'{path}' does not exist")
    for key in ("word_ngram", "word_min", "char_ngram", "char_min", "max_cuts"):
        value = block.get(key, 1)
        _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, f"decontaminate.{key}",
                 "must be a positive integer")
    for key in ("cut_margin", "min_remaining_chars"):
        value = block.get(key, 0)
        _require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, f"decontaminate.{key}",
                 "must be an integer >= 0")
    if benchmarks:
        from data_pipeline.stages.decontaminate import Decontaminate

        Decontaminate(plain(block))
