"""Single-process checks of the growth pieces: placement, shape rules, tensor layouts, schedules."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from pretrain.growth.masked import ramp_value
from pretrain.growth.schedule import parse_stages
from pretrain.growth.spec import GrowthConfigError, GrowthSpec, Shape, layer_sources, make_spec
from pretrain.growth.tensors import grow_state
from tests.pretrain.growth import SPECS, skip_unless_spec_builds


def model_cfg(**changes):
    base = dict(num_layers=2, hidden_size=8, num_attention_heads=2, num_query_groups=2, kv_channels=4,
                ffn_hidden_size=6, vocab_size=16, init_method_std=0.02, embedding_init_std=0.02,
                output_mult=1.0, mup=dict(enabled=False, base_hidden_size=8))
    return OmegaConf.create({**base, **changes})


def test_layer_placement():
    assert layer_sources(2, 4, "top", "copy") == (("old", 0), ("old", 1), ("copy", 1), ("copy", 1))
    assert layer_sources(2, 4, "interleave", "copy") == (("old", 0), ("copy", 0), ("old", 1), ("copy", 1))
    assert layer_sources(4, 5, "interleave", "random")[-1] == ("random", -1)
    sources = layer_sources(80, 140, "interleave", "copy")
    assert len(sources) == 140 and [j for k, j in sources if k == "old"] == list(range(80))


def test_shape_rules_name_the_key():
    with pytest.raises(GrowthConfigError, match="kv_channels"):
        make_spec(model_cfg(), model_cfg(kv_channels=8))
    with pytest.raises(GrowthConfigError, match="hidden_size shrinks"):
        make_spec(model_cfg(), model_cfg(hidden_size=4))
    with pytest.raises(GrowthConfigError, match="vocab_size"):
        make_spec(model_cfg(), model_cfg(vocab_size=32))
    with pytest.raises(GrowthConfigError, match="depth_position"):
        make_spec(model_cfg(), model_cfg(num_layers=3), depth_position="bottom")


def test_mup_logit_ratio():
    old = model_cfg(output_mult=0.5, mup=dict(enabled=True, base_hidden_size=4))
    new = model_cfg(hidden_size=16, output_mult=0.5, mup=dict(enabled=True, base_hidden_size=4))
    assert make_spec(old, new).logit_scale == pytest.approx(2.0)  # (0.5/2) / (0.5/4)


def test_ramp_is_a_function_of_the_iteration():
    assert [ramp_value(i, 10, 4) for i in (9, 10, 11, 13, 14, 50)] == [0.0, 0.0, 0.25, 0.75, 1.0, 1.0]
    assert ramp_value(10, 10, 0) == 1.0


def test_qkv_and_swiglu_layouts_keep_old_rows():
    """Old q/k/v rows stay with their query group; old gate/up units stay in their halves."""
    old, new = model_cfg(), model_cfg(hidden_size=12, num_attention_heads=3, num_query_groups=3,
                                      ffn_hidden_size=9, num_layers=3)
    spec = make_spec(old, new, "top", "random")
    qkv = torch.arange(2 * 2 * 3 * 4 * 8, dtype=torch.float32).reshape(2, 24, 8)  # layers, g·(q,k,v)·d, hidden
    fc1 = torch.arange(2 * 12 * 8, dtype=torch.float32).reshape(2, 12, 8)           # layers, [gate; up], hidden
    moment = torch.ones(2, 12, 8)
    grown = grow_state({"decoder.layers.self_attention.linear_qkv.weight": qkv,
                        "decoder.layers.mlp.linear_fc1.weight": fc1,
                        "optimizer.state.exp_avg.decoder.layers.mlp.linear_fc1.weight": moment}, spec, new, seed=0)
    q = grown["decoder.layers.self_attention.linear_qkv.weight"]
    assert q.shape == (3, 36, 12)
    assert torch.equal(q.view(3, 3, 3, 4, 12)[:2, :2, :, :, :8], qkv.view(2, 2, 3, 4, 8))
    f = grown["decoder.layers.mlp.linear_fc1.weight"]
    assert f.shape == (3, 18, 12)
    assert torch.equal(f.view(3, 2, 9, 12)[:2, :, :6, :8], fc1.view(2, 2, 6, 8))
    m = grown["optimizer.state.exp_avg.decoder.layers.mlp.linear_fc1.weight"].view(3, 2, 9, 12)
    assert m[:2, :, :6, :8].eq(1).all() and m.sum() == moment.sum()  # zeros everywhere new


def test_schedule_errors_name_the_key():
    good = dict(name="a", model="tiny", parallel="single", lr=1e-3, min_lr=1e-4, iters=2)
    with pytest.raises(GrowthConfigError, match=r"stages\[1\].mask_ramp_iters"):
        parse_stages(OmegaConf.create({"stages": [good, {**good, "name": "b"}]}))
    with pytest.raises(GrowthConfigError, match=r"stages\[0\].rewarm_iters"):
        parse_stages(OmegaConf.create({"stages": [{**good, "rewarm_iters": 3}]}))
    with pytest.raises(GrowthConfigError, match="exactly one of iters / tokens"):
        parse_stages(OmegaConf.create({"stages": [{**good, "tokens": 100}]}))
    with pytest.raises(GrowthConfigError, match="unknown keys"):
        parse_stages(OmegaConf.create({"stages": [{**good, "learning_rate": 1}]}))


@pytest.mark.parametrize("schedule", ["tiny_cpu", "flm101b", "teleflm_1t"])
def test_presets_compose_into_consistent_stages(schedule, tmp_path):
    from pretrain.growth.__main__ import runner_config, stage_configs

    runner = runner_config([f"schedule={schedule}", f"run_dir={tmp_path}"])
    stages = stage_configs(runner)
    ends = [int(cfg.train.train_iters) for _, cfg in stages]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    assert len({int(cfg.data.train_samples) for _, cfg in stages}) == 1  # one data stream
    assert int(stages[0][1].data.train_samples) == sum(
        (end - start) * int(cfg.train.global_batch_size)
        for (_, cfg), start, end in zip(stages, [0] + ends[:-1], ends))
    for (_, before), (stage, after) in zip(stages, stages[1:]):
        spec = make_spec(before.model, after.model, stage.depth_position, stage.depth_init)
        assert spec.new != spec.old
        assert int(after.train.lr_warmup_iters) == stage.warmup_iters
        assert GrowthSpec.from_dict(spec.to_dict()) == spec


def test_flm101b_stage_sizes_match_the_paper(tmp_path):
    """The assumed shapes count 16B / 51B / 101B parameters (within 7%)."""
    from pretrain.tools.flops import parameter_count
    from pretrain.growth.__main__ import runner_config, stage_configs

    stages = stage_configs(runner_config(["schedule=flm101b", f"run_dir={tmp_path}"]))
    totals = [parameter_count(OmegaConf.to_container(cfg.model), 100352)["total"] / 1e9 for _, cfg in stages]
    for total, target in zip(totals, (16, 51, 101)):
        assert abs(total - target) / target < 0.07, totals


@pytest.mark.parametrize("spec", SPECS)
def test_masked_layer_spec_as_data(spec):
    """The masked spec is the base spec with the norms un-fused and masked, the layer masked, and
    the plain spec's checkpoint keys; projections and attention stay the base spec's (the masks on
    them are hooks).  Nothing is instantiated: the spec is data."""
    from megatron.core.tensor_parallel import ColumnParallelLinear

    from pretrain.growth.masked import MaskedRMSNorm, MaskedTransformerLayer, masked_layer_spec
    from pretrain.model.teleflm import layer_spec

    skip_unless_spec_builds(spec)
    te = spec == "transformer_engine"
    base, masked = layer_spec(te).submodules, masked_layer_spec(te)
    layer = masked.submodules
    attention, mlp = layer.self_attention.submodules, layer.mlp.submodules
    assert masked.module is MaskedTransformerLayer
    assert layer.input_layernorm is MaskedRMSNorm and layer.pre_mlp_layernorm is MaskedRMSNorm
    if te:
        from megatron.core.extensions.transformer_engine import TEColumnParallelLinear

        column = TEColumnParallelLinear   # not TELayerNormColumnParallelLinear: the norm is separate
    else:
        column = ColumnParallelLinear
    assert attention.linear_qkv is column and mlp.linear_fc1 is column
    assert attention.linear_proj is base.self_attention.submodules.linear_proj
    assert mlp.linear_fc2 is base.mlp.submodules.linear_fc2
    assert attention.core_attention is base.self_attention.submodules.core_attention
    assert layer.sharded_state_dict_keys_map == {"input_layernorm.": "self_attention.linear_qkv.layer_norm_",
                                                 "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}
    assert base.input_layernorm is not MaskedRMSNorm   # the base spec is left alone


def test_fresh_entries_do_not_depend_on_the_region():
    """New entries are a function of the global element index: any sub-region equals that slice of the whole."""
    from pretrain.growth.fresh import fresh_normal, philox_key

    key = philox_key(7, "decoder.layers.mlp.linear_fc1.weight", "width")
    whole = fresh_normal(key, (3, 5, 9), (slice(None),) * 3, 0.02, True, torch.float32)
    assert whole.abs().max() <= 0.04 and 0.01 < whole.std() < 0.02  # ±2σ truncated normal, σ = 0.02
    for a, b, c in [(0, 0, 0), (1, 2, 3), (2, 4, 8), (0, 1, 0)]:
        region = (slice(a, 3), slice(b, min(b + 2, 5)), slice(c, 9))
        assert torch.equal(fresh_normal(key, (3, 5, 9), region, 0.02, True, torch.float32), whole[region])


def test_slices_of_every_layout_assemble_the_whole_tensor_growth():
    """Streaming slices (TP2 × PP2 on 4 ranks, and dealt over 3) grown from a whole-tensor reader
    reassemble exactly what grow_state gives: the per-region code path is layout-free."""
    from pretrain.growth.streaming import rank_slices
    from pretrain.growth.tensors import grown_region, rule_for, whole_reader

    old, new = model_cfg(truncated_normal_init=True), model_cfg(
        hidden_size=12, num_attention_heads=3, num_query_groups=3, ffn_hidden_size=9, num_layers=3)
    spec = make_spec(old, new, "interleave", "random")
    generator = torch.Generator().manual_seed(0)
    shapes = {"embedding.word_embeddings.weight": (16, 8), "decoder.final_layernorm.weight": (8,),
              "decoder.layers.self_attention.linear_qkv.weight": (2, 24, 8),
              "decoder.layers.mlp.linear_fc1.weight": (2, 12, 8), "decoder.layers.mlp.linear_fc2.weight": (2, 8, 6),
              "optimizer.state.exp_avg.decoder.layers.self_attention.linear_proj.weight": (2, 8, 8),
              "optimizer.state.param.output_layer.weight": (16, 8)}
    tensors = {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    expected = grow_state(tensors, spec, new, seed=3)
    rules = {key: rule_for(key, tuple(t.shape), spec) for key, t in tensors.items()}
    for tp, pp, world in [(2, 2, 4), (2, 2, 3)]:
        assembled = {key: torch.full(rule.new_shape, float("nan")) for key, rule in rules.items()}
        for slices in rank_slices(list(rules.values()), tp, pp, world):
            for piece in slices:
                rule = piece.rule
                region = grown_region(rule, piece.layer, slice(*piece.rows), slice(*piece.cols),
                                      whole_reader(rule, tensors[rule.key]), spec, new, 3, torch.float32)
                where = tuple(slice(o, o + s) for o, s in zip(piece.global_offset(), piece.local_shape()))
                assembled[rule.key][where] = region.reshape(piece.local_shape())
        for key in rules:
            assert torch.equal(assembled[key], expected[key]), (key, tp, pp, world)
