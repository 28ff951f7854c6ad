"""The city's Flower ClientApp: statistics, local training and local evaluation.

The node config names the city's data (keys below). The job spec, the feature
encoding and the global model arrive in each message from the ServerApp. Replies
carry only aggregates: column statistics, model weights, score histograms.

Node config keys:
    city        the city's name, reported with each reply
    data-path   the city's Parquet file
    dataset-id  catalog id of the dataset, recorded in usage events (optional)
    usage-log   path of the node's usage log; when set, one ``train_round`` event is
                appended per training round (optional)
    approvals   path of the node's approval file (see ``approval.Approvals``); when
                set, the node runs only jobs whose spec and code its operator
                approved (optional)
    privacy-budgets
                path of the node's per-dataset epsilon budgets (see
                ``privacy.PrivacyBudgets``); when set, a differentially private
                job must fit the dataset's budget before the node takes part
    grade       sensitivity grade of the dataset in the shared code list; when
                set, the node joins a job only if
                ``citymesh.catalog.policy.check_training`` allows it (optional)

A job in privacy mode "secagg" trains only through SecAgg+ (``secagg_client``):
the node rejects a plain training message for it, so its update never leaves the
node unmasked.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from citymesh.errors import InvalidInput, PolicyViolation

from .approval import Approvals
from .data import CitySplit, read_city
from .encoding import FeatureEncoding, local_statistics
from .metrics import ScoreHistogram
from .model import build_model, predict_scores, train_epochs
from .privacy import PrivacyBudgets, planned_epsilon
from .secagg_client import Scalar, is_secagg_message, make_secagg_train
from .spec import JobSpec

log = logging.getLogger("citymesh.federation")

# Keys of the records exchanged between ServerApp and ClientApp.
CONFIG_KEY = "config"
ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"
NODE_KEY = "node"
STATISTICS_KEY = "statistics"
WEIGHT_KEY = "num-examples"
# Weight of every update under differential privacy, which needs an unweighted mean.
UNIT_WEIGHT_KEY = "unit-weight"

# Splits and encoded matrices of the most recent jobs in this process.
CACHE_ENTRIES = 12
_cache_lock = threading.Lock()
_cache: OrderedDict[tuple, object] = OrderedDict()


def make_client_app(mods: list[Mod] | None = None) -> ClientApp:
    """Build the ClientApp. The module-level ``app`` is the instance Flower loads.

    ``mods`` are Flower mods wrapped around every handler (for example
    ``flwr.client.mod.secaggplus_mod``).
    """
    client_app = ClientApp(mods=mods)
    secagg_train = make_secagg_train(_secagg_fit)

    @client_app.query("statistics")
    def statistics(message: Message, context: Context) -> Message:
        spec = _spec(message)
        if not _is_member(context, spec):
            # A city outside the job replies with its name and no statistics.
            content = RecordDict(
                {
                    STATISTICS_KEY: ConfigRecord(),
                    METRICS_KEY: MetricRecord({WEIGHT_KEY: 0}),
                    NODE_KEY: _node(context, member=False),
                }
            )
            return Message(content, reply_to=message)
        _require_approval(context, spec, log_refusal=True)
        _require_grade(context, spec)
        if spec.privacy.mode == "dp":
            _reserve_privacy(context, spec)
        split = _city_split(context, spec)
        stats = local_statistics(split.train, spec.features)
        record = ConfigRecord()
        for column, values in stats.categories.items():
            record[f"categories.{column}"] = list(values)
        numbers = MetricRecord({WEIGHT_KEY: len(split.train)})
        for column in stats.count:
            numbers[f"count.{column}"] = stats.count[column]
            numbers[f"sum.{column}"] = stats.total[column]
            numbers[f"sumsq.{column}"] = stats.total_squares[column]
        content = RecordDict(
            {
                STATISTICS_KEY: record,
                METRICS_KEY: numbers,
                NODE_KEY: _node(context, member=True),
            }
        )
        return Message(content, reply_to=message)

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        if is_secagg_message(message):
            return secagg_train(message, context)
        started = time.perf_counter()
        spec = _spec(message)
        _require_member(context, spec)
        _require_approval(context, spec)
        _require_privacy_reservation(context, spec)
        if spec.privacy.mode == "secagg":
            raise PolicyViolation(
                f"job {spec.id!r} requires secure aggregation, but this training "
                "message is not part of SecAgg+; the node sends no unmasked update"
            )
        config = message.content[CONFIG_KEY]
        server_round = int(config["server-round"])
        model, rows, loss = _train_model(
            context,
            spec,
            str(config["encoding"]),
            server_round,
            message.content[ARRAYS_KEY].to_torch_state_dict(),
        )

        metrics = MetricRecord(
            {
                WEIGHT_KEY: rows,
                UNIT_WEIGHT_KEY: 1,
                "train-loss": loss if math.isfinite(loss) else 0.0,
                "train-seconds": time.perf_counter() - started,
            }
        )
        content = RecordDict(
            {
                ARRAYS_KEY: ArrayRecord(model.state_dict()),
                METRICS_KEY: metrics,
                NODE_KEY: _node(context),
            }
        )
        return Message(content, reply_to=message)

    @client_app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        spec = _spec(message)
        _require_member(context, spec)
        _require_approval(context, spec)
        config = message.content[CONFIG_KEY]
        encoding = FeatureEncoding.from_json(str(config["encoding"]))
        split = _city_split(context, spec)

        model = build_model(spec.model, encoding.width, seed=spec.seed)
        model.load_state_dict(message.content[ARRAYS_KEY].to_torch_state_dict())
        test_features = _encoded(context, spec, str(config["encoding"]), "test")
        scores = predict_scores(model, test_features)
        histogram = ScoreHistogram.from_scores(scores, split.test_labels)

        metrics = MetricRecord(
            {
                WEIGHT_KEY: len(split.test),
                UNIT_WEIGHT_KEY: 1,
                "auc": histogram.auc(),
                "accuracy": histogram.accuracy(),
                "hist-pos": [int(v) for v in histogram.positive],
                "hist-neg": [int(v) for v in histogram.negative],
            }
        )
        content = RecordDict({METRICS_KEY: metrics, NODE_KEY: _node(context)})
        return Message(content, reply_to=message)

    @client_app.query("models")
    def score_models(message: Message, context: Context) -> Message:
        # The hub's contribution estimate: score each model it sends (rebuilt
        # coalition models) on this city's test split. Replies carry histograms.
        spec = _spec(message)
        _require_member(context, spec)
        _require_approval(context, spec)
        encoding_json = str(message.content[CONFIG_KEY]["encoding"])
        width = FeatureEncoding.from_json(encoding_json).width
        split = _city_split(context, spec)
        test_features = _encoded(context, spec, encoding_json, "test")
        model = build_model(spec.model, width, seed=spec.seed)
        metrics = MetricRecord({WEIGHT_KEY: len(split.test)})
        for name, arrays in message.content.array_records.items():
            index = name.removeprefix("model.")
            model.load_state_dict(arrays.to_torch_state_dict())
            scores = predict_scores(model, test_features)
            histogram = ScoreHistogram.from_scores(scores, split.test_labels)
            metrics[f"hist-pos.{index}"] = [int(v) for v in histogram.positive]
            metrics[f"hist-neg.{index}"] = [int(v) for v in histogram.negative]
        content = RecordDict({METRICS_KEY: metrics, NODE_KEY: _node(context)})
        return Message(content, reply_to=message)

    return client_app


def _train_model(
    context: Context,
    spec: JobSpec,
    encoding_json: str,
    server_round: int,
    state: dict[str, torch.Tensor],
) -> tuple[torch.nn.Module, int, float]:
    """Train the global model ``state`` on the city's rows and log the usage.

    Returns the trained model, the training rows and the mean loss.
    """
    encoding = FeatureEncoding.from_json(encoding_json)
    split = _city_split(context, spec)
    model = build_model(spec.model, encoding.width, seed=spec.seed)
    model.load_state_dict(state)
    features = _encoded(context, spec, encoding_json, "train")
    loss = train_epochs(
        model,
        features,
        split.train_labels,
        spec.model,
        seed=spec.seed * 100_003 + server_round,
    )
    rows = len(split.train)
    _append_usage(context, spec, server_round, rows)
    return model, rows, loss


def _secagg_fit(
    context: Context, weights: list[np.ndarray], config: dict[str, Scalar]
) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
    """Train under SecAgg+; ``secaggplus_mod`` masks the returned weights."""
    started = time.perf_counter()
    spec = JobSpec.from_json(str(config["spec"]))
    _require_member(context, spec)
    _require_approval(context, spec)
    if spec.privacy.mode != "secagg":
        raise PolicyViolation(
            f"job {spec.id!r} has privacy mode {spec.privacy.mode!r}, but the hub "
            "started SecAgg+; the node trains such a job only in its own mode"
        )
    encoding_json = str(config["encoding"])
    names = _state_names(spec, encoding_json)
    if len(names) != len(weights):
        raise InvalidInput(
            f"SecAgg+ sent {len(weights)} arrays, but the model of job {spec.id!r} "
            f"has {len(names)}; the hub and node run different model code"
        )
    state = {
        name: torch.from_numpy(np.array(weight))
        for name, weight in zip(names, weights, strict=True)
    }
    model, rows, loss = _train_model(
        context, spec, encoding_json, int(config["server-round"]), state
    )
    trained = [t.detach().cpu().numpy() for t in model.state_dict().values()]
    if not all(np.all(np.isfinite(w)) for w in trained):
        raise InvalidInput(
            f"city {_city(context)!r} trained NaN or infinite weights in job "
            f"{spec.id!r}; the node withholds the update"
        )
    metrics: dict[str, Scalar] = {
        "city": _city(context),
        "train-loss": loss if math.isfinite(loss) else 0.0,
        "train-seconds": time.perf_counter() - started,
    }
    return trained, rows, metrics


def _state_names(spec: JobSpec, encoding_json: str) -> list[str]:
    """Return the model's state dict keys, the order of legacy weight lists."""
    width = FeatureEncoding.from_json(encoding_json).width
    return list(build_model(spec.model, width, seed=spec.seed).state_dict())


