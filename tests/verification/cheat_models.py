"""Cheaper models served under SmolLM2's name, built from the shipped GGUF.

What a cheating node could run instead of the claimed model, written with the
`gguf` package into a file both engines load (transformers and llama.cpp read
mixed tensor types):

- `truncated(source, dest, keep)`: the first `keep` transformer blocks only
  (`llama.block_count` lowered, the later blocks' tensors left out): roughly
  keep/30 of the compute.
- `perturbed(source, dest, scale, seed)`: every block's Q4_1 weight matrix
  de-quantized, Gaussian noise added, stored as F16. The noise's standard
  deviation is `scale` times the Q4_1 rounding error of each 32-weight block
  (its step / sqrt(12), the step estimated as the block's range / 15): scale
  sqrt(3) makes the total error twice Q4_1's, what a 3-bit quantization of the
  same weights would carry; sqrt(24), five times, a 2-bit one.

Used by tests/verification and bench/verification.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize

THREE_BIT_NOISE = math.sqrt(3.0)
TWO_BIT_NOISE = math.sqrt(24.0)

Tensor = gguf.gguf_reader.ReaderTensor


def block_index(name: str) -> int | None:
    """N for a tensor named blk.N.*; None for the others (embeddings, output norm)."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blk" else None


def _rewrite(
    source: Path,
    dest: Path,
    *,
    block_count: int | None = None,
    transform: Callable[[Tensor], np.ndarray | None] | None = None,
) -> Path:
    """Copy `source` to `dest`, with fewer blocks and/or some tensors replaced."""
    reader = gguf.GGUFReader(source)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch is not None
    writer = gguf.GGUFWriter(dest, arch.contents())
    count_key = f"{arch.contents()}.block_count"
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == count_key and block_count is not None:
            value = block_count
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    for tensor in reader.tensors:
        index = block_index(tensor.name)
        if block_count is not None and index is not None and index >= block_count:
            continue
        replaced = transform(tensor) if transform is not None else None
        if replaced is not None:
            writer.add_tensor(tensor.name, replaced)
        else:
            writer.add_tensor(
                tensor.name, tensor.data, raw_shape=tensor.data.shape,
                raw_dtype=tensor.tensor_type,
            )  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def truncated(source: Path, dest: Path, keep: int) -> Path:
    """`source` with only its first `keep` blocks."""
    return _rewrite(source, dest, block_count=keep)


def perturbed(source: Path, dest: Path, scale: float = THREE_BIT_NOISE, seed: int = 0) -> Path:
    """`source` with Gaussian noise on every quantized block weight (see the module)."""
    rng = np.random.default_rng(seed)

    def noisy(tensor: Tensor) -> np.ndarray | None:
        if block_index(tensor.name) is None or tensor.tensor_type != gguf.GGMLQuantizationType.Q4_1:
            return None
        weights = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        blocks = weights.reshape(-1, 32)
        step = (blocks.max(axis=1, keepdims=True) - blocks.min(axis=1, keepdims=True)) / 15.0
        noise = rng.standard_normal(blocks.shape, dtype=np.float32) * (scale * step / math.sqrt(12))
        return (blocks + noise).reshape(weights.shape).astype(np.float16)

    return _rewrite(source, dest, transform=noisy)


def block_count(path: Path) -> int:
    """The number of transformer blocks a GGUF file declares."""
    reader = gguf.GGUFReader(path)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch is not None
    field = reader.get_field(f"{arch.contents()}.block_count")
    assert field is not None
    return int(field.contents())
