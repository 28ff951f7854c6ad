"""Federated training across cities with Flower's Message API.

A job spec (TOML) names the cities' datasets, features, target, model and rounds;
``run_job`` runs Flower's ServerApp (FedAvg) with one ClientApp per city, each of
which reads only its own Parquet file. ``train_centralized`` is the pooled baseline.
"""

from .centralized import BaselineResult, train_centralized
from .contributions import Contribution
from .data import flights_csv_path, load_flights, read_city, split_flights
from .runner import CityMetrics, JobResult, RoundMetrics, read_result, run_job
from .spec import FeatureSpec, JobSpec, ModelSpec, PrivacySpec, TargetSpec

__all__ = [
    "BaselineResult",
    "CityMetrics",
    "Contribution",
    "FeatureSpec",
    "JobResult",
    "JobSpec",
    "ModelSpec",
    "PrivacySpec",
    "RoundMetrics",
    "TargetSpec",
    "flights_csv_path",
    "load_flights",
    "read_city",
    "read_result",
    "run_job",
    "split_flights",
    "train_centralized",
]
