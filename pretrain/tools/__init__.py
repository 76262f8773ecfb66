"""Offline tools that need no process group: FLOP and memory models, the fit check, μP coordinate check."""
