"""Settle a federated job's credit budget on chain.

A settlement pays each city its share of the job's budget as ERC-20 credits. It names
the anchored Merkle roots of the usage it pays for, and the credit contract reverts
when a root was paid before, so no usage is paid twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from citymesh.errors import InvalidInput
from citymesh.incentives.payout import blend_scores, payout_memo, split_budget

logger = logging.getLogger("citymesh.incentives")

__all__ = ["settle_job"]


def settle_job(
    chain: Any,
    *,
    epoch: int,
    job_id: str,
    model_hash: str,
    rows: Mapping[str, int],
    loo_gain: Mapping[str, float],
    budget: int,
    accounts: Mapping[str, str],
) -> dict[str, Any]:
    """Split ``budget`` by contribution, settle it on chain and return what was paid.

    ``chain`` is a ChainClient holding the settler role; ``accounts`` maps each city to
    its ledger account. The settlement pays for every anchored root of those
    accounts that no earlier settlement paid.
    """
    missing = sorted(set(rows) - set(accounts))
    if missing:
        raise InvalidInput(f"no ledger account given for cities {missing!r}")
    scores = blend_scores(rows, loo_gain)
    payouts = split_budget(scores, budget)
    anchored = [a.root for city in sorted(rows) for a in chain.anchors(accounts[city])]
    roots = [root for root in anchored if chain.paid_epoch(root) is None]
    if not roots:
        raise InvalidInput(
            f"job {job_id!r} has no unpaid anchored usage to pay for; anchor the "
            "nodes' new events first"
        )
    memo = payout_memo(job_id, model_hash, payouts)
    tx = chain.settle(
        epoch,
        roots,
        [accounts[p.city] for p in payouts],
        [p.amount for p in payouts],
        memo,
    )
    balances = {p.city: chain.balance_of(accounts[p.city]) for p in payouts}
    logger.info("settled job %s in epoch %s: tx %s", job_id, epoch, tx)
    return {
        "epoch": epoch,
        "tx": tx,
        "budget": budget,
        "total": sum(p.amount for p in payouts),
        "amounts": {p.city: p.amount for p in payouts},
        "scores": {p.city: p.score for p in payouts},
        "balances": balances,
        "roots": [root.hex() for root in roots],
        "memo": memo.hex(),
        "total_supply": chain.total_supply(),
    }
