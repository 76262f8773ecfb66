"""``python -m launch.import_hf hf_dir=HF output=RUN/checkpoints parallel=tp2``: HF Llama -> our checkpoint.

For continued pretraining of a Hugging Face Llama-family model with this
trainer. Each of the TP x PP ranks builds its own slice of the Tele-FLM
``GPTModel`` with the trainer's ``build_model``, fills it from the safetensors
files (reading, per layer, only the HF tensors that layer needs), and all
ranks save one megatron dist checkpoint together: ``RUN/checkpoints/iter_0000000``
with ``run_config.yaml`` and ``latest``, loadable at any other TP/PP.

The HF model's function is preserved: the multipliers of the chosen model
config (``model=<preset>`` and ``model.*`` overrides) are divided out of embed_tokens
and lm_head, so the trainer's forward pass multiplies them back in. With more
than one rank and no WORLD_SIZE, the command re-launches itself under torchrun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from launch.weight_mapping import (HF_EMBEDDING, HF_FINAL_NORM, HF_LM_HEAD, LOCAL_MODULE_NAMES, Shapes,
                                   embedding_from_hf, hf_layer_names, layer_from_hf, output_layer_from_hf)

ITERATION = 0
# The TransformerEngine spec fuses the norms into the following linear layer.
TE_MODULE_NAMES = {**LOCAL_MODULE_NAMES, "attn_norm": "self_attention.linear_qkv.layer_norm_weight",
                   "mlp_norm": "mlp.linear_fc1.layer_norm_weight"}


class HFWeights:
    """Tensors of an HF safetensors directory, opened lazily one name at a time."""

    def __init__(self, hf_dir: Path) -> None:
        index = hf_dir / "model.safetensors.index.json"
        if index.exists():
            self.files = {n: hf_dir / f for n, f in json.loads(index.read_text())["weight_map"].items()}
        elif (hf_dir / "model.safetensors").exists():
            from safetensors import safe_open

            with safe_open(str(hf_dir / "model.safetensors"), "pt") as f:
                self.files = {n: hf_dir / "model.safetensors" for n in f.keys()}
        else:
            raise FileNotFoundError(f"hf_dir: {hf_dir} has no model.safetensors(.index.json)")

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self.files:
            raise KeyError(f"{name} is not in the HF checkpoint")
        with safe_open(str(self.files[name]), "pt") as f:
            return f.get_tensor(name)

    def has(self, name: str) -> bool:
        return name in self.files


def check_llama_config(hf_cfg: dict) -> None:
    """Refuse what the Tele-FLM architecture cannot represent, naming the HF config key."""
    problems = []
    if hf_cfg.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf_cfg['hidden_act']} (SwiGLU needs silu)")
    for key in ("attention_bias", "mlp_bias"):
        if hf_cfg.get(key):
            problems.append(f"{key}=true (the model has no biases)")
    rope = hf_cfg.get("rope_parameters") or hf_cfg.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        problems.append(f"rope type {rope.get('rope_type', rope.get('type'))} (only plain RoPE)")
    if problems:
        raise ValueError("hf_dir: config.json is not a plain Llama: " + "; ".join(problems))


def run_config_for(cfg: DictConfig, hf_cfg: dict) -> DictConfig:
    """The trainer's full config for the imported model: preset + HF architecture + layout."""
    from launch.stages import STAGES, compose_stage_config
    from pretrain.model.teleflm import resolved_vocab_size

    preset = OmegaConf.select(cfg, "model")
    run_cfg = compose_stage_config(STAGES["pretrain"], [])
    OmegaConf.set_struct(run_cfg, False)
    run_cfg.parallel = OmegaConf.merge(run_cfg.parallel, cfg.parallel)   # the layout, with its overrides
    if preset is not None:
        run_cfg.model = OmegaConf.merge(run_cfg.model, preset)          # model=<preset> and model.* overrides
    m = run_cfg.model
    if preset is None:  # the HF function exactly: no multipliers
        m.input_mult, m.output_mult, m.mup.enabled = 1.0, 1.0, False
    rope = hf_cfg.get("rope_parameters") or {}
    m.update(name=f"hf:{Path(str(cfg.hf_dir)).name}", num_layers=hf_cfg["num_hidden_layers"],
             hidden_size=hf_cfg["hidden_size"], num_attention_heads=hf_cfg["num_attention_heads"],
             num_query_groups=hf_cfg.get("num_key_value_heads") or hf_cfg["num_attention_heads"],
             kv_channels=hf_cfg.get("head_dim") or hf_cfg["hidden_size"] // hf_cfg["num_attention_heads"],
             ffn_hidden_size=hf_cfg["intermediate_size"], vocab_size=hf_cfg["vocab_size"],
             norm_epsilon=hf_cfg.get("rms_norm_eps", 1e-5), seq_length=hf_cfg["max_position_embeddings"],
             init_method_std=hf_cfg.get("initializer_range", m.init_method_std),
             rotary_base=int(rope.get("rope_theta", hf_cfg.get("rope_theta", 10000))))
    tp = int(run_cfg.parallel.tensor_model_parallel_size)
    run_cfg.model.padded_vocab_size = resolved_vocab_size(run_cfg.model, tp)  # fixed: any later TP loads it
    run_cfg.parallel.data_parallel_size = 1
    return run_cfg


