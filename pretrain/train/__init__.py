"""Training: one loop (:mod:`.loop`) with features as callbacks (:mod:`.callbacks`), over a
backend's train step (:mod:`.megatron_step`, :mod:`.deepspeed_step`). Entry point: :func:`run`."""

from pretrain.train.run import run
from pretrain.train.setup import shutdown

__all__ = ["run", "shutdown"]
