"""Growth tests: which layer specs this machine can build (the TE one needs TransformerEngine)."""

from __future__ import annotations

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
