"""μP proxies at small scale: width-scaled shapes, a single-process training loop,
sweep selection and the Mu-scaling loss-prediction fit (docs/mup.md)."""
