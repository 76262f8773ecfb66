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
import os
import shutil
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

    from pretrain.model.rope import hf_rope_parameters

    m = run_cfg.model
    return LlamaConfig(
        vocab_size=s.vocab_size, hidden_size=s.hidden_size, intermediate_size=s.ffn_hidden_size,
        num_hidden_layers=s.num_layers, num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_query_groups, head_dim=s.head_dim,
        max_position_embeddings=int(m.seq_length), rms_norm_eps=float(OmegaConf.select(m, "norm_epsilon") or 1e-5),
        rope_parameters=hf_rope_parameters(m),   # default, linear or yarn (pretrain/model/rope.py)
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


class CheckpointReadError(RuntimeError):
    """The checkpoint could not be read (truncated or missing file); the message names it."""


def damaged_checkpoint_files(directory: Path) -> list[str]:
    """What is wrong with a dist checkpoint's files, judged from its DCP ``.metadata`` (which
    records, per tensor chunk, the file, offset and length it was written to): one line per
    unreadable metadata, missing file or file shorter than its last chunk. Empty: the files are
    all there and long enough (their contents are not read)."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        metadata = FileSystemReader(str(directory)).read_metadata()
    except Exception as err:  # a torn pickle: EOFError, UnpicklingError, ...
        return [f"{directory / '.metadata'}: unreadable ({type(err).__name__}: {err})"]
    needed: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), int(info.offset) + int(info.length))
    problems = []
    for name, size in sorted(needed.items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size < size:
            problems.append(f"{path}: truncated ({path.stat().st_size} bytes, the metadata records {size})")
    return problems


def _checkpoint_error(checkpoint: str | Path, directory: Path | None, err: BaseException) -> CheckpointReadError:
    """``err`` (often a bare EOFError from a torn pickle) with the checkpoint, and the damaged file
    when its size gives it away, named."""
    where = directory if directory is not None else Path(str(checkpoint))
    problems = damaged_checkpoint_files(directory) if directory is not None else []
    if problems:
        return CheckpointReadError(f"export_hf: checkpoint {where} is damaged: {'; '.join(problems)} "
                                   "(a half-written checkpoint? export an earlier iter_* directory)")
    return CheckpointReadError(f"export_hf: exporting checkpoint {where} failed: {type(err).__name__}: {err}")


def _resolved_or_none(checkpoint) -> Path | None:
    from launch.checkpoint_reader import resolve_checkpoint_dir

    try:
        return resolve_checkpoint_dir(checkpoint)
    except Exception:
        return None


def staging_dir(out_dir: Path) -> Path:
    """Where the export is written before it is renamed to ``out_dir`` (same filesystem)."""
    return out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"


def check_output(out_dir: Path) -> None:
    """``output`` may be absent, an empty directory or an earlier export (replaced on success);
    anything else is refused before any work, so an export never mixes into unrelated files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"output={out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "teleflm_export.json").is_file():
        raise FileExistsError(f"output={out_dir} is a non-empty directory that is not an earlier export "
                              "(no teleflm_export.json): pick a new output directory")


def publish(staged: Path, out_dir: Path) -> None:
    """Rename the finished export into place; an earlier export there is replaced."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
    os.replace(staged, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export(cfg: DictConfig) -> Path:
    """Write the HF directory to a staging directory next to ``output`` and rename it into place
    when everything is written: a failure (a damaged checkpoint, a full disk) leaves no output."""
    out_dir = Path(cfg.output)
    check_output(out_dir)
    directory = None
    try:
        reader = DistCheckpointReader(cfg.checkpoint)
        directory = reader.directory
    except FileNotFoundError:  # resolve_checkpoint_dir's message names the path
        raise
    except Exception as err:  # a torn .metadata: a bare EOFError
        directory = directory or _resolved_or_none(cfg.checkpoint)
        raise _checkpoint_error(cfg.checkpoint, directory, err) from err
    if damaged_checkpoint_files(reader.directory):  # before anything is written
        raise _checkpoint_error(cfg.checkpoint, reader.directory, RuntimeError("damaged"))
    staged = staging_dir(out_dir)
    if staged.exists():
        shutil.rmtree(staged)
    staged.parent.mkdir(parents=True, exist_ok=True)
    try:
        _export_into(cfg, reader, staged)
        publish(staged, out_dir)
    except BaseException as err:
        shutil.rmtree(staged, ignore_errors=True)
        # the exporter's own checks (ValueError, KeyError naming the key) and interrupts pass as they are;
        # anything else (EOFError, UnpicklingError, DCP's CheckpointException, OSError) gets the checkpoint named
        if isinstance(err, (ValueError, KeyError, IndexError, KeyboardInterrupt, SystemExit)):
            raise
        raise _checkpoint_error(cfg.checkpoint, reader.directory, err) from err
    print(f"[export_hf] {reader.directory} -> {out_dir}")
    return out_dir


def _export_into(cfg: DictConfig, reader: DistCheckpointReader, out_dir: Path) -> None:
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
    print(f"[export_hf] {reader.directory}: {writer.total_bytes / 2**20:.1f} MiB written ({dtype})")


@hydra.main(config_path="../configs", config_name="export", version_base=None)
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
