"""Stage 2: train a SentencePiece BPE tokenizer and encode the corpus into Megatron indexed datasets."""
