"""What a growth step changes: the old and new shapes and where new layers go.

A :class:`GrowthSpec` is the single description shared by the offline tensor
growth (:mod:`pretrain.growth.tensors`) and the masks of the grown model
(:mod:`pretrain.growth.masked`), so both agree on which entries are "new".
It is built from two ``model`` configs plus the ``growth`` options of a stage
and is stored in the grown stage's config (``growth.*`` keys), so a resumed
run rebuilds the same masks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

DEPTH_POSITIONS = ("top", "interleave")
DEPTH_INITS = ("copy", "random")


class GrowthConfigError(ValueError):
    """A growth schedule or stage key is invalid; the message names the key."""


@dataclass(frozen=True)
class Shape:
    """The parts of a model config growth may change (or must keep)."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    ffn_hidden_size: int

    @staticmethod
    def of(model_cfg: DictConfig | dict) -> "Shape":
        get = (lambda k, d=None: OmegaConf.select(model_cfg, k, default=d)) if isinstance(model_cfg, DictConfig) \
            else (lambda k, d=None: model_cfg.get(k, d))
        heads = int(get("num_attention_heads"))
        hidden = int(get("hidden_size"))
        return Shape(num_layers=int(get("num_layers")), hidden_size=hidden, num_attention_heads=heads,
                     num_query_groups=int(get("num_query_groups") or heads),
                     kv_channels=int(get("kv_channels") or hidden // heads),
                     ffn_hidden_size=int(get("ffn_hidden_size")))

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups


@dataclass(frozen=True)
class GrowthSpec:
    """Old shape -> new shape, plus the placement of new layers.

    ``layer_sources[i]`` says what new layer ``i`` is: ``("old", j)`` for old
    layer ``j`` (kept, widened), ``("copy", j)`` for a new layer initialised
    from the (widened) old layer ``j``, ``("random", -1)`` for a fresh one.
    """

    old: Shape
    new: Shape
    layer_sources: tuple[tuple[str, int], ...]
    logit_scale: float = 1.0  # μP readout ratio folded into the old output-layer columns

    @property
    def new_layers(self) -> tuple[int, ...]:
        return tuple(i for i, (kind, _) in enumerate(self.layer_sources) if kind != "old")

    def to_dict(self) -> dict[str, Any]:
        return {"old": asdict(self.old), "new": asdict(self.new),
                "layer_sources": [list(s) for s in self.layer_sources], "logit_scale": self.logit_scale}

    @staticmethod
    def from_dict(data: dict | DictConfig) -> "GrowthSpec":
        if isinstance(data, DictConfig):
            data = OmegaConf.to_container(data, resolve=True)
        return GrowthSpec(old=Shape(**data["old"]), new=Shape(**data["new"]),
                          layer_sources=tuple((str(k), int(j)) for k, j in data["layer_sources"]),
                          logit_scale=float(data.get("logit_scale", 1.0)))


def layer_sources(old_layers: int, new_layers: int, position: str, init: str) -> tuple[tuple[str, int], ...]:
    """Placement of ``new_layers - old_layers`` new blocks.

    * ``top``: stacked above the old ones; ``copy`` takes the old top layer.
    * ``interleave``: spread evenly, each new block right after the old layer
      it copies (for doubling: old0, new(0), old1, new(1), ... as in stacking).
    """
    if position not in DEPTH_POSITIONS:
        raise GrowthConfigError(f"growth.depth_position={position!r}: use one of {DEPTH_POSITIONS}")
    if init not in DEPTH_INITS:
        raise GrowthConfigError(f"growth.depth_init={init!r}: use one of {DEPTH_INITS}")
    added = new_layers - old_layers
    if added < 0:
        raise GrowthConfigError(f"model.num_layers shrinks ({old_layers} -> {new_layers}); growth only adds layers")
    sources: list[tuple[str, int]] = []

    def new_block(neighbour: int) -> tuple[str, int]:
        return ("copy", neighbour) if init == "copy" else ("random", -1)

    if position == "top":
        sources = [("old", j) for j in range(old_layers)]
        sources += [new_block(old_layers - 1) for _ in range(added)]
        return tuple(sources)
    # interleave: after old layer j insert as many new blocks as fall into its share
    inserts_after = [0] * old_layers
    for k in range(added):
        after = ((k + 1) * old_layers) // added - 1 if added <= old_layers else (k * old_layers) // added
        inserts_after[after] += 1
    for j in range(old_layers):
        sources.append(("old", j))
        sources += [new_block(j) for _ in range(inserts_after[j])]
    return tuple(sources)


def _width_mult(model_cfg: DictConfig) -> float:
    from pretrain.model.teleflm import width_mult

    return float(width_mult(model_cfg))


def make_spec(old_model: DictConfig, new_model: DictConfig, depth_position: str = "top",
              depth_init: str = "copy") -> GrowthSpec:
    """Validate that ``new_model`` is a growth of ``old_model`` and describe it."""
    old, new = Shape.of(old_model), Shape.of(new_model)
    for key in ("hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size", "num_layers"):
        if getattr(new, key) < getattr(old, key):
            raise GrowthConfigError(f"model.{key} shrinks ({getattr(old, key)} -> {getattr(new, key)}); "
                                    "growth only adds")
    if new.kv_channels != old.kv_channels:
        raise GrowthConfigError(f"model.kv_channels changes ({old.kv_channels} -> {new.kv_channels}): "
                                "width grows by adding heads of a fixed size (the attention scale must not change)")
    if new.heads_per_group != old.heads_per_group:
        raise GrowthConfigError("model.num_attention_heads / model.num_query_groups must stay the same ratio "
                                f"({old.heads_per_group} -> {new.heads_per_group}): heads grow by whole query groups")
    for key in ("vocab_size", "padded_vocab_size", "seq_length", "rotary_base", "norm_epsilon", "input_mult"):
        a, b = OmegaConf.select(old_model, key), OmegaConf.select(new_model, key)
        if a is not None and b is not None and a != b:
            raise GrowthConfigError(f"model.{key} changes ({a} -> {b}); growth keeps it")
    # μP: logits × output_mult / width_mult. The new multiplier is smaller by w_old/w_new; the
    # old readout columns are scaled up by the inverse so logits are unchanged at mask 0.
    old_mult = float(OmegaConf.select(old_model, "output_mult", default=1.0)) / _width_mult(old_model)
    new_mult = float(OmegaConf.select(new_model, "output_mult", default=1.0)) / _width_mult(new_model)
    return GrowthSpec(old=old, new=new,
                      layer_sources=layer_sources(old.num_layers, new.num_layers, depth_position, depth_init),
                      logit_scale=old_mult / new_mult)
