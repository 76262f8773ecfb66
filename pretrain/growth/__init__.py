"""MSG model growth during pretraining (docs/growth.md).

* :mod:`pretrain.growth.spec` — what a growth changes (shapes, new layers).
* :mod:`pretrain.growth.tensors` — grow checkpoint tensors, whole or by region (params and Adam state).
* :mod:`pretrain.growth.fresh` — new entries as a function of (seed, key, global element index).
* :mod:`pretrain.growth.grow` — grow a trainer checkpoint offline (any TP/PP in, any out).
* :mod:`pretrain.growth.streaming` — the same, sharded over the next stage's ranks, one slice at a time.
* :mod:`pretrain.growth.masked` — the masked model: the grown model starts as the old function.
* :mod:`pretrain.growth.schedule` / ``python -m pretrain.growth`` — staged runs.
"""
