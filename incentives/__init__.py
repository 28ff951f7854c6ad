"""Contribution incentives: split budgets by contribution, settle credits on chain."""

from citymesh.incentives.payout import Payout, blend_scores, payout_memo, split_budget
from citymesh.incentives.settlement import settle_job

__all__ = ["Payout", "blend_scores", "payout_memo", "settle_job", "split_budget"]
