"""Training: one loop (:mod:`.loop`) with every feature a callback (:mod:`.callbacks`), over a
backend's train step (:mod:`.megatron_step`, :mod:`.deepspeed_step`); :func:`.run.run` builds a run."""
