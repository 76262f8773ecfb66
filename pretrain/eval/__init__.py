"""Evaluation: bits per byte (bpb), held-out scoring in the trainer (heldout), and of an exported HF model (hf_bpb)."""
