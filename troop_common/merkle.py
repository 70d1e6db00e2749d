"""The SHA-256 Merkle tree a worker commits the rows of its product with.

    leaf(row)      = sha256(b"troop-leaf" + row as little-endian float32)
    node(l, r)     = sha256(b"troop-node" + l + r)

Level 0 is the leaves in row order; each level pairs neighbours, and a level
with an odd count pairs its last node with itself (the leaf count is fixed by
the challenge's `rows`, so this padding is unambiguous). The root of one leaf
is the leaf. An inclusion path lists the siblings from the leaf up to the root,
`depth(rows)` = ⌈log₂ rows⌉ hashes of 32 bytes; the row index says on which side
each sibling sits. Both sides import this module: the worker builds
(`MerkleTree`), the coordinator checks (`verify_path`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

LEAF_TAG = b"troop-leaf"
NODE_TAG = b"troop-node"
HASH_BYTES = 32


def row_bytes(row: np.ndarray) -> bytes:
    """A row of C as the protocol sends it: little-endian float32."""
    return np.ascontiguousarray(row, dtype="<f4").tobytes()


def leaf_hash(values: bytes) -> bytes:
    return hashlib.sha256(LEAF_TAG + values).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_TAG + left + right).digest()


def depth(leaves: int) -> int:
    """How many siblings an inclusion path holds for a tree of `leaves` leaves."""
    return max(0, (leaves - 1).bit_length())


class MerkleTree:
    """Every level of the tree over `leaves` (leaf hashes), for a root and paths."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        self.levels: list[list[bytes]] = [list(leaves)]
        while len(self.levels[-1]) > 1:
            level = self.levels[-1]
            self.levels.append(
                [
                    node_hash(level[i], level[i + 1] if i + 1 < len(level) else level[i])
                    for i in range(0, len(level), 2)
                ]
            )

    @classmethod
    def over_rows(cls, c: np.ndarray) -> MerkleTree:
        """The tree over the rows of C (rows × cols, float32)."""
        return cls([leaf_hash(row_bytes(row)) for row in c])

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    def path(self, index: int) -> list[bytes]:
        """The siblings of leaf `index`, from the leaf up."""
        siblings = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            siblings.append(level[sibling] if sibling < len(level) else level[index])
            index //= 2
        return siblings


def verify_path(root: bytes, index: int, leaves: int, values: bytes, path: Sequence[bytes]) -> bool:
    """True if `values` is leaf `index` of the tree of `leaves` leaves with this root."""
    if not 0 <= index < leaves or len(path) != depth(leaves):
        return False
    node = leaf_hash(values)
    for sibling in path:
        if len(sibling) != HASH_BYTES:
            return False
        node = node_hash(sibling, node) if index & 1 else node_hash(node, sibling)
        index //= 2
    return node == root
