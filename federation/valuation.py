"""GTG-Shapley contributions at the hub: keep the rounds' updates, score coalitions.

``UpdateRecordingFedAvg`` keeps, per round, the global model and the city models
that FedAvg averaged. After the last round, ``estimate_contributions`` runs
``contributions.gtg_shapley`` on them. Each batch of rebuilt coalition models goes
to every member city in one ``query.models`` message. The city scores each model
on its own test split and replies with score histograms only, which the hub pools
into one AUC per model, as it does for the round metrics.

The estimate needs each city's update in the clear, so it is not available with
secure aggregation. It is not offered with differential privacy either, because
the coalition scores would reach the hub without noise and outside the accountant.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import cast

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid

from citymesh.errors import CitymeshError

from .client_app import CONFIG_KEY, METRICS_KEY, NODE_KEY
from .contributions import BatchEvaluate, ModelArrays, RoundUpdates, gtg_shapley
from .metrics import ScoreHistogram, sum_histograms
from .spec import JobSpec
from .strategy import CityFedAvg

log = logging.getLogger("citymesh.federation")

# The ClientApp's query handler that scores several models in one message.
MODELS_QUERY = "models"
MODEL_PREFIX = "model."
# The run config key whose value "gtg" makes the ServerApp estimate GTG-Shapley.
CONTRIBUTIONS_KEY = "contribution-method"


class ContributionError(CitymeshError):
    """Contribution scores could not be computed."""


class UpdateRecordingFedAvg(CityFedAvg):
    """CityFedAvg that also keeps each round's global model and accepted updates."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.updates: list[RoundUpdates] = []
        self._round_global: ModelArrays = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round_global = arrays_of(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # Under Flower's DP wrapper these replies already contain clipped updates.
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        record = self.rounds[server_round]
        city_arrays: dict[str, ModelArrays] = {}
        weights: dict[str, float] = {}
        for reply in replies:
            if reply.has_error():
                continue
            city = _city_of(reply)
            accepted = city in record.cities and city not in record.rejected
            if not accepted or not record.cities[city].train_rows:
                continue
            update = next(iter(reply.content.array_records.values()))
            city_arrays[city] = arrays_of(update)
            weights[city] = float(reply.content[METRICS_KEY][self.weighted_by_key])
        self.updates.append(
            RoundUpdates(server_round, self._round_global, city_arrays, weights)
        )
        return arrays, metrics


def arrays_of(record: ArrayRecord) -> ModelArrays:
    """Return an ArrayRecord as named NumPy arrays, in state-dict order."""
    return {
        name: tensor.numpy() for name, tensor in record.to_torch_state_dict().items()
    }


def estimate_contributions(
    grid: Grid, spec: JobSpec, encoding_json: str, updates: list[RoundUpdates]
) -> dict[str, object]:
    """Run GTG-Shapley over the recorded rounds and return its record for result.json.

    A failure is returned as ``{"method": "gtg", "error": reason}``, because the
    trained model stays valid without contribution scores.
    """
    if spec.privacy.mode != "none":
        reason = (
            f"GTG-Shapley is not available in privacy mode {spec.privacy.mode!r}, "
            "because it needs each city's update in the clear and releases "
            "coalition scores without noise"
        )
        log.warning("job %s: %s", spec.id, reason)
        return {"method": "gtg", "error": reason}
    evaluate = grid_evaluator(grid, spec, encoding_json)
    try:
        result = gtg_shapley(updates, evaluate, seed=spec.seed)
    except ContributionError as exc:
        log.warning("job %s: GTG-Shapley failed: %s", spec.id, exc)
        return {"method": "gtg", "error": str(exc)}
    log.info(
        "job %s: GTG-Shapley %s from %d coalition models in %d batches, %.2f s",
        spec.id,
        {city: round(value, 4) for city, value in result.shapley.items()},
        result.evaluations,
        result.batches,
        result.seconds,
    )
    return result.to_dict()


def grid_evaluator(grid: Grid, spec: JobSpec, encoding_json: str) -> BatchEvaluate:
    """Return a function that scores models at every connected member city.

    Each call sends one message per city and pools the replies' histograms into
    one AUC per model. It raises ContributionError unless every city replies,
    because a score pooled over fewer cities is not comparable.
    """
    config = ConfigRecord({"spec": spec.to_json(), "encoding": encoding_json})

    def evaluate(models: list[ModelArrays]) -> list[float]:
        content = RecordDict({CONFIG_KEY: config})
        for index, arrays in enumerate(models):
            state = {name: torch.from_numpy(value) for name, value in arrays.items()}
            content[f"{MODEL_PREFIX}{index}"] = ArrayRecord(state)
        node_ids = list(grid.get_node_ids())
        messages = [
            Message(
                content,
                dst_node_id=node_id,
                message_type=f"{MessageType.QUERY}.{MODELS_QUERY}",
            )
            for node_id in node_ids
        ]
        replies = list(grid.send_and_receive(messages, timeout=spec.round_timeout_s))
        failed = [r.error.reason for r in replies if r.has_error()]
        scored = [r for r in replies if not r.has_error()]
        if len(scored) < len(node_ids):
            raise ContributionError(
                f"{len(node_ids) - len(scored)} of {len(node_ids)} cities did not "
                f"score the coalition models within {spec.round_timeout_s:.0f} s; "
                f"errors: {failed!r}"
            )
        return [_pooled_auc(scored, index) for index in range(len(models))]

    return evaluate


def _pooled_auc(replies: list[Message], index: int) -> float:
    parts = []
    for reply in replies:
        metrics = cast(MetricRecord, reply.content[METRICS_KEY])
        parts.append(
            ScoreHistogram(
                np.asarray(metrics[f"hist-pos.{index}"], dtype=np.int64),
                np.asarray(metrics[f"hist-neg.{index}"], dtype=np.int64),
            )
        )
    return sum_histograms(parts).auc()


def _city_of(reply: Message) -> str:
    node = reply.content.get(NODE_KEY)
    if isinstance(node, ConfigRecord) and "city" in node:
        return str(node["city"])
    return str(reply.metadata.src_node_id)
