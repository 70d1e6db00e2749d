"""The running batch's KV cache: one row per sequence, left-padded to a common length.

Sequences of different lengths decode together by left padding: every row's
cache ends at the same column, a 2-D attention mask marks the padding (0) and
the real positions (1), and each row's position ids count only its real
tokens, so a row computes exactly what it would alone (up to the floating
point order of batched matrix products). A sequence joins with the cache its
own prefill built (`join`) and leaves by row selection (`keep`); columns that
became padding in every row are cut off so the cache does not grow without
bound while sequences come and go.
"""

from __future__ import annotations

from typing import Any

import torch


def _pad_left(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    if columns == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _stack_rows(batch: torch.Tensor, row: torch.Tensor, width: int) -> torch.Tensor:
    """`batch` (B, H, T, D) and `row` (1, H, t, D), both left-padded to `width` columns."""
    return torch.cat(
        [_pad_left(batch, width - batch.shape[2], 2), _pad_left(row, width - row.shape[2], 2)]
    )


class BatchCache:
    """The cache and mask of the sequences decoding together (rows in join order)."""

    def __init__(self, config: Any, device: torch.device) -> None:
        self.config = config
        self.device = device
        # A transformers DynamicCache: its `layers` hold `keys` and `values` (B, H, T, D).
        self.cache: Any = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=device)

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def join(self, cache: Any) -> None:
        """Add one sequence whose prefill built `cache` (batch of 1, no padding)."""
        length = cache.get_seq_length()
        row = torch.ones((1, length), dtype=torch.long, device=self.device)
        if self.cache is None:
            self.cache, self.mask = cache, row
            return
        width = max(length, self.length)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = _stack_rows(mine.keys, theirs.keys, width)
            mine.values = _stack_rows(mine.values, theirs.values, width)
        self.mask = torch.cat(
            [_pad_left(self.mask, width - self.length, 1), _pad_left(row, width - length, 1)]
        )

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order); cut columns that are padding everywhere."""
        if not rows:
            self.cache = None
            self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)
            return
        assert self.cache is not None
        index = torch.tensor(rows, device=self.device)
        self.mask = self.mask.index_select(0, index)
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else self.length
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention mask (with the new column) and position ids for one decode step."""
        positions = self.mask.sum(dim=1, keepdim=True)
        ones = torch.ones((self.rows, 1), dtype=torch.long, device=self.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        return self.mask, positions