def _require_grade(context: Context, spec: JobSpec) -> None:
    """Reject the job when the dataset's grade forbids it (see check_training)."""
    grade = context.node_config.get("grade")
    if not grade:
        return
    # Imported here so a node without a grade setting needs no catalog.
    from citymesh.catalog.models import DatasetEntry
    from citymesh.catalog.policy import check_training

    entry = DatasetEntry(
        id=_dataset_id(context, spec),
        name=_dataset_id(context, spec),
        city=_city(context),
        code="",
        grade=str(grade),
    )
    try:
        check_training(entry, secure_aggregation=spec.privacy.mode == "secagg")
    except PolicyViolation as exc:
        _append_event(context, spec, "refusal", detail={"reason": str(exc)})
        log.warning("city %s rejected job %s: %s", _city(context), spec.id, exc)
        raise


def _spec(message: Message) -> JobSpec:
    return JobSpec.from_json(str(message.content[CONFIG_KEY]["spec"]))


def _node(context: Context, member: bool = True) -> ConfigRecord:
    return ConfigRecord({"city": _city(context), "member": member})


def _is_member(context: Context, spec: JobSpec) -> bool:
    """Return whether this node's city takes part in the job.

    A spec without datasets takes every connected city. A spec that names a
    dataset for this city must name the dataset this node serves.
    """
    if not spec.datasets:
        return True
    city = _city(context)
    if city not in spec.datasets:
        return False
    served = context.node_config.get("dataset-id")
    if served and str(served) != spec.datasets[city]:
        raise PolicyViolation(
            f"job {spec.id!r} names dataset {spec.datasets[city]!r} for city "
            f"{city!r}, but this node serves {str(served)!r}; fix the job spec"
        )
    return True