def shapes_for(run_cfg: DictConfig) -> Shapes:
    from pretrain.model.teleflm import logit_multiplier

    m = run_cfg.model
    return Shapes(num_layers=int(m.num_layers), hidden_size=int(m.hidden_size),
                  num_attention_heads=int(m.num_attention_heads), num_query_groups=int(m.num_query_groups),
                  head_dim=int(m.kv_channels), ffn_hidden_size=int(m.ffn_hidden_size),
                  vocab_size=int(m.vocab_size), input_mult=float(m.input_mult),
                  logit_mult=float(logit_multiplier(m)))


def tp_shard(full: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    """This rank's slice, by megatron's own rule (pretrain.model.sharded_init.shard_ranges)."""
    from pretrain.model.sharded_init import shard_ranges
    from pretrain.model.teleflm import tp_layout

    dim, stride, tp_size, tp_rank = tp_layout(param)
    if tp_size == 1:
        return full
    return torch.cat([full.narrow(dim, start, end - start)
                      for start, end in shard_ranges(full.shape[dim], tp_size, tp_rank, stride)], dim=dim)


@torch.no_grad()
def fill_from_hf(model, weights: HFWeights, s: Shapes, padded_vocab: int) -> None:
    import re

    from pretrain.model.teleflm import global_parameter_names

    global_names = global_parameter_names(model)
    params = dict(model.named_parameters())
    by_layer: dict[int, list[tuple[str, str]]] = {}
    for local, global_name in global_names.items():
        match = re.match(r"decoder\.layers\.(\d+)\.(.+)$", global_name)
        if match:
            by_layer.setdefault(int(match.group(1)), []).append((local, match.group(2)))
            continue
        if global_name == "embedding.word_embeddings.weight":
            full = embedding_from_hf(weights.get(HF_EMBEDDING), s, padded_vocab)
        elif global_name == "output_layer.weight":
            head = weights.get(HF_LM_HEAD) if weights.has(HF_LM_HEAD) else weights.get(HF_EMBEDDING)  # tied
            full = output_layer_from_hf(head, s, padded_vocab)
        elif global_name == "decoder.final_layernorm.weight":
            full = weights.get(HF_FINAL_NORM)
        else:
            raise KeyError(f"no HF source for parameter {global_name}")
        params[local].copy_(tp_shard(full, params[local]).to(params[local].dtype))
    for layer, members in sorted(by_layer.items()):  # one layer of HF tensors in memory at a time
        hf = {n: weights.get(n) for names in hf_layer_names(layer).values() for n in names}
        parts = layer_from_hf(hf, layer, s)
        suffix_to_part = {v: k for k, v in LOCAL_MODULE_NAMES.items()} | {v: k for k, v in TE_MODULE_NAMES.items()}
        for local, suffix in members:
            if suffix not in suffix_to_part:
                raise KeyError(f"no HF source for parameter decoder.layers.{layer}.{suffix}")
            params[local].copy_(tp_shard(parts[suffix_to_part[suffix]], params[local]).to(params[local].dtype))


def import_on_this_rank(cfg: DictConfig) -> Path:
    from megatron.core import parallel_state, tensor_parallel

    from pretrain.checkpoint import save_synchronously
    from pretrain.cpu_shims import activate_cpu_shims
    from pretrain.model.teleflm import build_model

    hf_dir = Path(str(cfg.hf_dir))
    hf_cfg = json.loads((hf_dir / "config.json").read_text())
    check_llama_config(hf_cfg)
    run_cfg = run_config_for(cfg, hf_cfg)
    if cfg.dtype not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"dtype: import writes float32 or bfloat16 weights, got {cfg.dtype!r}")
    run_cfg.train.bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and hf_cfg.get("dtype") == "bfloat16")
    p = run_cfg.parallel
    activate_cpu_shims()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    tp, pp = int(p.tensor_model_parallel_size), int(p.pipeline_model_parallel_size)
    if dist.get_world_size() != tp * pp:
        raise ValueError(f"parallel: TP {tp} x PP {pp} needs {tp * pp} processes, got {dist.get_world_size()}")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    tensor_parallel.model_parallel_cuda_manual_seed(int(run_cfg.train.seed))
    model = build_model(run_cfg, pre_process=parallel_state.is_pipeline_first_stage(),
                        post_process=parallel_state.is_pipeline_last_stage())
    fill_from_hf(model, HFWeights(hf_dir), shapes_for(run_cfg), int(run_cfg.model.padded_vocab_size))

    root = Path(str(cfg.output))
    iter_dir = root / f"iter_{ITERATION:07d}"
    if dist.get_rank() == 0:
        iter_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    save_synchronously({"model": model.sharded_state_dict(), "iteration": ITERATION}, iter_dir)
    dist.barrier()
    if dist.get_rank() == 0:
        OmegaConf.save(run_cfg, iter_dir / "run_config.yaml", resolve=True)
        tmp = root / "latest.tmp"
        tmp.write_text(iter_dir.name)
        tmp.replace(root / "latest")
        print(f"[import_hf] {hf_dir} -> {iter_dir} at TP{tp} PP{pp}")
    dist.barrier()
    parallel_state.destroy_model_parallel()
    return iter_dir


def world_size_for(cfg: DictConfig) -> int:
    p = cfg.parallel
    return int(p.tensor_model_parallel_size) * int(p.pipeline_model_parallel_size)


@hydra.main(config_path="../configs", config_name="export", version_base=None)
def main(cfg: DictConfig) -> None:
    world = world_size_for(cfg)
    if world > 1 and "WORLD_SIZE" not in os.environ:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                   "-m", "launch.import_hf", *sys.argv[1:]]
        sys.exit(subprocess.run(command, env=env).returncode)
    import_on_this_rank(cfg)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
