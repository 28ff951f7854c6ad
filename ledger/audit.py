"""Verification of a node's usage log against the anchors on chain.

``verify_node`` walks the sequence numbers of the range in order. Each entry must be
present, its event must hash to its event hash, and its entry hash must chain from
the entry before. Every signature on the event must verify, and when the parties'
keys are known, an exchange must carry both parties' signatures. Finally the entry
must be included under the root anchored for its range. The check stops at the
first entry that fails and names it.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .events import GENESIS_HASH, LogEntry, chain_hash, event_hash, invalid_signers
from .merkle import MerkleTree
from .proofs import AnchorLike, EventProof, verify_event_proof
from .segment import Segment, anchors_from_records, read_segment

RECEIPT_KINDS = frozenset({"exchange"})  # kinds that both parties must sign


@dataclass(frozen=True)
class NodeVerdict:
    """The outcome of verifying one node's log segment.

    ``events`` counts the entries checked, ``anchored`` those proven under an anchor.
    ``first_bad_seq`` is the first entry that failed (None when all passed or when
    the defect is not tied to one entry), and ``reason`` states what failed, or sums
    up the check when all passed.
    """

    ok: bool
    events: int
    anchored: int
    first_bad_seq: int | None
    reason: str


class _Failure(Exception):
    def __init__(self, seq: int | None, reason: str) -> None:
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


def verify_node(
    entries: Sequence[LogEntry] | Segment,
    anchors: Sequence[AnchorLike] | None = None,
    *,
    proofs: Mapping[int, EventProof] | None = None,
    party_keys: Mapping[str, bytes] | None = None,
    from_seq: int | None = None,
    to_seq: int | None = None,
) -> NodeVerdict:
    """Verify a node's entries against its anchors; name the first bad entry.

    ``entries`` is a list of LogEntry or a loaded Segment (whose proofs, range and,
    when ``anchors`` is None, anchors are used). ``anchors`` should come from the
    chain (``ChainClient.anchors(account)``); when a Segment carries anchors too, they
    must equal the chain's. ``party_keys`` maps a provider or consumer id to its
    32-byte Ed25519 public key. The range checked defaults to the first entry up to
    the last entry or the last anchored seq, whichever is larger, so anchored entries
    missing from the input fail.
    """
    node = ""
    if isinstance(entries, Segment):
        segment = entries
        node = segment.node
        if proofs is None:
            proofs = segment.proofs
        if from_seq is None:
            from_seq = segment.from_seq
        if to_seq is None:
            to_seq = segment.to_seq
        if anchors is None:
            anchors = segment.anchors
        else:
            mismatch = _bundle_anchor_mismatch(segment.anchors, anchors)
            if mismatch:
                return NodeVerdict(False, 0, 0, None, mismatch)
        entry_list: Sequence[LogEntry] = segment.entries
    else:
        entry_list = entries
    checker = _Checker(
        entry_list, anchors or (), proofs or {}, party_keys, node, from_seq, to_seq
    )
    return checker.run()


def verify_segment(
    path: Path,
    anchors: Sequence[AnchorLike] | None = None,
    *,
    party_keys: Mapping[str, bytes] | None = None,
) -> NodeVerdict:
    """Verify an exported segment file, offline or against the chain's anchors.

    With ``anchors`` None, the check uses the anchors stored in the file and needs no
    network. Passing the chain's anchors also checks the file's copies. A malformed
    line fails the check, and when it held an entry, the verdict names that entry
    unless an earlier entry already failed.
    """
    segment, error = read_segment(path)
    if error is None:
        return verify_node(segment, anchors, party_keys=party_keys)
    if error.seq is None and not segment.entries:
        return NodeVerdict(False, 0, 0, None, str(error))
    last_read = segment.entries[-1].seq if segment.entries else segment.from_seq - 1
    use_anchors = anchors if anchors is not None else segment.anchors
    checker = _Checker(
        segment.entries,
        use_anchors,
        segment.proofs,
        party_keys,
        segment.node,
        segment.from_seq,
        last_read,
        truncated=True,
    )
    verdict = checker.run()
    if not verdict.ok:
        return verdict
    return NodeVerdict(False, verdict.events, verdict.anchored, error.seq, str(error))


def _bundle_anchor_mismatch(
    bundled: Sequence[Any], chain_anchors: Sequence[Any]
) -> str | None:
    on_chain = set(anchors_from_records(chain_anchors))
    for anchor in anchors_from_records(bundled):
        if anchor not in on_chain:
            return (
                f"the segment's anchor for seqs {anchor.from_seq}..{anchor.to_seq} "
                f"(root {anchor.root.hex()}, tx {anchor.tx!r}) is not on the chain"
            )
    return None


class _Checker:
    def __init__(
        self,
        entries: Sequence[LogEntry],
        anchors: Sequence[AnchorLike],
        proofs: Mapping[int, EventProof],
        party_keys: Mapping[str, bytes] | None,
        node: str,
        from_seq: int | None,
        to_seq: int | None,
        *,
        truncated: bool = False,
    ) -> None:
        self.entries = {entry.seq: entry for entry in entries}
        self.anchors = sorted(anchors, key=lambda a: a.from_seq)
        self.starts = [a.from_seq for a in self.anchors]
        self.proofs = proofs
        self.party_keys = party_keys
        self.node = node
        first_entry = min(self.entries) if self.entries else 1
        self.lo = from_seq if from_seq is not None else first_entry
        if to_seq is not None:
            self.hi = to_seq
        else:
            last_entry = max(self.entries) if self.entries else 0
            last_anchor = self.anchors[-1].to_seq if self.anchors else 0
            self.hi = max(last_entry, last_anchor)
        self.truncated = truncated
        self.checked = 0
        self.anchored = 0

    def run(self) -> NodeVerdict:
        try:
            self._check_anchors()
            self._check_entries()
        except _Failure as failure:
            return NodeVerdict(
                False, self.checked, self.anchored, failure.seq, failure.reason
            )
        return NodeVerdict(
            True,
            self.checked,
            self.anchored,
            None,
            f"verified {self.checked} entries ({self.lo}..{self.hi}), "
            f"{self.anchored} of them under {len(self._anchors_in_range())} anchors",
        )

    def _anchors_in_range(self) -> list[AnchorLike]:
        return [
            a for a in self.anchors if a.to_seq >= self.lo and a.from_seq <= self.hi
        ]

    def _check_anchors(self) -> None:
        previous = None
        for anchor in self.anchors:
            if anchor.from_seq < 1 or anchor.to_seq < anchor.from_seq:
                raise _Failure(
                    None, f"anchor range {anchor.from_seq}..{anchor.to_seq} is invalid"
                )
            if anchor.count != anchor.to_seq - anchor.from_seq + 1:
                raise _Failure(
                    None,
                    f"anchor {anchor.from_seq}..{anchor.to_seq} has count "
                    f"{anchor.count}, not {anchor.to_seq - anchor.from_seq + 1}",
                )
            if previous is not None and anchor.from_seq != previous.to_seq + 1:
                raise _Failure(
                    None,
                    f"anchors {previous.from_seq}..{previous.to_seq} and "
                    f"{anchor.from_seq}..{anchor.to_seq} are not consecutive; pass "
                    f"all of the node's anchors",
                )
            anchor_node = getattr(anchor, "node", None)
            if self.node and anchor_node is not None and str(anchor_node) != self.node:
                raise _Failure(
                    None,
                    f"the segment is of node {self.node!r} but anchor "
                    f"{anchor.from_seq}..{anchor.to_seq} is of node {anchor_node!r}",
                )
            previous = anchor

    def _anchor_for(self, seq: int) -> AnchorLike | None:
        index = bisect.bisect_right(self.starts, seq) - 1
        if index >= 0 and self.anchors[index].to_seq >= seq:
            return self.anchors[index]
        return None

    def _check_entries(self) -> None:
        prev_hash = GENESIS_HASH if self.lo == 1 else None
        unproven = 0  # entries of the current anchor checked by rebuilding its root
        for seq in range(self.lo, self.hi + 1):
            entry = self.entries.get(seq)
            if entry is None:
                raise _Failure(seq, f"entry {seq} is missing")
            self._check_entry(entry, prev_hash)
            prev_hash = entry.entry_hash
            self.checked += 1
            anchor = self._anchor_for(seq)
            proof = self.proofs.get(seq)
            if anchor is None:
                # A truncated file may have lost the anchor lines after its defect.
                if proof is not None and not self.truncated:
                    raise _Failure(
                        seq,
                        f"entry {seq} carries a proof for batch {proof.from_seq}.."
                        f"{proof.to_seq}, but no anchor covers it",
                    )
                continue
            if proof is not None:
                if not verify_event_proof(entry.entry_hash, proof, anchor):
                    raise _Failure(
                        seq,
                        f"entry {seq}'s inclusion proof does not verify against the "
                        f"root anchored for {anchor.from_seq}..{anchor.to_seq}",
                    )
                self.anchored += 1
            elif anchor.from_seq >= self.lo and anchor.to_seq <= self.hi:
                unproven += 1
            elif self.truncated:
                continue
            else:
                raise _Failure(
                    seq,
                    f"entry {seq} has no inclusion proof and the input contains only "
                    f"part of anchored batch {anchor.from_seq}..{anchor.to_seq}",
                )
            if seq == anchor.to_seq and unproven:
                self._check_root(anchor)
                self.anchored += unproven
                unproven = 0

    def _check_root(self, anchor: AnchorLike) -> None:
        leaves = [
            self.entries[seq].entry_hash
            for seq in range(anchor.from_seq, anchor.to_seq + 1)
        ]
        if MerkleTree(leaves).root != bytes(anchor.root):
            raise _Failure(
                anchor.from_seq,
                f"entries {anchor.from_seq}..{anchor.to_seq} do not produce the "
                f"anchored root {bytes(anchor.root).hex()}; without inclusion proofs "
                f"the changed entry cannot be located more closely",
            )

    def _check_entry(self, entry: LogEntry, prev_hash: bytes | None) -> None:
        seq = entry.seq
        if event_hash(entry.event) != entry.event_hash:
            raise _Failure(seq, f"entry {seq}'s event does not hash to its event hash")
        if prev_hash is not None and entry.prev_hash != prev_hash:
            raise _Failure(
                seq, f"entry {seq}'s previous hash is not entry {seq - 1}'s hash"
            )
        if chain_hash(entry.prev_hash, seq, entry.event_hash) != entry.entry_hash:
            raise _Failure(seq, f"entry {seq}'s entry hash does not match its fields")
        failed = invalid_signers(entry.event)
        if failed:
            raise _Failure(
                seq, f"entry {seq} has an invalid signature by key {failed[0]}"
            )
        if self.party_keys is not None and entry.event.kind in RECEIPT_KINDS:
            for role in ("provider", "consumer"):
                party = getattr(entry.event, role)
                key = self.party_keys.get(party)
                if key is None:
                    raise _Failure(
                        seq, f"entry {seq}: no public key is known for {role} {party!r}"
                    )
                if bytes(key).hex() not in entry.event.signatures:
                    raise _Failure(
                        seq, f"entry {seq} lacks the signature of {role} {party!r}"
                    )
