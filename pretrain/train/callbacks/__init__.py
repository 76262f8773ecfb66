"""Every loop feature, one callback each (see :mod:`pretrain.train.callback` for the hooks)."""
