"""Feature encoding shared by every city: one-hot categories and standardized numbers.

Every city must encode its rows the same way, or the averaged weights would mean
different things in different cities. The vocabulary and the scaling come from the
job spec or from a federated statistics step. In that step each city reports, for
its train split, the set of values of each categorical column and the count, sum
and sum of squares of each numeric column. ``merge_statistics`` combines these
aggregates, and no row leaves a city.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from citymesh.errors import InvalidInput

from .spec import FeatureSpec


@dataclass(frozen=True)
class ColumnStatistics:
    """One city's aggregates over its train split."""

    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)
    total_squares: dict[str, float] = field(default_factory=dict)


def local_statistics(frame: pd.DataFrame, features: FeatureSpec) -> ColumnStatistics:
    """Compute a city's aggregates for the columns its encoding still lacks."""
    categories = {
        column: tuple(sorted(_as_text(frame[column]).dropna().unique()))
        for column in features.categorical
        if column not in features.categories
    }
    count: dict[str, int] = {}
    total: dict[str, float] = {}
    total_squares: dict[str, float] = {}
    for column in features.numeric:
        if column in features.scaling:
            continue
        values = pd.to_numeric(frame[column], errors="coerce").dropna()
        values = values.to_numpy(np.float64)
        count[column] = int(values.size)
        total[column] = float(values.sum())
        total_squares[column] = float(np.square(values).sum())
    return ColumnStatistics(categories, count, total, total_squares)


def merge_statistics(
    features: FeatureSpec, parts: list[ColumnStatistics]
) -> FeatureEncoding:
    """Combine the cities' aggregates with the spec's fixed encoding."""
    categories = dict(features.categories)
    for column in features.categorical:
        if column in categories:
            continue
        values: set[str] = set()
        for part in parts:
            values.update(part.categories.get(column, ()))
        if not values:
            raise InvalidInput(
                f"categorical column {column!r} has no value in any city"
            )
        categories[column] = tuple(sorted(values))

    scaling = dict(features.scaling)
    for column in features.numeric:
        if column in scaling:
            continue
        count = sum(part.count.get(column, 0) for part in parts)
        if count == 0:
            raise InvalidInput(f"numeric column {column!r} has no value in any city")
        total = sum(part.total.get(column, 0.0) for part in parts)
        squares = sum(part.total_squares.get(column, 0.0) for part in parts)
        mean = total / count
        variance = max(squares / count - mean * mean, 0.0)
        std = math.sqrt(variance) or 1.0
        scaling[column] = (mean, std)

    return FeatureEncoding(
        categorical=features.categorical,
        numeric=features.numeric,
        categories={c: tuple(categories[c]) for c in features.categorical},
        scaling={c: scaling[c] for c in features.numeric},
    )


@dataclass(frozen=True)
class FeatureEncoding:
    """The fixed map from a city's rows to the model's input matrix."""

    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    categories: dict[str, tuple[str, ...]]
    scaling: dict[str, tuple[float, float]]

    @property
    def width(self) -> int:
        """Number of model inputs."""
        one_hot = sum(len(self.categories[c]) for c in self.categorical)
        return one_hot + len(self.numeric)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Encode rows as float32. Unknown categories and missing numbers become 0."""
        blocks: list[np.ndarray] = []
        for column in self.categorical:
            vocabulary = pd.Index(self.categories[column])
            codes = vocabulary.get_indexer(_as_text(frame[column]))
            block = np.zeros((len(frame), len(vocabulary)), dtype=np.float32)
            known = codes >= 0
            block[np.flatnonzero(known), codes[known]] = 1.0
            blocks.append(block)
        for column in self.numeric:
            mean, std = self.scaling[column]
            values = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64)
            scaled = np.nan_to_num((values - mean) / std, nan=0.0)
            blocks.append(scaled.astype(np.float32).reshape(-1, 1))
        return np.hstack(blocks) if blocks else np.zeros((len(frame), 0), np.float32)

    def to_dict(self) -> dict[str, object]:
        """Return the encoding as JSON-compatible data."""
        return {
            "categorical": list(self.categorical),
            "numeric": list(self.numeric),
            "categories": {k: list(v) for k, v in self.categories.items()},
            "scaling": {k: list(v) for k, v in self.scaling.items()},
        }

    def to_json(self) -> str:
        """Return the encoding as JSON text."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureEncoding:
        """Parse the output of to_json."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FeatureEncoding:
        """Parse the output of to_dict."""
        categories = dict(data["categories"])  # type: ignore[call-overload]
        scaling = dict(data["scaling"])  # type: ignore[call-overload]
        return cls(
            categorical=tuple(data["categorical"]),  # type: ignore[arg-type]
            numeric=tuple(data["numeric"]),  # type: ignore[arg-type]
            categories={k: tuple(v) for k, v in categories.items()},
            scaling={k: (float(v[0]), float(v[1])) for k, v in scaling.items()},
        )


def _as_text(column: pd.Series) -> pd.Series:
    """Return categorical values as strings, so 7 and "7" are the same category."""
    if pd.api.types.is_float_dtype(column):
        whole = column.dropna()
        if (whole == whole.round()).all():
            column = column.astype("Int64")
    return column.astype("string")
