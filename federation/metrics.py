"""Pooled AUC and accuracy from per-city score histograms.

A city never sends its test rows or scores, only two histograms of predicted
probabilities over fixed bins: one for positive rows and one for negative rows.
Summing the histograms over cities gives the pooled ROC curve at bin resolution.
Scores that fall in the same bin count as ties (half a correct pair), so the AUC from
histograms differs from the exact AUC by at most the share of pairs that share a bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HISTOGRAM_BINS = 1000


@dataclass(frozen=True)
class ScoreHistogram:
    """Counts of predicted probabilities per bin, for positive and negative rows."""

    positive: np.ndarray
    negative: np.ndarray

    @classmethod
    def from_scores(
        cls, scores: np.ndarray, labels: np.ndarray, bins: int = HISTOGRAM_BINS
    ) -> ScoreHistogram:
        """Bin probabilities in [0, 1] into ``bins`` equal-width bins."""
        index = np.clip((np.asarray(scores) * bins).astype(np.int64), 0, bins - 1)
        positive_rows = np.asarray(labels) > 0.5
        positive = np.bincount(index[positive_rows], minlength=bins)
        negative = np.bincount(index[~positive_rows], minlength=bins)
        return cls(positive.astype(np.int64), negative.astype(np.int64))

    def __add__(self, other: ScoreHistogram) -> ScoreHistogram:
        return ScoreHistogram(
            self.positive + other.positive, self.negative + other.negative
        )

    @property
    def rows(self) -> int:
        return int(self.positive.sum() + self.negative.sum())

    def auc(self) -> float:
        """Return the area under the ROC curve, or NaN when a class is absent."""
        positives = float(self.positive.sum())
        negatives = float(self.negative.sum())
        if positives == 0 or negatives == 0:
            return float("nan")
        negatives_below = np.cumsum(self.negative) - self.negative
        correct = self.positive * (negatives_below + 0.5 * self.negative)
        return float(correct.sum() / (positives * negatives))

    def accuracy(self, threshold: float = 0.5) -> float:
        """Return the share of rows classified right at ``score >= threshold``."""
        if self.rows == 0:
            return float("nan")
        cut = round(threshold * len(self.positive))
        right = self.positive[cut:].sum() + self.negative[:cut].sum()
        return float(right / self.rows)


def sum_histograms(parts: list[ScoreHistogram]) -> ScoreHistogram:
    """Pool the histograms of several cities."""
    if not parts:
        raise ValueError("cannot pool an empty list of histograms")
    pooled = parts[0]
    for part in parts[1:]:
        pooled = pooled + part
    return pooled
