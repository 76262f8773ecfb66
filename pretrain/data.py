"""Training and held-out samples from the tokenizer stage's indexed datasets.

The tokenizer stage writes ``<data.path>/manifest.json`` next to megatron
``.bin/.idx`` pairs.  Training samples: one
megatron ``GPTDataset`` per source, mixed by :mod:`pretrain.mixture` through
per-source cursors with weights from the manifest (``data.weights`` and
``train.stages`` may override them); their order is a pure function of
``train.seed`` and the realised weight schedule (kept in checkpoints).  Which
samples a step reads is a pure function of ``consumed_samples`` and that
schedule, so a resumed run reads exactly what an uninterrupted one would have
read, and a weight change neither repeats nor skips a source's samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

MANIFEST = "manifest.json"


def read_manifest(data_path: str | Path) -> dict[str, Any]:
    path = Path(data_path) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"data.path: no {MANIFEST} in '{data_path}' "
                                "(point data.path at the tokenizer output's 'indexed' directory)")
    return json.loads(path.read_text())


class ManifestTokenizer:
    """The little megatron's GPTDataset needs (eod, pad, vocab size), from the manifest.

    Used when ``tokenizer.megatron_adapter`` (the SentencePiece adapter) is not
    importable or the SentencePiece model is missing: training never decodes text.
    """

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.vocab_size = int(manifest["vocab_size"])
        self.eod = int(manifest["eod_id"])
        self.eos = self.eod
        self.pad = int(manifest.get("pad_id", -1))
        self.bos = int(manifest.get("bos_id", -1))
        self.unique_identifiers = {"class": type(self).__name__, "vocab_size": self.vocab_size,
                                   "eod": self.eod, "pad": self.pad}


def load_tokenizer(manifest: dict[str, Any]):
    model_path = manifest.get("tokenizer_model")
    if model_path and Path(model_path).is_file():
        try:
            from tokenizer.megatron_adapter import SentencePieceMegatronTokenizer
        except ImportError:
            return ManifestTokenizer(manifest)
        return SentencePieceMegatronTokenizer(model_path)
    return ManifestTokenizer(manifest)


def heldout_blend(manifest: dict[str, Any]) -> tuple[list[str], list[float]] | None:
    """Held-out sources weighted by their token counts (a fixed evaluation mixture)."""
    by_source = (manifest.get("heldout") or {}).get("by_source") or {}
    entries = [(e["prefix"], float(e.get("tokens", 1))) for _, e in sorted(by_source.items())
               if float(e.get("tokens", 1)) > 0]
    if not entries:
        return None
    return [p for p, _ in entries], [w for _, w in entries]


@dataclass
class Datasets:
    train: Any
    valid: Any | None
    tokenizer: Any


def train_sources(manifest: dict[str, Any]) -> dict[str, str]:
    """{source: indexed prefix} of every training source (weight 0 ones too: a stage may use them)."""
    return {source: entry["prefix"] for source, entry in sorted(manifest["train"].items())}


def base_weights(manifest: dict[str, Any], weight_overrides: dict | None) -> dict[str, float]:
    """{source: weight} before any stage: ``data.weights`` wins over the manifest's weights."""
    overrides = dict(weight_overrides or {})
    unknown = set(overrides) - set(manifest["train"])
    if unknown:
        raise ValueError(f"data.weights names sources not in the manifest: {sorted(unknown)}; "
                         f"known: {sorted(manifest['train'])}")
    return {source: float(overrides.get(source, entry.get("weight", entry.get("tokens", 1))))
            for source, entry in sorted(manifest["train"].items())}


def _gpt_config(cfg: DictConfig, blend_per_split: list, cache_dir: Path, tokenizer):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=cfg.train.seed,
        sequence_length=cfg.model.seq_length,
        blend_per_split=blend_per_split,
        path_to_cache=str(cache_dir),
        tokenizer=tokenizer,
        reset_position_ids=False,     # RoPE is relative: a document's scores do not depend on its offset
        # model.document_mask: megatron's per-document mask (no attention across an EOD);
        # otherwise plain causal attention, which SDPA builds itself
        reset_attention_mask=bool(cfg.model.get("document_mask", False)),
        eod_mask_loss=False,
        create_attention_mask=bool(cfg.model.get("document_mask", False)),
    )


def build_datasets(cfg: DictConfig, manifest: dict[str, Any], cache_dir: Path) -> Datasets:
    """Build the training stream (:class:`pretrain.mixture.MixtureStream`: one one-epoch
    GPTDataset per source, read through per-source cursors) and the held-out blend; call on
    every rank (megatron coordinates caching)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    from pretrain.mixture import MixtureStream, SourceStream

    tokenizer = load_tokenizer(manifest)
    train = cfg.train
    weights = OmegaConf.to_container(cfg.data.weights) if cfg.data.weights else None
    sources = {}
    for i, (source, prefix) in enumerate(train_sources(manifest).items()):
        # sizes None: exactly one epoch of this source, whatever the run's length or weights
        one_epoch, _, _ = BlendedMegatronDatasetBuilder(
            GPTDataset, [None, 0, 0], lambda: True,
            _gpt_config(cfg, [([prefix], None), None, None], cache_dir, tokenizer)).build()
        sources[source] = SourceStream(one_epoch, train.seed, i)
    stream = MixtureStream(sources, base_weights(manifest, weights), cfg.model.seq_length)
    valid_ds = None
    valid = heldout_blend(manifest) if train.eval_interval and train.eval_iters else None
    if valid:
        # every evaluation reads the same eval_iters x train.global_batch_size samples
        # (MegatronStep.evaluate); asking megatron for more would build several epochs of the
        # held-out documents and shuffle repeats into those samples
        _, valid_ds, _ = BlendedMegatronDatasetBuilder(
            GPTDataset, [0, train.eval_iters * train.global_batch_size, 0], lambda: True,
            _gpt_config(cfg, [None, valid, None], cache_dir, tokenizer)).build()
    return Datasets(train=stream, valid=valid_ds, tokenizer=tokenizer)


def microbatches(dataset, consumed_samples: int, micro_batch_size: int, num_microbatches: int,
                 dp_rank: int, dp_size: int) -> Iterator[dict[str, "torch.Tensor"]]:
    """The microbatches one data-parallel rank trains on in one optimizer step.

    Global step samples are ``consumed .. consumed + global_batch``; microbatch
    k of DP rank r is ``consumed + (k·dp + r)·mbs + [0, mbs)`` (megatron's
    pretraining sampler order), so the set of samples in a step does not
    depend on the DP size.
    """
    import torch

    for k in range(num_microbatches):
        start = consumed_samples + (k * dp_size + dp_rank) * micro_batch_size
        samples = [dataset[i] for i in range(start, start + micro_batch_size)]
        keys = ["tokens", "labels", "loss_mask", "position_ids"]
        if samples[0].get("attention_mask") is not None:  # model.document_mask: [1, s, s] each
            keys.append("attention_mask")
        yield {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in keys}
