"""Per-GPU training memory of a Megatron-style 3D-parallel decoder (estimates).

Activation memory follows Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models" (arXiv 2205.05198), section 4:
per layer and micro-batch a GPT block with LayerNorm, a 4h GeLU MLP and
dropout stores s*b*h*(34 + 5*a*s/h) bytes in 16-bit activations. Rather than
hard-code 34, `layer_activation_terms` rebuilds that sum tensor by tensor, so
the same code reproduces the paper's 34 (tested) and gives the honest value
for Tele-FLM's block: RMSNorm, SwiGLU of width f, no dropout, optional GQA,
optional flash attention. Everything here is an estimate: it ignores
allocator rounding, temporary tensors inside kernels and framework caches,
which the planner covers with a separate margin.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class BlockShape:
    """What the activation count needs to know about one transformer block."""

    seq_length: int
    micro_batch: int
    hidden: int
    heads: int
    q_width: int          # heads * head_dim
    kv_width: int         # query_groups * head_dim (== q_width without GQA)
    ffn: int              # per-branch FFN width (SwiGLU: gate and up are each ffn wide)
    swiglu: bool = True
    fused_swiglu: bool = True   # Megatron bias_swiglu (bias_activation_fusion): saves only its input
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0


@dataclass(frozen=True)
class ActivationTerms:
    """Bytes one block stores for backward, split by how tensor parallelism treats them.

    replicated: tensors every TP rank holds in full unless sequence parallelism
    shards them along the sequence (norm inputs, the inputs of the column-parallel
    matmuls, dropout masks). sharded: tensors already split across TP ranks
    (Q/K/V, FFN intermediates). scores: the a*s*s attention-score tensors, which
    flash attention never materialises and selective recompute discards.
    """

    replicated: float
    sharded: float
    scores: float


def layer_activation_terms(shape: BlockShape, flash_attention: bool) -> ActivationTerms:
    """Tensor-by-tensor count (2 bytes per activation element, 1 per dropout-mask element).

    Attention: input of the QKV matmul (norm output) 2sbh; Q 2sb*dq, K and V
    2sb*dkv each (post-RoPE, kept for QK^T and AV); input of the output
    projection 2sb*dq; a dropout mask sbh when hidden dropout is on.
    Scores (non-flash): softmax output 2*a*s^2*b, plus mask a*s^2*b and the
    dropped-out probabilities 2*a*s^2*b with attention dropout. Flash attention
    keeps only the fp32 log-sum-exp, 4*a*s*b.
    MLP: input of the first matmul (norm output) 2sbh; GeLU keeps its input
    2sb*f and the second matmul's input 2sb*f; SwiGLU keeps the gate+up
    output 2sb*(2f) and the second matmul's input 2sb*f, and, unless fused
    (Megatron's bias_swiglu recomputes SiLU in backward), also SiLU(gate)
    2sb*f for the product's backward (measured with saved_tensors_hooks:
    chunk + silu * up saves 6sbf bytes, the next matmul's input another 2sbf);
    a dropout mask sbh when hidden dropout is on.
    Norms: each of the two pre-norms keeps its input, 2sbh each.
    With GeLU, f = 4h, dropout on and no flash this sums to 34sbh + 5as^2b.
    """
    s, b, h = shape.seq_length, shape.micro_batch, shape.hidden
    sb = s * b
    masks = 2 * sb * h if shape.hidden_dropout > 0 else 0
    replicated = 2 * (2 * sb * h) + 2 * sb * h + 2 * sb * h + masks  # 2 norm inputs, QKV input, FC1 input

    attention = 2 * sb * shape.q_width + 2 * (2 * sb * shape.kv_width) + 2 * sb * shape.q_width
    ffn_factor = (6 if shape.fused_swiglu else 8) if shape.swiglu else 4
    mlp = ffn_factor * sb * shape.ffn
    sharded = attention + mlp

    a = shape.heads
    if flash_attention:
        scores = 4 * a * s * b
    else:
        scores = 2 * a * s * s * b
        if shape.attention_dropout > 0:
            scores += 3 * a * s * s * b
    return ActivationTerms(replicated=float(replicated), sharded=float(sharded), scores=float(scores))


def layer_activation_bytes(shape: BlockShape, tp: int, sequence_parallel: bool,
                           recompute: str, flash_attention: bool) -> float:
    """Bytes one block keeps per micro-batch between its forward and backward.

    none: everything in `layer_activation_terms`. selective: Megatron
    recomputes the core attention, so the score tensors are dropped (the
    5as/h term of the paper). full: only the block input, 2sbh, is kept
    (sharded along the sequence under sequence parallelism); the rest is
    rebuilt in backward one layer at a time (see `recompute_working_bytes`).
    """
    if recompute not in ("none", "selective", "full"):
        raise ValueError(f"recompute must be none|selective|full, got {recompute!r}")
    if recompute == "full":
        block_input = 2.0 * shape.seq_length * shape.micro_batch * shape.hidden
        return block_input / tp if sequence_parallel else block_input
    terms = layer_activation_terms(shape, flash_attention)
    replicated = terms.replicated / tp if sequence_parallel else terms.replicated
    scores = 0.0 if recompute == "selective" else terms.scores / tp
    return replicated + terms.sharded / tp + scores


def recompute_working_bytes(shape: BlockShape, tp: int, sequence_parallel: bool,
                            recompute: str, flash_attention: bool) -> float:
    """Extra memory while a fully recomputed layer is rebuilt in backward: one layer's activations."""
    if recompute != "full":
        return 0.0
    return layer_activation_bytes(shape, tp, sequence_parallel, "none", flash_attention)


def logits_bytes(seq_length: int, micro_batch: int, hidden: int, padded_vocab: int,
                 tp: int, sequence_parallel: bool) -> float:
    """Last stage only: final norm and output-layer inputs plus the logits and loss buffers.

    Final norm input and output-layer input 2sbh each (sequence-sharded under SP);
    bf16 logits 2sbV/t; Megatron's vocab-parallel cross entropy works in fp32:
    a 4sbV/t fp32 copy it keeps for backward plus a 4sbV/t temporary
    (exp/softmax) at the peak. The 10 bytes per logit are an estimate of that peak.
    """
    sb = seq_length * micro_batch
    hidden_terms = 2 * (2 * sb * hidden)
    if sequence_parallel:
        hidden_terms /= tp
    return hidden_terms + 10.0 * sb * padded_vocab / tp


def pipeline_buffer_bytes(seq_length: int, micro_batch: int, hidden: int, tp: int,
                          sequence_parallel: bool, pp: int) -> float:
    """Point-to-point send/receive buffers: forward and backward, one in and one out each."""
    if pp <= 1:
        return 0.0
    tensor = 2.0 * seq_length * micro_batch * hidden
    if sequence_parallel:
        tensor /= tp
    return 4 * tensor


def in_flight_layer_activations(stage: int, layers: int, pp: int, vpp: int, micro_batches: int) -> float:
    """How many (layer, micro-batch) activation sets a pipeline stage holds at its peak.

    1F1B: stage r runs min(pp - r, m) forwards before its first backward, so the
    first stage holds pp micro-batches of its layers/pp layers: `layers` sets in all
    when m >= pp. Interleaved (vpp > 1) the first stage holds
    layers * (1 + (pp - 1) / (pp * vpp)) (Korthikanti et al. section 4.2.3), and
    in general stage r warms up 2*(pp - r - 1) + (vpp - 1)*pp chunks of
    layers / (pp * vpp) layers, plus the one it is working on.
    """
    if pp == 1:
        return float(layers)
    if vpp <= 1:
        return layers / pp * min(pp - stage, micro_batches)
    chunks = 2 * (pp - stage - 1) + (vpp - 1) * pp + 1
    chunks = min(chunks, micro_batches * vpp)
    return layers / (pp * vpp) * chunks
