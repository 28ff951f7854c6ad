"""The hub's Flower ServerApp: statistics step, FedAvg rounds, result files.

The run config carries the job: ``job-spec`` (the spec as JSON text) or
``job-spec-path`` (a TOML or JSON file), and ``output-dir``, where the ServerApp writes
``result.json`` and ``model.pt`` (the final torch state dict). Flower has no call that
returns a ServerApp's outcome to whoever started the run, so both run modes read these
files.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp

from citymesh.errors import CitymeshError, InvalidInput

from .client_app import CONFIG_KEY, METRICS_KEY, STATISTICS_KEY
from .encoding import ColumnStatistics, FeatureEncoding, merge_statistics
from .model import build_model
from .spec import JobSpec
from .strategy import CityFedAvg, RoundHook, RoundRecord, TrainHook

log = logging.getLogger("citymesh.federation")

RESULT_FILE = "result.json"
MODEL_FILE = "model.pt"


class FederationError(CitymeshError):
    """A federated run could not finish."""


def make_server_app(
    on_train: TrainHook | None = None, on_round: RoundHook | None = None
) -> ServerApp:
    """Build the ServerApp. The hooks see each accepted update and each round's metrics."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_rounds(grid, context, on_train=on_train, on_round=on_round)

    return server_app


def load_spec(run_config: dict[str, object]) -> JobSpec:
    """Read the job spec from a run config."""
    if "job-spec" in run_config:
        return JobSpec.from_json(str(run_config["job-spec"]))
    if "job-spec-path" in run_config:
        path = Path(str(run_config["job-spec-path"]))
        if path.suffix == ".json":
            return JobSpec.from_json(path.read_text())
        return JobSpec.from_toml(path)
    raise InvalidInput(
        "run config lacks 'job-spec' or 'job-spec-path'; pass the job with "
        "--run-config \"job-spec-path='/path/job.toml' output-dir='/path/out'\""
    )


def run_rounds(
    grid: Grid,
    context: Context,
    *,
    on_train: TrainHook | None = None,
    on_round: RoundHook | None = None,
) -> None:
    """Run a whole job on ``grid`` and write its result files."""
    started = time.perf_counter()
    spec = load_spec(context.run_config)
    output_dir = Path(str(context.run_config.get("output-dir", ".")))
    output_dir.mkdir(parents=True, exist_ok=True)
    # A deployment's run config always has the key; 0 there means no limit.
    max_norm = float(context.run_config.get("max-update-norm", 0.0)) or None

    encoding = federated_encoding(grid, spec)
    model = build_model(spec.model, encoding.width, seed=spec.seed)
    initial = ArrayRecord(model.state_dict())

    strategy = CityFedAvg(
        min_nodes=spec.min_nodes,
        fraction_train=spec.fraction_train,
        max_update_norm=max_norm,
        on_train=on_train,
        on_round=on_round,
    )
    config = ConfigRecord({"spec": spec.to_json(), "encoding": encoding.to_json()})
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=spec.rounds,
        timeout=spec.round_timeout_s,
        train_config=config,
        evaluate_config=ConfigRecord(dict(config)),
    )

    rounds = [strategy.rounds[r] for r in sorted(strategy.rounds)]
    updates = sum(
        1 for record in rounds for city in record.cities.values() if city.train_rows
    )
    if updates == 0:
        raise FederationError(
            f"job {spec.id!r} finished {spec.rounds} round(s) without one accepted "
            "update; check the nodes' logs"
        )
    state = result.arrays.to_torch_state_dict()
    torch.save(state, output_dir / MODEL_FILE)
    write_result(output_dir, spec, encoding, rounds, time.perf_counter() - started)


def federated_encoding(grid: Grid, spec: JobSpec) -> FeatureEncoding:
    """Build the shared encoding from the spec and the cities' column statistics."""
    features = spec.features
    fixed = set(features.categories) | set(features.scaling)
    if set(features.categorical + features.numeric) <= fixed:
        return merge_statistics(features, [])

    node_ids = _wait_for_nodes(grid, spec.min_nodes, spec.round_timeout_s)
    content = RecordDict({CONFIG_KEY: ConfigRecord({"spec": spec.to_json()})})
    messages = [
        Message(
            content, dst_node_id=node_id, message_type=f"{MessageType.QUERY}.statistics"
        )
        for node_id in node_ids
    ]
    replies = list(grid.send_and_receive(messages, timeout=spec.round_timeout_s))
    parts: list[ColumnStatistics] = []
    for reply in replies:
        if reply.has_error():
            log.warning(
                "node %d failed the statistics step: %s",
                reply.metadata.src_node_id,
                reply.error.reason,
            )
            continue
        parts.append(_statistics(reply, features.categorical, features.numeric))
    if len(parts) < spec.min_nodes:
        raise FederationError(
            f"only {len(parts)} node(s) returned column statistics, fewer than "
            f"min_nodes = {spec.min_nodes}"
        )
    log.info("statistics step: %d node(s) replied", len(parts))
    return merge_statistics(features, parts)


def _wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        node_ids = list(grid.get_node_ids())
        if len(node_ids) >= minimum:
            return node_ids
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(node_ids)} node(s) connected within {timeout:.0f} s, "
                f"fewer than min_nodes = {minimum}"
            )
        time.sleep(0.2)


def _statistics(
    reply: Message, categorical: tuple[str, ...], numeric: tuple[str, ...]
) -> ColumnStatistics:
    record = reply.content[STATISTICS_KEY]
    numbers = reply.content[METRICS_KEY]
    categories = {
        column: tuple(str(v) for v in record[f"categories.{column}"])
        for column in categorical
        if f"categories.{column}" in record
    }
    present = [c for c in numeric if f"count.{c}" in numbers]
    return ColumnStatistics(
        categories=categories,
        count={c: int(numbers[f"count.{c}"]) for c in present},
        total={c: float(numbers[f"sum.{c}"]) for c in present},
        total_squares={c: float(numbers[f"sumsq.{c}"]) for c in present},
    )


def write_result(
    output_dir: Path,
    spec: JobSpec,
    encoding: FeatureEncoding,
    rounds: list[RoundRecord],
    seconds: float,
) -> None:
    """Write result.json: spec, encoding, and the metrics of every round."""
    payload = {
        "spec": spec.to_dict(),
        "encoding": encoding.to_dict(),
        "seconds": seconds,
        "rounds": [_round_dict(record) for record in rounds],
    }
    path = output_dir / RESULT_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=2, allow_nan=True))
    temporary.replace(path)


def _round_dict(record: RoundRecord) -> dict[str, object]:
    data = asdict(record)
    data.pop("started")
    return data


app = make_server_app()
