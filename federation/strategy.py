"""FedAvg that also keeps per-city records and rejects broken updates.

Aggregation is Flower's ``FedAvg`` (``flwr.serverapp.strategy``). This subclass only
filters the replies before Flower averages them, and records per round which city
trained on how many rows and how each city scored. Evaluation replies carry score
histograms, which ``pooled_evaluate_metrics`` sums into the pooled AUC and accuracy.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .client_app import METRICS_KEY, NODE_KEY, UNIT_WEIGHT_KEY, WEIGHT_KEY
from .metrics import ScoreHistogram, sum_histograms
from .privacy import make_accountant, release_event
from .spec import PrivacySpec

log = logging.getLogger("citymesh.federation")


def pooled_evaluate_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Pool the cities' score histograms into one AUC and accuracy."""
    histograms = [_histogram(record[METRICS_KEY]) for record in records]
    pooled = sum_histograms(histograms)
    return MetricRecord(
        {"auc": pooled.auc(), "accuracy": pooled.accuracy(), "rows": pooled.rows}
    )


def _histogram(metrics: MetricRecord) -> ScoreHistogram:
    return ScoreHistogram(
        np.asarray(metrics["hist-pos"], dtype=np.int64),
        np.asarray(metrics["hist-neg"], dtype=np.int64),
    )


@dataclass
class CityRound:
    """One city's part in one round."""

    train_rows: int = 0
    train_loss: float = float("nan")
    test_rows: int = 0
    auc: float = float("nan")
    accuracy: float = float("nan")


@dataclass
class RoundRecord:
    """The ServerApp's record of one round."""

    round: int
    started: float = 0.0
    seconds: float = 0.0
    auc: float = float("nan")
    accuracy: float = float("nan")
    cities: dict[str, CityRound] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    failures: int = 0
    epsilon: float | None = None


TrainHook = Callable[[str, int, int], None]
RoundHook = Callable[[RoundRecord], None]


class CityFedAvg(FedAvg):
    """Flower's FedAvg with per-city records and update screening.

    An update is rejected before averaging when any weight is NaN or infinite, or
    when its L2 distance from the global model exceeds ``max_update_norm``.
    With ``privacy`` set (differential privacy), updates are averaged with equal
    weights and each aggregated round is counted as one Gaussian release. The
    caller wraps this strategy in Flower's DP wrapper, which clips and adds the
    noise.
    """

    def __init__(
        self,
        *,
        min_nodes: int,
        fraction_train: float = 1.0,
        max_update_norm: float | None = None,
        on_train: TrainHook | None = None,
        on_round: RoundHook | None = None,
        privacy: PrivacySpec | None = None,
        cities: int = 0,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=1.0,
            min_train_nodes=min_nodes,
            min_evaluate_nodes=min_nodes,
            min_available_nodes=min_nodes,
            weighted_by_key=UNIT_WEIGHT_KEY if privacy else WEIGHT_KEY,
            evaluate_metrics_aggr_fn=pooled_evaluate_metrics,
        )
        self.privacy = privacy
        self.cities = cities
        self.accountant = make_accountant(privacy, cities) if privacy else None
        self.max_update_norm = max_update_norm
        self.on_train = on_train
        self.on_round = on_round
        self.rounds: dict[int, RoundRecord] = {}
        self._global: ArrayRecord | None = None

    def round_record(self, server_round: int) -> RoundRecord:
        """Return the record of ``server_round``, created on first use."""
        return self.rounds.setdefault(server_round, RoundRecord(round=server_round))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.round_record(server_round).started = time.perf_counter()
        self._global = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        record = self.round_record(server_round)
        accepted: list[Message] = []
        for reply in replies:
            if reply.has_error():
                record.failures += 1
                log.warning(
                    "round %d: node %d failed to train: %s",
                    server_round,
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            city = _city_of(reply)
            problem = self._screen(reply.content)
            if problem:
                record.rejected[city] = problem
                log.warning(
                    "round %d: rejected the update of city %s: %s",
                    server_round,
                    city,
                    problem,
                )
                continue
            metrics = reply.content[METRICS_KEY]
            rows = int(metrics[WEIGHT_KEY])
            record.cities.setdefault(city, CityRound()).train_rows = rows
            record.cities[city].train_loss = float(metrics["train-loss"])
            if self.on_train is not None:
                self.on_train(city, server_round, rows)
            accepted.append(reply)
        arrays, metrics = super().aggregate_train(server_round, accepted)
        if arrays is not None and self.accountant is not None and self.privacy:
            # Noise is sized for all member cities; with fewer updates in the
            # mean, the noise is smaller relative to one city's influence.
            effective = replace(
                self.privacy,
                noise_multiplier=self.privacy.noise_multiplier
                * len(accepted)
                / self.cities,
            )
            self.accountant.compose(release_event(effective, self.cities))
            record.epsilon = float(self.accountant.get_privacy_spent().epsilon)
        return arrays, metrics

    def _screen(self, content: RecordDict) -> str:
        """Return why an update must be rejected, or an empty string."""
        update = content.array_records
        if len(update) != 1:
            return f"expected one ArrayRecord, got {len(update)}"
        arrays = next(iter(update.values())).to_numpy_ndarrays()
        for array in arrays:
            if not np.all(np.isfinite(array)):
                return "update contains NaN or infinite weights"
        if self.max_update_norm is None or self._global is None:
            return ""
        reference = self._global.to_numpy_ndarrays()
        if [a.shape for a in arrays] != [r.shape for r in reference]:
            return "update shapes differ from the global model"
        squares = sum(
            float(np.sum(np.square(a.astype(np.float64) - r)))
            for a, r in zip(arrays, reference, strict=True)
        )
        distance = math.sqrt(squares)
        if distance > self.max_update_norm:
            return (
                f"update moved the model by L2 distance {distance:.3g}, above the "
                f"limit {self.max_update_norm:.3g}"
            )
        return ""

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        record = self.round_record(server_round)
        for reply in replies:
            if reply.has_error():
                record.failures += 1
                log.warning(
                    "round %d: node %d failed to evaluate: %s",
                    server_round,
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            metrics = reply.content[METRICS_KEY]
            city = record.cities.setdefault(_city_of(reply), CityRound())
            city.test_rows = int(metrics[WEIGHT_KEY])
            city.auc = float(metrics["auc"])
            city.accuracy = float(metrics["accuracy"])
        pooled = super().aggregate_evaluate(server_round, replies)
        if pooled is not None:
            record.auc = float(pooled["auc"])
            record.accuracy = float(pooled["accuracy"])
        record.seconds = time.perf_counter() - record.started
        log.info(
            "round %d: pooled AUC %.4f, accuracy %.4f, %.2f s",
            server_round,
            record.auc,
            record.accuracy,
            record.seconds,
        )
        if self.on_round is not None:
            self.on_round(record)
        return pooled


def _city_of(reply: Message) -> str:
    node = reply.content.get(NODE_KEY)
    if isinstance(node, ConfigRecord) and "city" in node:
        return str(node["city"])
    return str(reply.metadata.src_node_id)
