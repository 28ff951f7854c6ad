"""The centralized baseline: the same model and features, trained on the pooled rows.

It pools the cities' train splits, which a federated job never does, to measure what
federation costs. The encoding is the one the federated statistics step produces,
the split is each city's own, and the model sees the rows as many times as in the
federated job (rounds x local epochs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from .data import CitySplit, read_city
from .encoding import FeatureEncoding, local_statistics, merge_statistics
from .metrics import ScoreHistogram
from .model import build_model, predict_scores, train_epochs
from .spec import JobSpec


@dataclass(frozen=True)
class BaselineResult:
    """Scores of the centralized model on the union of the cities' test splits.

    ``auc`` comes from score histograms, as the federated AUC does; ``auc_exact``
    is scikit-learn's AUC on the same scores.
    """

    auc: float
    accuracy: float
    auc_exact: float
    train_rows: int
    test_rows: int
    seconds: float


def shared_encoding(spec: JobSpec, splits: dict[str, CitySplit]) -> FeatureEncoding:
    """Return the encoding the federated statistics step would produce."""
    parts = [local_statistics(s.train, spec.features) for s in splits.values()]
    return merge_statistics(spec.features, parts)


def train_centralized(spec: JobSpec, datasets: dict[str, Path]) -> BaselineResult:
    """Train the spec's model on the union of the cities' train splits."""
    started = time.perf_counter()
    splits = {city: read_city(path, spec) for city, path in sorted(datasets.items())}
    encoding = shared_encoding(spec, splits)
    train_x = np.vstack([encoding.encode(s.train) for s in splits.values()])
    train_y = np.concatenate([s.train_labels for s in splits.values()])
    test_x = np.vstack([encoding.encode(s.test) for s in splits.values()])
    test_y = np.concatenate([s.test_labels for s in splits.values()])

    model = build_model(spec.model, encoding.width, seed=spec.seed)
    epochs = spec.rounds * spec.model.local_epochs
    train_epochs(model, train_x, train_y, spec.model, seed=spec.seed, epochs=epochs)
    scores = predict_scores(model, test_x)
    histogram = ScoreHistogram.from_scores(scores, test_y)
    exact = roc_auc_score(test_y, scores) if 0 < test_y.sum() < len(test_y) else np.nan
    return BaselineResult(
        auc=histogram.auc(),
        accuracy=histogram.accuracy(),
        auc_exact=float(exact),
        train_rows=len(train_y),
        test_rows=len(test_y),
        seconds=time.perf_counter() - started,
    )
