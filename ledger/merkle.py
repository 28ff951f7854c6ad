"""Merkle trees over SHA-256 as RFC 9162 (Certificate Transparency 2.0) defines them.

Leaves hash as SHA-256(0x00 || data) and interior nodes as SHA-256(0x01 || left ||
right); the prefixes keep a leaf from posing as a node (second-preimage attack). For a
size that is not a power of two, the tree splits at the largest power of two below the
size (RFC 9162 section 2.1.1). Building level by level and carrying an odd last node
up unchanged yields the same tree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from citymesh.errors import InvalidInput

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """Return the hash of one leaf's data."""
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the hash of an interior node from its children's hashes."""
    return _sha256(NODE_PREFIX + left + right).digest()


class MerkleTree:
    """A tree built once over leaf data, for its root and many inclusion proofs.

    Memory is about two hashes (64 bytes) a leaf.
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        level = [_sha256(LEAF_PREFIX + data).digest() for data in leaves]
        self.levels: list[list[bytes]] = [level]
        while len(level) > 1:
            upper = [
                _sha256(NODE_PREFIX + level[i] + level[i + 1]).digest()
                for i in range(0, len(level) - 1, 2)
            ]
            if len(level) % 2:
                upper.append(level[-1])
            self.levels.append(upper)
            level = upper

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self.levels[0])

    @property
    def root(self) -> bytes:
        """Root hash; SHA-256 of the empty string for an empty tree."""
        if not self.levels[0]:
            return EMPTY_ROOT
        return self.levels[-1][0]

    def proof(self, index: int) -> list[bytes]:
        """Return the audit path of leaf ``index``, from the leaf level upwards."""
        if not 0 <= index < self.size:
            raise InvalidInput(
                f"leaf index must be within 0..{self.size - 1}, got {index!r}"
            )
        path = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index >>= 1
        return path


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Return the root hash over the leaves' data."""
    return MerkleTree(leaves).root


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Return the audit path of leaf ``index`` in the tree over ``leaves``."""
    return MerkleTree(leaves).proof(index)


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """Check that ``leaf`` (data, not hash) sits at ``index`` of a tree with ``root``.

    Implements the verification algorithm of RFC 9162 section 2.1.3.2.
    """
    if not 0 <= index < size:
        return False
    sha256 = _sha256  # local names: this loop runs once per level of every proof
    node_prefix = NODE_PREFIX
    fn = index
    sn = size - 1
    value = sha256(LEAF_PREFIX + leaf).digest()
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            value = sha256(node_prefix + sibling + value).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            value = sha256(node_prefix + value + sibling).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and value == root
