import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from citymesh.federation.metrics import ScoreHistogram, sum_histograms


def scored_rows(seed: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < 0.25).astype(np.float32)
    scores = 1 / (1 + np.exp(-(rng.normal(size=rows) + labels - 1.2)))
    return scores, labels


def test_histogram_auc_matches_exact_auc() -> None:
    scores, labels = scored_rows(0, 20_000)
    histogram = ScoreHistogram.from_scores(scores, labels)
    assert histogram.auc() == pytest.approx(roc_auc_score(labels, scores), abs=1e-3)


def test_histogram_accuracy_matches_threshold() -> None:
    scores, labels = scored_rows(1, 5_000)
    histogram = ScoreHistogram.from_scores(scores, labels)
    expected = accuracy_score(labels, scores >= 0.5)
    assert histogram.accuracy() == pytest.approx(expected, abs=1e-9)


def test_pooled_histograms_equal_pooled_rows() -> None:
    first_scores, first_labels = scored_rows(2, 3_000)
    second_scores, second_labels = scored_rows(3, 7_000)
    pooled = sum_histograms(
        [
            ScoreHistogram.from_scores(first_scores, first_labels),
            ScoreHistogram.from_scores(second_scores, second_labels),
        ]
    )
    direct = ScoreHistogram.from_scores(
        np.concatenate([first_scores, second_scores]),
        np.concatenate([first_labels, second_labels]),
    )
    assert pooled.rows == 10_000
    assert np.array_equal(pooled.positive, direct.positive)
    assert pooled.auc() == direct.auc()


def test_histogram_auc_single_class_is_nan() -> None:
    histogram = ScoreHistogram.from_scores(np.array([0.2, 0.7]), np.array([1.0, 1.0]))
    assert np.isnan(histogram.auc())


def test_histogram_perfect_ranking_auc_one() -> None:
    histogram = ScoreHistogram.from_scores(
        np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.0, 0.0, 1.0, 1.0])
    )
    assert histogram.auc() == 1.0
    assert histogram.accuracy() == 1.0
