"""Growth tests: which layer specs this machine can build (the TE one needs TransformerEngine)."""

from __future__ import annotations

from pathlib import Path

SPECS = ["local", "transformer_engine"]


def skip_unless_spec_builds(spec: str) -> None:
    """Skip, saying why, a spec this machine cannot build: megatron's TE spec function itself
    raises without TransformerEngine (``TESpecProvider`` is imported only when TE imports)."""
    import pytest

    from pretrain.model.fast_path import detect_machine

    machine = detect_machine()
    if spec == "transformer_engine" and not machine.transformer_engine:
        pytest.skip(f"the TransformerEngine spec needs TransformerEngine: "
                    f"{machine.transformer_engine_error or 'not installed'}")


def launch_growth_scenarios(out: Path, spec: str) -> Path:
    """One 2-process launch of every ``growth_worker`` scenario on layer spec ``spec``."""
    from tests.helpers.launch import torchrun
    from tests.pretrain.growth import growth_worker

    torchrun(2, ["tests/pretrain/growth/growth_worker.py", str(out), ",".join(growth_worker.SCENARIOS), spec],
             timeout=600, cpu_only="builds its own gloo group and CPU tensors")
    return out
