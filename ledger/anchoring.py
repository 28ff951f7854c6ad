"""Anchoring: Merkle roots of a node's new log entries, sent to the chain in order.

Crash safety comes from the order of durable steps:

1. the batch (range, root and leaf hashes) is committed to the log file as pending;
2. the anchor transaction is sent;
3. after the receipt, the batch is marked anchored.

A crash between 1 and 3 leaves a pending batch. The next call reconciles it with the
chain's last anchored seq for the node: if the chain already has the batch's range,
the anchor there must carry the recorded root, and the batch is marked anchored; else
the batch is checked against the stored entries again and re-sent. A batch whose root
no longer matches the stored entries is never sent. While the chain is unreachable the
pending batch waits and new events queue behind it, so batches reach the chain in
sequence order when it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from citymesh.errors import ChainError, InvalidInput

from .chain_errors import (
    AnchorOutOfSequence,
    ChainUnavailable,
    ReceiptTimeout,
    TransactionReverted,
)
from .log import Batch, LogIntegrityError, UsageLog
from .merkle import MerkleTree

logger = logging.getLogger("citymesh.ledger")

DEFAULT_BATCH_SIZE = 10_000
DEFAULT_MAX_DELAY_S = 60.0
MAX_RETRY_DELAY_S = 60.0


class AnchorChain(Protocol):
    """The chain calls the anchorer makes; ``chain.ChainClient`` provides them."""

    @property
    def account(self) -> str | None: ...

    def anchor(self, root: bytes, from_seq: int, to_seq: int, count: int) -> str: ...

    def anchors(self, node_account: str) -> Sequence[Any]: ...

    def last_anchored_seq(self, node_account: str) -> int: ...


class AnchorMismatch(ChainError):
    """The chain's anchors for this node disagree with the batches in the log."""