def _require_member(context: Context, spec: JobSpec) -> None:
    if not _is_member(context, spec):
        raise PolicyViolation(
            f"city {_city(context)!r} is not part of job {spec.id!r}; "
            "the node rejects its messages"
        )


def _city(context: Context) -> str:
    return str(context.node_config.get("city", context.node_id))


def _split_key(context: Context, spec: JobSpec) -> tuple[str, float, str]:
    raw_path = context.node_config.get("data-path")
    if not raw_path:
        raise InvalidInput(
            "node config lacks 'data-path'; start the node with "
            "--node-config \"data-path='/path/to/city.parquet'\""
        )
    path = Path(str(raw_path))
    settings = JobSpec.from_dict(
        {
            "features": spec.features,
            "target": spec.target,
            "seed": spec.seed,
            "test_fraction": spec.test_fraction,
        }
    )
    mtime = path.stat().st_mtime if path.exists() else 0.0
    return str(path.resolve()), mtime, settings.to_json()


def _cached(key: tuple, build: Callable[[], object]) -> object:
    """Return the cached value for ``key``, building it on a miss (LRU, thread-safe).

    A long-running ClientApp process serves round after round, so the city's
    split and its encoded matrices are built once per job, not once per message.
    """
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = build()
    with _cache_lock:
        _cache[key] = value
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return value


