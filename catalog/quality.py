"""Quality report per dataset and column, computed while batches stream past.

Per column the report gives completeness (the non-null share) and uniqueness
(the distinct share of non-null values). It also gives validity, the share of
non-null values that are usable: finite numbers and non-blank strings, while
every other type counts as valid once it parsed to its column type. Numeric
columns add min, max, mean, standard deviation and outliers.

Distinct counts are exact up to ``DISTINCT_SKETCH`` distinct values and estimated
above that with a k-minimum-values sketch over 64-bit hashes, so memory stays flat
whatever the number of rows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DISTINCT_SKETCH = 4096
OUTLIER_SIGMAS = 4.0
HASH_SPACE = float(2**64)


class _ColumnStats:
    def __init__(self, name: str, arrow_type: pa.DataType) -> None:
        self.name = name
        self.type = arrow_type
        self.rows = 0
        self.nulls = 0
        self.invalid = 0
        self.sketch = np.empty(0, dtype=np.uint64)
        self.hashable = not (
            pa.types.is_nested(arrow_type) or pa.types.is_dictionary(arrow_type)
        )
        self.numeric = pa.types.is_integer(arrow_type) or pa.types.is_floating(
            arrow_type
        )
        self.ordered = self.numeric or pa.types.is_temporal(arrow_type)
        self.minimum: Any = None
        self.maximum: Any = None
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def update(self, column: pa.Array) -> None:
        self.rows += len(column)
        self.nulls += column.null_count
        values = column.drop_null()
        if len(values) == 0:
            return
        if pa.types.is_floating(self.type):
            finite = pc.is_finite(values)
            self.invalid += len(values) - pc.sum(finite).as_py()
            values = values.filter(finite)
        elif pa.types.is_string(self.type) or pa.types.is_large_string(self.type):
            blank = pc.equal(pc.utf8_trim_whitespace(values), "")
            self.invalid += pc.sum(blank).as_py() or 0
        if len(values) == 0:
            return
        if self.hashable:
            self._update_sketch(values)
        if self.ordered:
            bounds = pc.min_max(values)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            self.minimum = low if self.minimum is None else min(self.minimum, low)
            self.maximum = high if self.maximum is None else max(self.maximum, high)
        if self.numeric:
            self._update_moments(values)

    def _update_sketch(self, values: pa.Array) -> None:
        array = values.to_numpy(zero_copy_only=False)
        hashes = pd.util.hash_array(array).astype(np.uint64)
        if len(self.sketch) >= DISTINCT_SKETCH:
            hashes = hashes[hashes < self.sketch[-1]]
        merged = np.unique(np.concatenate([self.sketch, hashes]))
        self.sketch = merged[:DISTINCT_SKETCH]

    def _update_moments(self, values: pa.Array) -> None:
        data = values.to_numpy(zero_copy_only=False).astype(np.float64)
        count = len(data)
        batch_mean = float(data.mean())
        batch_m2 = float(((data - batch_mean) ** 2).sum())
        total = self.count + count
        delta = batch_mean - self.mean
        self.mean += delta * count / total
        self.m2 += batch_m2 + delta * delta * self.count * count / total
        self.count = total

    def distinct(self) -> tuple[int | None, bool]:
        if not self.hashable:
            return None, False
        if len(self.sketch) < DISTINCT_SKETCH:
            return len(self.sketch), True
        estimate = (DISTINCT_SKETCH - 1) * HASH_SPACE / float(self.sketch[-1])
        present = self.rows - self.nulls - self.invalid
        return int(min(round(estimate), present)), False

    def report(self) -> dict[str, Any]:
        present = self.rows - self.nulls
        distinct, exact = self.distinct()
        entry: dict[str, Any] = {
            "type": str(self.type),
            "nulls": self.nulls,
            "completeness": _ratio(present, self.rows),
            "invalid": self.invalid,
            "validity": _ratio(present - self.invalid, present),
            "distinct": distinct,
            "distinct_exact": exact,
            "uniqueness": None if distinct is None else _ratio(distinct, present),
        }
        if self.ordered:
            entry["min"] = _plain(self.minimum)
            entry["max"] = _plain(self.maximum)
        if self.numeric and self.count:
            entry["mean"] = self.mean
            entry["std"] = math.sqrt(self.m2 / self.count)
        return entry


def _ratio(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, int | float | str | bool):
        return value
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


class QualityAccumulator:
    """Collects column statistics batch by batch; ``report()`` returns the result."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.rows = 0
        self.columns = [_ColumnStats(field.name, field.type) for field in schema]

    def update(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        for stats, column in zip(self.columns, batch.columns, strict=True):
            stats.update(column)

    def report(self) -> dict[str, Any]:
        columns = {stats.name: stats.report() for stats in self.columns}
        cells = self.rows * len(self.columns)
        nulls = sum(stats.nulls for stats in self.columns)
        return {
            "rows": self.rows,
            "completeness": _ratio(cells - nulls, cells),
            "outlier_rule": f"|x - mean| > {OUTLIER_SIGMAS:g} * std",
            "columns": columns,
        }


def count_outliers(parquet_path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Add an ``outliers`` count to each numeric column of ``report``.

    Reads only the numeric columns of the written Parquet file, one row group at
    a time, because the mean and standard deviation are known only after the
    first pass.
    """
    bounds = {}
    for name, entry in report["columns"].items():
        std = entry.get("std")
        if std is not None:
            bounds[name] = (
                entry["mean"] - OUTLIER_SIGMAS * std,
                entry["mean"] + OUTLIER_SIGMAS * std,
            )
            entry["outliers"] = 0
    if not bounds:
        return report
    parquet = pq.ParquetFile(parquet_path)
    for batch in parquet.iter_batches(columns=list(bounds), batch_size=65_536):
        for name, (low, high) in bounds.items():
            values = batch.column(name)
            outside = pc.or_(pc.less(values, low), pc.greater(values, high))
            report["columns"][name]["outliers"] += pc.sum(outside).as_py() or 0
    return report
