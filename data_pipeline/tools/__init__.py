"""Offline tools that build what the model-based stages load: the fastText classifier, the n-gram LM, cut-offs."""
