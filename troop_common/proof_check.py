"""Checking a proof of hardware's openings: Merkle inclusion, then the exact entry.

`check_openings` is what the coordinator runs for VerifyProof (in a thread):
for each row it named at CommitProof, in order, the opening must carry that row,
`cols` float32 values whose leaf hash leads to the committed root along the
given path, and, at the named column, the exact product entry recomputed from
the seed (`troop_common.proof_matrices.exact_entry`, O(inner)) within the
declared precision's tolerance (`troop_common.hardware_proof.check_entry`).
The first failure is returned as a reason; None means every opening holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from troop_common.hardware_proof import check_entry
from troop_common.merkle import verify_path
from troop_common.proof_matrices import exact_entry


class Opening(Protocol):
    """One opened row (troop.v1.ProofOpening has this shape)."""

    row: int
    values: bytes
    path: Sequence[bytes]


@dataclass(frozen=True)
class Commitment:
    """What the coordinator holds when the openings arrive."""

    seed: int
    rows: int
    inner: int
    cols: int
    merkle_root: bytes
    precision: str
    open_rows: tuple[int, ...]
    open_cols: tuple[int, ...]


def check_openings(commitment: Commitment, openings: Sequence[Opening]) -> str | None:
    """None if every named row is opened, in the tree and right at its column; else why not."""
    c = commitment
    if len(openings) != len(c.open_rows):
        return f"{len(openings)} openings for {len(c.open_rows)} named rows"
    for n, (opening, row, col) in enumerate(zip(openings, c.open_rows, c.open_cols, strict=True)):
        if opening.row != row:
            return f"opening {n} is row {opening.row}, not the named row {row}"
        if len(opening.values) != c.cols * 4:
            return f"row {row} has {len(opening.values)} bytes, not {c.cols * 4}"
        if not verify_path(c.merkle_root, row, c.rows, bytes(opening.values), list(opening.path)):
            return f"row {row} is not in the committed tree"
        got = float(np.frombuffer(opening.values, dtype="<f4")[col])
        if not check_entry(got, exact_entry(c.seed, row, col, c.inner), c.inner, c.precision):
            return f"row {row} is wrong at column {col}"
    return None
