"""Stage 3: the megatron-core trainer with the Tele-FLM recipe."""
