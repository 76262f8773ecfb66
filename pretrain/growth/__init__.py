"""MSG model growth during pretraining (docs/growth.md).

* :mod:`pretrain.growth.spec` — what a growth changes (shapes, new layers).
* :mod:`pretrain.growth.tensors` — grow full checkpoint tensors (params and Adam state).
* :mod:`pretrain.growth.grow` — grow a trainer checkpoint offline (any TP/PP in, any out).
* :mod:`pretrain.growth.masked` — the masked model: the grown model starts as the old function.
* :mod:`pretrain.growth.schedule` / ``python -m pretrain.growth`` — staged runs.
"""
