"""Stage 4: launch stages locally or on Slurm, export checkpoints to Hugging Face."""
