"""The cheat builders: a truncated GGUF declares and holds fewer blocks, and loads; a
perturbed one carries noise of the stated size on its block weights only."""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize

from tests.verification.cheat_models import (
    THREE_BIT_NOISE,
    block_count,
    block_index,
    perturbed,
    truncated,
)


def test_a_truncated_model_has_fewer_blocks_and_loads(smollm2_path: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig

    path = truncated(smollm2_path, tmp_path / "truncated.gguf", 12)
    assert block_count(smollm2_path) == 30
    assert block_count(path) == 12
    blocks = {block_index(t.name) for t in gguf.GGUFReader(path).tensors} - {None}
    assert blocks == set(range(12))
    config = AutoConfig.from_pretrained(tmp_path, gguf_file=path.name, local_files_only=True)
    assert config.num_hidden_layers == 12


def test_a_perturbed_model_has_noise_of_the_stated_size(smollm2_path: Path, tmp_path: Path) -> None:
    path = perturbed(smollm2_path, tmp_path / "perturbed.gguf", THREE_BIT_NOISE, seed=1)
    original = {t.name: t for t in gguf.GGUFReader(smollm2_path).tensors}
    changed = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert original.keys() == changed.keys()
    assert block_count(path) == 30
    # Outside the blocks' quantized matrices, nothing moved.
    for name in ("token_embd.weight", "output_norm.weight", "blk.0.attn_norm.weight"):
        assert changed[name].tensor_type == original[name].tensor_type
        assert np.array_equal(changed[name].data, original[name].data)
    name = "blk.3.ffn_up.weight"
    assert changed[name].tensor_type == gguf.GGMLQuantizationType.F16
    before = dequantize(original[name].data, original[name].tensor_type).reshape(-1, 32)
    after = np.asarray(changed[name].data, dtype=np.float32).reshape(-1, 32)
    step = (before.max(axis=1) - before.min(axis=1)) / 15
    expected = THREE_BIT_NOISE * math.sqrt(float(np.mean(step**2)) / 12)
    measured = float(np.std(after - before))
    assert 0.9 * expected < measured < 1.1 * expected


async def test_llama_cpp_serves_the_cheat_models(smollm2_path: Path, tmp_path: Path) -> None:
    """The files load in llama.cpp too (what a cheating relay would serve), and answer
    differently from the real model."""
    import httpx2 as httpx

    from bench.llama_cpp import LlamaServer, llama_python
    from tests.conftest import require

    python = llama_python()
    require("llama.cpp's server", python is not None, "run scripts/llama-server-env")
    assert python is not None
    body = {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 0,
    }  # fmt: skip
    answers = {}
    models = {
        "real": smollm2_path,
        "truncated": truncated(smollm2_path, tmp_path / "truncated.gguf", 15),
        "perturbed": perturbed(smollm2_path, tmp_path / "perturbed.gguf", THREE_BIT_NOISE),
    }
    for name, path in models.items():
        log = tmp_path / f"{name}.log"
        async with LlamaServer(python, path, log_path=log, threads=2) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
                reply = await http.post("/chat/completions", json={"model": server.alias, **body})
        assert reply.status_code == 200, reply.text
        content = reply.json()["choices"][0]["logprobs"]["content"]
        answers[name] = [(entry["token"], round(entry["logprob"], 3)) for entry in content]
        assert answers[name], name
    assert answers["truncated"] != answers["real"]
    assert answers["perturbed"] != answers["real"]