def _city_split(context: Context, spec: JobSpec) -> CitySplit:
    """Read the city's split once per file version and split settings."""
    key = _split_key(context, spec)
    path = Path(key[0])
    return cast(CitySplit, _cached(("split", key), lambda: read_city(path, spec)))


def _encoded(
    context: Context, spec: JobSpec, encoding_json: str, part: str
) -> np.ndarray:
    """Return the city's train or test rows encoded with the job's encoding."""
    split = _city_split(context, spec)
    frame = split.train if part == "train" else split.test
    key = ("encoded", _split_key(context, spec), encoding_json, part)
    encoding = FeatureEncoding.from_json(encoding_json)
    return cast(np.ndarray, _cached(key, lambda: encoding.encode(frame)))


def _require_approval(
    context: Context, spec: JobSpec, *, log_refusal: bool = False
) -> None:
    """Reject the job unless the node's operator approved this spec and code."""
    approvals_path = context.node_config.get("approvals")
    if not approvals_path:
        return
    try:
        Approvals(Path(str(approvals_path))).check(spec)
    except PolicyViolation as exc:
        if log_refusal:
            _append_event(context, spec, "refusal", detail={"reason": str(exc)})
        log.warning("city %s rejected job %s: %s", _city(context), spec.id, exc)
        raise


def _reserve_privacy(context: Context, spec: JobSpec) -> None:
    """Charge the job's planned epsilon to the dataset's budget, if the node has one.

    Logs an ``approval`` or a ``refusal`` usage event and raises PolicyViolation
    when the budget would be exceeded.
    """
    budgets_path = context.node_config.get("privacy-budgets")
    if not budgets_path:
        return
    dataset_id = _dataset_id(context, spec)
    epsilon = planned_epsilon(spec)
    try:
        total = PrivacyBudgets(Path(str(budgets_path))).reserve(
            dataset_id, spec.id, epsilon
        )
    except PolicyViolation as exc:
        _append_event(
            context, spec, "refusal", detail={"epsilon": epsilon, "reason": str(exc)}
        )
        log.warning("city %s rejected job %s: %s", _city(context), spec.id, exc)
        raise
    _append_event(
        context,
        spec,
        "approval",
        detail={
            "epsilon": epsilon,
            "epsilon_total": total,
            "delta": spec.privacy.delta,
        },
    )


def _require_privacy_reservation(context: Context, spec: JobSpec) -> None:
    """Reject training for a DP job that did not reserve budget on this node."""
    budgets_path = context.node_config.get("privacy-budgets")
    if spec.privacy.mode != "dp" or not budgets_path:
        return
    dataset_id = _dataset_id(context, spec)
    if PrivacyBudgets(Path(str(budgets_path))).reserved(dataset_id, spec.id) is None:
        raise PolicyViolation(
            f"job {spec.id!r} reserved no privacy budget on dataset {dataset_id!r}; "
            "the node trains only jobs it accepted in the statistics step"
        )


def _dataset_id(context: Context, spec: JobSpec) -> str:
    city = _city(context)
    return str(context.node_config.get("dataset-id", spec.datasets.get(city, city)))


def _append_usage(
    context: Context, spec: JobSpec, server_round: int, rows: int
) -> None:
    detail: dict[str, object] = {"model": spec.model.kind, "privacy": spec.privacy.mode}
    if spec.privacy.mode == "dp":
        detail["noise_multiplier"] = spec.privacy.noise_multiplier
    _append_event(
        context,
        spec,
        "train_round",
        rows=rows,
        server_round=server_round,
        detail=detail,
    )


def _append_event(
    context: Context,
    spec: JobSpec,
    kind: str,
    *,
    rows: int = 0,
    server_round: int = 0,
    detail: dict[str, object] | None = None,
) -> None:
    log_path = context.node_config.get("usage-log")
    if not log_path:
        return
    # Imported here so the ClientApp runs without the ledger when no log is set.
    from citymesh.ledger.events import UsageEvent
    from citymesh.ledger.log import UsageLog

    city = _city(context)
    event = UsageEvent(
        kind=kind,
        dataset_id=_dataset_id(context, spec),
        provider=city,
        consumer=spec.consumer,
        purpose=spec.purpose,
        rows=rows,
        job_id=spec.id,
        round=server_round,
        time=time.time(),
        detail=dict(detail or {}),
    )
    UsageLog(Path(str(log_path))).append(event)
    log.info(
        "city %s logged %s (round %d) of job %s", city, kind, server_round, spec.id
    )


app = make_client_app()