class Anchorer:
    """Anchors a UsageLog's entries in batches through a chain client.

    A batch is due when ``batch_size`` entries wait or the oldest waiting entry is
    ``max_delay_s`` old (by its event time). Instances keep no state of their own, so
    a fresh Anchorer per call, or one per process, behaves the same.
    """

    def __init__(
        self,
        log: UsageLog,
        chain: AnchorChain,
        *,
        account: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be at least 1, got {batch_size!r}")
        node_account = account if account is not None else chain.account
        if not node_account:
            raise InvalidInput(
                "the anchorer needs the node's chain account: pass account= or a "
                "ChainClient created with the node's private key"
            )
        self.log = log
        self.chain = chain
        self.account = node_account
        self.batch_size = batch_size
        self.max_delay_s = max_delay_s
        self._clock = clock

    # -- decisions ------------------------------------------------------------------

    def waiting(self) -> int:
        """Return how many entries no batch covers yet."""
        last = self.log.last_batch()
        return self.log.head() - (last.to_seq if last else 0)

    def due(self) -> bool:
        """Return True when a batch is pending or a new one should be made now."""
        last = self.log.last_batch()
        if last is not None and last.state == "pending":
            return True
        next_seq = (last.to_seq if last else 0) + 1
        waiting = self.log.head() - next_seq + 1
        if waiting <= 0:
            return False
        if waiting >= self.batch_size:
            return True
        oldest = self.log.entry(next_seq).event.time
        return self._clock() - oldest >= self.max_delay_s

    # -- anchoring ------------------------------------------------------------------

    def reconcile(self) -> None:
        """Bring the log's batch states in line with the chain.

        Raises ChainUnavailable when the chain cannot be reached, and AnchorMismatch
        when the chain has anchors this log did not make or a different root.
        """
        chain_last = self.chain.last_anchored_seq(self.account)
        anchored = self.log.batches("anchored")
        local_last = anchored[-1].to_seq if anchored else 0
        if chain_last == local_last:
            return
        pending = self.log.batches("pending")
        if pending and chain_last == pending[0].to_seq:
            self._adopt(pending[0])
            return
        raise AnchorMismatch(
            f"the chain's last anchored seq for {self.account} is {chain_last}, but "
            f"the usage log {str(self.log.path)!r} has anchored up to {local_last}"
            f"{f' and a pending batch up to {pending[0].to_seq}' if pending else ''}; "
            f"the log and the chain account or deployment do not belong together"
        )

    def _adopt(self, batch: Batch) -> None:
        """Mark a pending batch anchored after finding its anchor on chain."""
        for anchor in self.chain.anchors(self.account):
            if anchor.from_seq != batch.from_seq:
                continue
            if anchor.to_seq == batch.to_seq and bytes(anchor.root) == batch.root:
                self.log.mark_anchored(batch.from_seq, anchor.tx)
                logger.info(
                    "batch %d..%d was anchored before a restart (tx %s)",
                    batch.from_seq,
                    batch.to_seq,
                    anchor.tx,
                )
                return
            raise AnchorMismatch(
                f"the chain has root {bytes(anchor.root).hex()} for seqs "
                f"{anchor.from_seq}..{anchor.to_seq} of {self.account}, but the log "
                f"recorded root {batch.root.hex()} for {batch.from_seq}..{batch.to_seq}"
            )
        raise AnchorMismatch(
            f"the chain reports seqs up to {batch.to_seq} anchored for {self.account} "
            f"but has no anchor starting at {batch.from_seq}"
        )

    def anchor_pending(self, max_events: int | None = None) -> Batch | None:
        """Anchor the next batch, at most ``max_events`` entries (default batch_size).

        Returns the anchored batch, or None when nothing waits, when the chain is
        unreachable (the batch then stays pending for the next call), or when another
        process recorded the next batch first. A pending batch from an earlier call or
        process goes first, with its recorded range.
        Raises LogIntegrityError instead of anchoring a root that the stored entries
        no longer produce.
        """
        limit = self.batch_size if max_events is None else max_events
        if limit < 1:
            raise InvalidInput(f"max_events must be at least 1, got {max_events!r}")
        try:
            self.reconcile()
        except (ChainUnavailable, ReceiptTimeout) as exc:
            logger.warning("chain unreachable, anchoring later: %s", exc)
            return None
        batch = self._pending_or_new(limit)
        if batch is None:
            return None
        return self._send(batch)

    def anchor_all(self, max_events: int | None = None) -> list[Batch]:
        """Anchor batches until no entry waits or the chain is unreachable."""
        done = []
        while True:
            batch = self.anchor_pending(max_events)
            if batch is None:
                return done
            done.append(batch)

    def _pending_or_new(self, limit: int) -> Batch | None:
        last = self.log.last_batch()
        if last is not None and last.state == "pending":
            leaves = self.log.verified_entry_hashes(last.from_seq, last.to_seq)
            if MerkleTree(leaves).root != last.root:
                raise LogIntegrityError(
                    f"usage log {str(self.log.path)!r} entries {last.from_seq}.."
                    f"{last.to_seq} no longer produce the pending batch's root "
                    f"{last.root.hex()}; the log changed after the batch was recorded",
                    last.from_seq,
                )
            return last
        from_seq = (last.to_seq if last else 0) + 1
        head = self.log.head()
        if head < from_seq:
            return None
        to_seq = min(head, from_seq + limit - 1)
        leaves = self.log.verified_entry_hashes(from_seq, to_seq)
        root = MerkleTree(leaves).root
        return self.log.add_batch(from_seq, to_seq, root, leaves)

    def _send(self, batch: Batch) -> Batch | None:
        try:
            tx = self.chain.anchor(
                batch.root, batch.from_seq, batch.to_seq, batch.count
            )
        except (ChainUnavailable, ReceiptTimeout) as exc:
            logger.warning(
                "anchoring batch %d..%d failed, it stays pending: %s",
                batch.from_seq,
                batch.to_seq,
                exc,
            )
            return None
        except TransactionReverted as exc:
            if not _maybe_sent_before(exc):
                raise
            # A send from an earlier attempt or another process may have landed.
            self.reconcile()
            current = self.log.batch_containing(batch.from_seq)
            if current is None or current.state != "anchored":
                raise
            return current
        self.log.mark_anchored(batch.from_seq, tx)
        logger.info(
            "anchored batch %d..%d (%d events) root %s tx %s",
            batch.from_seq,
            batch.to_seq,
            batch.count,
            batch.root.hex(),
            tx,
        )
        return self.log.batch_containing(batch.from_seq)

    # -- service loop ---------------------------------------------------------------

    def run(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        """Anchor due batches until ``stop`` is set, retrying an unreachable chain.

        Waits double after each failed attempt, up to MAX_RETRY_DELAY_S.
        """
        logger.info("anchorer started for %s on %s", self.account, self.log.path)
        delay = poll_s
        while not stop.is_set():
            try:
                if not self.due():
                    delay = poll_s
                elif self.anchor_pending() is not None:
                    delay = poll_s
                    continue
                else:
                    delay = min(delay * 2, MAX_RETRY_DELAY_S)
            except ChainError as exc:
                logger.error("anchoring failed for %s: %s", self.account, exc)
                delay = min(delay * 2, MAX_RETRY_DELAY_S)
            stop.wait(delay)
        logger.info("anchorer stopped for %s", self.account)


def _maybe_sent_before(exc: TransactionReverted) -> bool:
    return isinstance(exc, AnchorOutOfSequence) or exc.error == "RootAlreadyAnchored"
