"""Proofs about a node's log against the Merkle roots it anchored on chain.

Each anchor commits to one batch of consecutive entries: the Merkle tree's leaf data are
the entries' ``entry_hash`` values in sequence order. Because an entry hash covers the
previous entry hash, the first leaf of every batch also commits to the last entry of
the batch before it. That link is what a consistency proof between two anchors shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .events import chain_hash
from .merkle import verify_inclusion


class AnchorLike(Protocol):
    """The anchor fields that verification reads (``chain.Anchor`` has them)."""

    @property
    def root(self) -> bytes: ...

    @property
    def from_seq(self) -> int: ...

    @property
    def to_seq(self) -> int: ...

    @property
    def count(self) -> int: ...


@dataclass(frozen=True)
class EventProof:
    """Inclusion of the entry at ``seq`` in the batch ``from_seq..to_seq``.

    ``path`` is the RFC 9162 audit path from the leaf level upwards.
    """

    seq: int
    from_seq: int
    to_seq: int
    path: tuple[bytes, ...]

    @property
    def index(self) -> int:
        """Leaf index of the entry in its batch."""
        return self.seq - self.from_seq

    @property
    def size(self) -> int:
        """Number of entries in the batch."""
        return self.to_seq - self.from_seq + 1


def verify_event_proof(
    entry_hash: bytes, proof: EventProof, anchor: AnchorLike
) -> bool:
    """Check that an entry hash is leaf ``proof.index`` under the anchored root."""
    if (proof.from_seq, proof.to_seq) != (anchor.from_seq, anchor.to_seq):
        return False
    if anchor.count != proof.size:
        return False
    return verify_inclusion(
        entry_hash, proof.index, proof.size, proof.path, anchor.root
    )


@dataclass(frozen=True)
class BoundaryLink:
    """The last entry of one anchored batch and the first entry of the next.

    The last entry is given by its fields, and its hash is the previous hash of the
    first entry of the next batch, so the link holds only if both leaves verify.
    """

    last_seq: int
    last_prev_hash: bytes
    last_event_hash: bytes
    last_path: tuple[bytes, ...]
    first_event_hash: bytes
    first_path: tuple[bytes, ...]


def verify_anchor_consistency(
    anchors: Sequence[AnchorLike], links: Sequence[BoundaryLink]
) -> bool:
    """Check that consecutive anchors cover one unbroken hash chain of entries.

    ``anchors`` are the anchors from the first to the second of interest, in order,
    and ``links`` contains one boundary link between each neighbouring pair.
    """
    if len(links) != max(len(anchors) - 1, 0):
        return False
    for anchor in anchors:
        if anchor.count != anchor.to_seq - anchor.from_seq + 1:
            return False
    for left, right, link in zip(anchors, anchors[1:], links, strict=False):
        if right.from_seq != left.to_seq + 1 or link.last_seq != left.to_seq:
            return False
        last_hash = chain_hash(link.last_prev_hash, link.last_seq, link.last_event_hash)
        last_index = link.last_seq - left.from_seq
        if not verify_inclusion(
            last_hash, last_index, left.count, link.last_path, left.root
        ):
            return False
        first_hash = chain_hash(last_hash, right.from_seq, link.first_event_hash)
        if not verify_inclusion(
            first_hash, 0, right.count, link.first_path, right.root
        ):
            return False
    return True
