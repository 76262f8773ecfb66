"""``python -m launch.export_hf checkpoint=RUN/checkpoints output=HF_DIR``: a stock HF Llama model.

Reads the dist checkpoint (any TP/PP layout) one layer at a time, maps names
and layouts with :mod:`launch.weight_mapping` (QKV split, SwiGLU split,
multipliers folded, vocabulary trimmed), and streams the tensors into
safetensors shards. The result loads with
``AutoModelForCausalLM.from_pretrained(HF_DIR)`` and no custom code; its logits
equal the megatron model's on every real token id (tests/launch/test_export_hf.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from launch.checkpoint_reader import DistCheckpointReader
from launch.safetensors_shards import ShardedSafetensorsWriter
from launch.weight_mapping import (EMBEDDING, FINAL_NORM, HF_EMBEDDING, HF_FINAL_NORM, HF_LM_HEAD, LAYER_KEYS,
                                   OUTPUT_LAYER, Shapes, embedding_to_hf, layer_to_hf, output_layer_to_hf)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def shapes_from_run_config(run_cfg: DictConfig, vocab_rows: int, trim_vocab: bool) -> Shapes:
    from pretrain.model.teleflm import logit_multiplier  # the trainer's own definition of the logit scale

    m = run_cfg.model
    heads = int(m.num_attention_heads)
    groups = int(OmegaConf.select(m, "num_query_groups") or heads)
    head_dim = int(OmegaConf.select(m, "kv_channels") or int(m.hidden_size) // heads)
    vocab = int(m.vocab_size) if trim_vocab else vocab_rows
    if vocab > vocab_rows:
        raise ValueError(f"model.vocab_size {vocab} exceeds the checkpoint's {vocab_rows} embedding rows")
    return Shapes(num_layers=int(m.num_layers), hidden_size=int(m.hidden_size), num_attention_heads=heads,
                  num_query_groups=groups, head_dim=head_dim, ffn_hidden_size=int(m.ffn_hidden_size),
                  vocab_size=vocab, input_mult=float(OmegaConf.select(m, "input_mult") or 1.0),
                  logit_mult=float(logit_multiplier(m)))


def hf_config(run_cfg: DictConfig, s: Shapes, dtype: torch.dtype, special_ids: dict[str, int | None]):
    from transformers import LlamaConfig

    m = run_cfg.model
    return LlamaConfig(
        vocab_size=s.vocab_size, hidden_size=s.hidden_size, intermediate_size=s.ffn_hidden_size,
        num_hidden_layers=s.num_layers, num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_query_groups, head_dim=s.head_dim,
        max_position_embeddings=int(m.seq_length), rms_norm_eps=float(OmegaConf.select(m, "norm_epsilon") or 1e-5),
        rope_parameters={"rope_type": "default", "rope_theta": float(OmegaConf.select(m, "rotary_base") or 10000)},
        hidden_act="silu", attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        initializer_range=float(m.init_method_std), dtype=str(dtype).removeprefix("torch."),
        architectures=["LlamaForCausalLM"], **special_ids)


def tokenizer_model_path(cfg: DictConfig, run_cfg: DictConfig) -> Path | None:
    """The SentencePiece model: given explicitly, else from the run's data manifest."""
    if cfg.tokenizer_model:
        return Path(cfg.tokenizer_model)
    data_path = OmegaConf.select(run_cfg, "data.path")
    manifest = Path(str(data_path)) / "manifest.json" if data_path else None
    if manifest is not None and manifest.exists():
        model = json.loads(manifest.read_text()).get("tokenizer_model")
        if model and Path(model).exists():
            return Path(model)
    return None


def export_tokenizer(spm_path: Path | None, out_dir: Path, vocab_size: int) -> dict[str, int | None]:
    if spm_path is None:
        print("[export_hf] no tokenizer: run config has no data.path manifest with tokenizer_model and "
              "tokenizer_model= was not given; the model is exported without one", file=sys.stderr)
        return {}
    from tokenizer.hf_export import save_hf_tokenizer
    from transformers import AutoTokenizer

    save_hf_tokenizer(spm_path, out_dir)
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    if len(tok) > vocab_size:
        raise ValueError(f"tokenizer {spm_path} has {len(tok)} ids, the model only {vocab_size}")
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def export(cfg: DictConfig) -> Path:
    reader = DistCheckpointReader(cfg.checkpoint)
    run_cfg = reader.run_config()
    if cfg.vocab not in ("trim", "padded"):
        raise ValueError(f"vocab: must be trim or padded, got {cfg.vocab!r}")
    s = shapes_from_run_config(run_cfg, reader.global_shape(EMBEDDING)[0], trim_vocab=cfg.vocab == "trim")
    if reader.global_shape(LAYER_KEYS["qkv"])[0] != s.num_layers:
        raise ValueError(f"run_config.yaml says {s.num_layers} layers, the checkpoint has "
                         f"{reader.global_shape(LAYER_KEYS['qkv'])[0]}")
    if cfg.dtype != "auto" and cfg.dtype not in DTYPES:
        raise ValueError(f"dtype: must be auto or one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    dtype = reader.dtype(EMBEDDING) if cfg.dtype == "auto" else DTYPES[cfg.dtype]
    out_dir = Path(cfg.output)
    writer = ShardedSafetensorsWriter(out_dir, int(float(cfg.max_shard_size_gb) * 2**30))

    writer.add(HF_EMBEDDING, embedding_to_hf(reader.tensor(EMBEDDING), s).to(dtype))
    for i in range(s.num_layers):  # one layer in memory at a time
        parts = {part: reader.layer(key, i) for part, key in LAYER_KEYS.items()}
        for name, tensor in layer_to_hf(parts, i, s).items():
            writer.add(name, tensor.to(dtype))
    writer.add(HF_FINAL_NORM, reader.tensor(FINAL_NORM).to(dtype))
    writer.add(HF_LM_HEAD, output_layer_to_hf(reader.tensor(OUTPUT_LAYER), s).to(dtype))
    writer.close()

    special_ids = export_tokenizer(tokenizer_model_path(cfg, run_cfg), out_dir, s.vocab_size)
    config = hf_config(run_cfg, s, dtype, special_ids)
    config.save_pretrained(str(out_dir))
    from transformers import GenerationConfig

    GenerationConfig(**{k: v for k, v in special_ids.items() if v is not None}).save_pretrained(str(out_dir))
    (out_dir / "teleflm_export.json").write_text(json.dumps({
        "checkpoint": str(reader.directory), "input_mult_folded": s.input_mult, "logit_mult_folded": s.logit_mult,
        "padded_vocab_rows": reader.global_shape(EMBEDDING)[0], "hf_vocab_size": s.vocab_size,
        "dtype": str(dtype)}, indent=2) + "\n")
    print(f"[export_hf] {reader.directory} -> {out_dir} ({writer.total_bytes / 2**20:.1f} MiB, {dtype})")
    return out_dir


@hydra.main(config_path="../configs", config_name="export", version_base=None)
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
