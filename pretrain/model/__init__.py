"""The Tele-FLM architecture as megatron-core specs (teleflm) and its μP rules (mup)."""
