"""Parameter and FLOP counting for Tele-FLM-style decoders, and MFU.

The trainer reports MFU with `model_flops_per_token` and `mfu`; the planner
(`pretrain.tools.fit_check`) uses the same numbers, so the two can never disagree about
what "one token of work" means.

Counting convention (publish it next to every MFU figure):

    model FLOPs per token = 6 * N_matmul + 6 * L * s * d_attn

* N_matmul counts every weight that takes part in a matmul per token:
  attention QKV and output projections, the three SwiGLU matrices, and the
  output (logits) layer over the *padded* vocabulary, because that is the
  matmul the GPU actually executes (Megatron counts it the same way).
  The input embedding is a table lookup, not a matmul, so it is excluded;
  norm gains are elementwise and excluded. There are no biases in Tele-FLM.
* 6 = 2 (multiply-add) x 3 (forward + two backward matmuls).
* Attention scores QK^T and the weighted sum AV cost 2*s*d_attn each per
  token per layer in the forward pass over the full s x s matrix, i.e.
  12*L*s*d_attn for forward+backward; with a causal mask only half the
  matrix is needed, so 6*L*s*d_attn. d_attn = heads * kv_channels (equals
  the hidden size for Tele-FLM).
* Recomputation is NOT counted (that would be hardware FLOPs utilisation).
* Peaks are dense BF16: 312 TFLOP/s for A100/A800 SXM, 989 for H100/H200 SXM.
  1979 is NVIDIA's *sparsity* figure for H100; dividing by it halves the MFU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Dense BF16 tensor-core peaks in TFLOP/s, most specific name first so that
# "H100 PCIe" is not matched by the plain "H100" entry. The 2:4-sparsity
# figures (624 for A100, 1979 for H100/H200) are deliberately absent.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.0,
    "H100": 989.0,   # SXM; 1979 is the sparse figure
    "H800": 989.0,   # H100 compute with reduced NVLink
    "A800": 312.0,
    "A100": 312.0,
}


def _get(cfg: Mapping[str, Any] | Any, key: str, default: Any = None) -> Any:
    """Read a key from a plain dict or an OmegaConf DictConfig alike."""
    try:
        value = cfg[key]
    except (KeyError, AttributeError, TypeError):
        return default
    return default if value is None else value


def padded_vocab_size(vocab: int, divisible_by: int, tp: int = 1) -> int:
    """Megatron pads the vocabulary so each TP rank holds an equal, aligned slice.

    The multiple is divisible_by * tp (Megatron's `_vocab_size_with_padding`),
    e.g. Tele-FLM's 80000 tokens with 128 * TP4 = 512 -> 80384.
    """
    if vocab <= 0 or divisible_by <= 0 or tp <= 0:
        raise ValueError(f"vocab, divisible_by and tp must be positive, got {vocab}, {divisible_by}, {tp}")
    multiple = divisible_by * tp
    return -(-vocab // multiple) * multiple


def _attention_dims(model_cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(query width, key/value width) of the attention projections, GQA aware."""
    hidden = int(_get(model_cfg, "hidden_size"))
    heads = int(_get(model_cfg, "num_attention_heads"))
    head_dim = int(_get(model_cfg, "kv_channels", hidden // heads))
    groups = int(_get(model_cfg, "num_query_groups", heads))
    return heads * head_dim, groups * head_dim


def model_padded_vocab(model_cfg: Mapping[str, Any], tp: int = 1) -> int:
    """The padded vocabulary this model gets under tensor parallel size `tp`."""
    return padded_vocab_size(int(_get(model_cfg, "vocab_size")),
                             int(_get(model_cfg, "make_vocab_size_divisible_by", 128)), tp)


def parameter_count(model_cfg: Mapping[str, Any], padded_vocab: int) -> dict[str, int]:
    """Exact parameter count of the untied, bias-free Tele-FLM decoder.

    Returns embedding, per_layer, layers (all blocks), final_norm, output,
    total, and matmul (the N of the 6N FLOP count: blocks' weight matrices
    plus the output layer; embedding and norm gains excluded).
    """
    hidden = int(_get(model_cfg, "hidden_size"))
    ffn = int(_get(model_cfg, "ffn_hidden_size"))
    layers = int(_get(model_cfg, "num_layers"))
    q_width, kv_width = _attention_dims(model_cfg)

    attention = hidden * (q_width + 2 * kv_width) + q_width * hidden  # QKV + output projection
    swiglu = 3 * hidden * ffn                                         # gate, up, down
    norms = 2 * hidden                                                # pre-attention and pre-MLP RMSNorm gains
    per_layer_matmul = attention + swiglu
    per_layer = per_layer_matmul + norms

    embedding = padded_vocab * hidden
    output = padded_vocab * hidden      # untied
    final_norm = hidden
    total = embedding + layers * per_layer + final_norm + output
    return {
        "embedding": embedding,
        "per_layer": per_layer,
        "per_layer_matmul": per_layer_matmul,
        "layers": layers * per_layer,
        "final_norm": final_norm,
        "output": output,
        "total": total,
        "matmul": layers * per_layer_matmul + output,
    }


def model_flops_per_token(model_cfg: Mapping[str, Any], seq_length: int,
                          padded_vocab: int | None = None) -> float:
    """Model FLOPs (forward + backward) per trained token; see the module docstring.

    padded_vocab defaults to the vocabulary padded for TP1; pass the run's
    padded size (e.g. `model_padded_vocab(cfg, tp)`) to match its logits matmul
    exactly. The difference is under 0.1% for Tele-FLM.
    """
    if seq_length <= 0:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    vocab = padded_vocab if padded_vocab is not None else model_padded_vocab(model_cfg, 1)
    n_matmul = parameter_count(model_cfg, vocab)["matmul"]
    layers = int(_get(model_cfg, "num_layers"))
    q_width, _ = _attention_dims(model_cfg)
    causal_attention = 6 * layers * seq_length * q_width
    return float(6 * n_matmul + causal_attention)


def mfu(tokens_per_s_per_gpu: float, flops_per_token: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation as a fraction (0.44, not 44) of the dense peak."""
    if peak_tflops <= 0:
        raise ValueError(f"peak_tflops must be positive, got {peak_tflops}")
    return tokens_per_s_per_gpu * flops_per_token / (peak_tflops * 1e12)


def peak_bf16_tflops_for(device_name: str) -> float | None:
    """Dense BF16 peak for a CUDA device name, or None when the GPU is unknown.

    Unknown GPUs return None rather than a guess: a wrong denominator is the
    most common way published MFU numbers go wrong.
    """
    name = device_name.upper()
    for key, peak in PEAK_BF16_TFLOPS.items():
        if key.upper() in name:
            return peak
    return None


def detect_peak_bf16_tflops() -> float | None:
    """Peak of the current torch.cuda device; None on CPU or an unknown GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return peak_bf16_tflops_for(torch.cuda.get_device_name(torch.cuda.current_device()))
