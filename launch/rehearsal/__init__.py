"""A multi-node rehearsal on one machine: an emulated Slurm cluster (network namespaces), the
52B experiment shrunk to CPU size submitted through ``python -m launch``, faults injected,
recovery measured (docs/rehearsal.md)."""
