import numpy as np
import pandas as pd
import pytest

from citymesh.errors import InvalidInput
from citymesh.federation import FeatureSpec
from citymesh.federation.encoding import local_statistics, merge_statistics

FEATURES = FeatureSpec(categorical=("carrier", "month"), numeric=("distance",))


def test_merged_scaling_equals_pooled_rows() -> None:
    first = pd.DataFrame(
        {"carrier": ["AA", "UA"], "month": [1, 2], "distance": [100, 300]}
    )
    second = pd.DataFrame({"carrier": ["B6"], "month": [2], "distance": [800]})
    encoding = merge_statistics(
        FEATURES,
        [local_statistics(first, FEATURES), local_statistics(second, FEATURES)],
    )
    pooled = np.array([100.0, 300.0, 800.0])
    mean, std = encoding.scaling["distance"]
    assert mean == pytest.approx(pooled.mean())
    assert std == pytest.approx(pooled.std())
    assert encoding.categories["carrier"] == ("AA", "B6", "UA")
    assert encoding.categories["month"] == ("1", "2")


def test_encode_one_hot_and_scaled() -> None:
    frame = pd.DataFrame(
        {"carrier": ["UA", "ZZ"], "month": [2, 1], "distance": [300, None]}
    )
    spec = FeatureSpec(
        categorical=("carrier", "month"),
        numeric=("distance",),
        categories={"carrier": ("AA", "UA"), "month": ("1", "2")},
        scaling={"distance": (100.0, 200.0)},
    )
    encoding = merge_statistics(spec, [])
    matrix = encoding.encode(frame)
    assert encoding.width == 5
    assert matrix.dtype == np.float32
    assert matrix[0].tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]
    # An unknown carrier encodes as all zeros; a missing distance as the mean.
    assert matrix[1].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_float_categories_match_integer_ones() -> None:
    spec = FeatureSpec(categorical=("month",), numeric=(), categories={"month": ("7",)})
    encoding = merge_statistics(spec, [])
    frame = pd.DataFrame({"month": [7.0, np.nan]})
    assert encoding.encode(frame)[:, 0].tolist() == [1.0, 0.0]


def test_encoding_json_round_trip() -> None:
    frame = pd.DataFrame({"carrier": ["AA"], "month": [3], "distance": [10]})
    encoding = merge_statistics(FEATURES, [local_statistics(frame, FEATURES)])
    assert type(encoding).from_json(encoding.to_json()) == encoding


def test_column_without_values_rejected() -> None:
    frame = pd.DataFrame({"carrier": [None], "month": [1], "distance": [5]})
    with pytest.raises(InvalidInput, match="'carrier' has no value"):
        merge_statistics(FEATURES, [local_statistics(frame, FEATURES)])
