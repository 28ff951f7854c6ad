"""The usage ledger: each node's hash-chained log, Merkle anchors on chain, audit.

Events go into the node's ``UsageLog``, and an ``Anchorer`` sends the Merkle root of
each new batch to the chain. ``verify_node`` and ``verify_segment`` check a node's
entries against those anchors. The chain client and anchorer load on first use,
because they import web3.py, which a process that only appends events does not need.
"""

from __future__ import annotations

import importlib
from typing import Any

from .audit import NodeVerdict, verify_node, verify_segment
from .canonical import canonical_json
from .events import (
    LogEntry,
    UsageEvent,
    canonical_event,
    chain_hash,
    event_hash,
    invalid_signers,
    sign_event,
)
from .log import Batch, LogIntegrityError, UsageLog
from .merkle import MerkleTree, inclusion_proof, merkle_root, verify_inclusion
from .proofs import BoundaryLink, EventProof, verify_anchor_consistency
from .report import (
    UsageReport,
    UsageRow,
    Violation,
    report_csv,
    report_json,
    report_table,
    usage_report,
)
from .segment import AnchorRecord, Segment, SegmentError, load_segment

_LAZY = {
    "Anchor": "chain",
    "AnchorMismatch": "anchoring",
    "Anchorer": "anchoring",
    "ChainClient": "chain",
    "Deployment": "chain",
    "NodeRecord": "chain",
    "deploy": "chain",
}

__all__ = [
    "Anchor",
    "AnchorMismatch",
    "AnchorRecord",
    "Anchorer",
    "Batch",
    "BoundaryLink",
    "ChainClient",
    "Deployment",
    "EventProof",
    "LogEntry",
    "LogIntegrityError",
    "MerkleTree",
    "NodeRecord",
    "NodeVerdict",
    "Segment",
    "SegmentError",
    "UsageEvent",
    "UsageLog",
    "UsageReport",
    "UsageRow",
    "Violation",
    "canonical_event",
    "canonical_json",
    "chain_hash",
    "deploy",
    "event_hash",
    "inclusion_proof",
    "invalid_signers",
    "load_segment",
    "merkle_root",
    "report_csv",
    "report_json",
    "report_table",
    "sign_event",
    "usage_report",
    "verify_anchor_consistency",
    "verify_inclusion",
    "verify_node",
    "verify_segment",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
