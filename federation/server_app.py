"""The hub's Flower ServerApp: statistics step, FedAvg rounds, result files.

The run config carries the job: ``job-spec`` (the spec as JSON text) or
``job-spec-path`` (a TOML or JSON file), and ``output-dir``, where the ServerApp writes
``result.json`` and ``model.pt`` (the final torch state dict). Flower has no call
that returns a ServerApp's outcome to the process that started the run, so both run
modes read these files.
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
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from citymesh.errors import CitymeshError, InvalidInput

from .client_app import (
    CONFIG_KEY,
    METRICS_KEY,
    NODE_KEY,
    STATISTICS_KEY,
    WEIGHT_KEY,
)
from .encoding import ColumnStatistics, FeatureEncoding, merge_statistics
from .grids import MemberGrid
from .model import build_model
from .privacy import check_job_budget
from .spec import JobSpec
from .strategy import CityFedAvg, RoundHook, RoundRecord, TrainHook
from .valuation import CONTRIBUTIONS_KEY, UpdateRecordingFedAvg, estimate_contributions

log = logging.getLogger("citymesh.federation")

RESULT_FILE = "result.json"
MODEL_FILE = "model.pt"


class FederationError(CitymeshError):
    """A federated run could not finish."""


def make_server_app(
    on_train: TrainHook | None = None, on_round: RoundHook | None = None
) -> ServerApp:
    """Build the ServerApp, whose hooks see each accepted update and round's metrics."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_rounds(grid, context, on_train=on_train, on_round=on_round)

    return server_app


def require_supported_privacy(spec: JobSpec) -> None:
    """Raise unless this ServerApp can run the spec's privacy mode.

    SecAgg+ needs at least two updates per round, because the sum of one
    update is the update itself.
    """
    if spec.privacy.mode == "secagg" and spec.min_nodes < 2:
        raise InvalidInput(
            f"job {spec.id!r} uses secure aggregation with min_nodes = "
            f"{spec.min_nodes}; SecAgg+ needs min_nodes >= 2"
        )


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

    # Only nodes that passed the survey take part: a node that connects later,
    # or that rejected the job, gets no training message.
    train_rows: dict[int, int] = {}
    grid = MemberGrid(grid)
    encoding, members = survey_nodes(grid, spec, train_rows)
    grid = MemberGrid(grid, set(members))
    model = build_model(spec.model, encoding.width, seed=spec.seed)
    initial = ArrayRecord(model.state_dict())

    require_supported_privacy(spec)
    dp = spec.privacy.mode == "dp"
    check_job_budget(spec)
    # GTG-Shapley contributions need each round's updates in the clear.
    gtg = context.run_config.get(CONTRIBUTIONS_KEY) == "gtg"
    record_updates = gtg and spec.privacy.mode == "none"
    strategy = (UpdateRecordingFedAvg if record_updates else CityFedAvg)(
        min_nodes=spec.min_nodes,
        fraction_train=spec.fraction_train,
        max_update_norm=max_norm,
        on_train=on_train,
        on_round=on_round,
        privacy=spec.privacy if dp else None,
        cities=len(members),
    )
    runner: Strategy = strategy
    if dp:
        runner = DifferentialPrivacyServerSideFixedClipping(
            strategy,
            noise_multiplier=spec.privacy.noise_multiplier,
            clipping_norm=spec.privacy.clipping_norm,
            num_sampled_clients=len(members),
        )
    config = ConfigRecord({"spec": spec.to_json(), "encoding": encoding.to_json()})
    if spec.privacy.mode == "secagg":
        # Imported here because the module builds on this one's FederationError.
        from .secagg import run_secagg_rounds

        final = run_secagg_rounds(
            grid, context, spec, strategy, initial, config, max(train_rows.values())
        )
    else:
        final = runner.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=spec.rounds,
            timeout=spec.round_timeout_s,
            train_config=config,
            evaluate_config=ConfigRecord(dict(config)),
        ).arrays

    rounds = [strategy.rounds[r] for r in sorted(strategy.rounds)]
    updates = sum(
        1 for record in rounds for city in record.cities.values() if city.train_rows
    )
    if updates == 0:
        raise FederationError(
            f"job {spec.id!r} finished {spec.rounds} round(s) without one accepted "
            "update; check the nodes' logs"
        )
    state = final.to_torch_state_dict()
    torch.save(state, output_dir / MODEL_FILE)
    contributions = None
    if gtg:
        updates_kept = getattr(strategy, "updates", [])
        contributions = estimate_contributions(
            grid, spec, encoding.to_json(), updates_kept
        )
    seconds = time.perf_counter() - started
    write_result(output_dir, spec, encoding, rounds, seconds, contributions)


def survey_nodes(
    grid: Grid, spec: JobSpec, train_rows: dict[int, int] | None = None
) -> tuple[FeatureEncoding, dict[int, str]]:
    """Ask the connected nodes for their city and column statistics.

    Returns the shared encoding and the member nodes (node id to city), and
    fills ``train_rows`` (node id to training rows) when it is given. Nodes
    whose city the spec's ``datasets`` leaves out reply without statistics and
    take no further part. The survey repeats for newly connected nodes until
    ``min_nodes`` members replied or ``round_timeout_s`` passed.
    """
    deadline = time.monotonic() + spec.round_timeout_s
    members: dict[int, str] = {}
    parts: list[ColumnStatistics] = []
    surveyed: set[int] = set()
    while True:
        pending = [n for n in grid.get_node_ids() if n not in surveyed]
        if len(surveyed) + len(pending) >= spec.min_nodes and pending:
            surveyed.update(pending)
            remaining = max(deadline - time.monotonic(), 1.0)
            for reply in _query_statistics(grid, spec, pending, remaining):
                city = str(reply.content[NODE_KEY]["city"])
                if not reply.content[NODE_KEY]["member"]:
                    log.info("city %s is connected but not part of the job", city)
                    continue
                members[reply.metadata.src_node_id] = city
                parts.append(_statistics(reply, spec))
                if train_rows is not None:
                    rows = int(reply.content[METRICS_KEY][WEIGHT_KEY])
                    train_rows[reply.metadata.src_node_id] = rows
        if len(members) >= spec.min_nodes:
            break
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(members)} member node(s) of job {spec.id!r} replied "
                f"within {spec.round_timeout_s:.0f} s, fewer than "
                f"min_nodes = {spec.min_nodes}"
            )
        time.sleep(0.2)

    missing = sorted(set(spec.datasets) - set(members.values()))
    if missing:
        log.warning("job %s starts without the cities %s", spec.id, missing)
    log.info("statistics step: member cities %s", sorted(members.values()))
    return merge_statistics(spec.features, parts), members


def _query_statistics(
    grid: Grid, spec: JobSpec, node_ids: list[int], timeout: float
) -> list[Message]:
    content = RecordDict({CONFIG_KEY: ConfigRecord({"spec": spec.to_json()})})
    messages = [
        Message(
            content, dst_node_id=node_id, message_type=f"{MessageType.QUERY}.statistics"
        )
        for node_id in node_ids
    ]
    replies = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            log.warning(
                "node %d failed the statistics step: %s",
                reply.metadata.src_node_id,
                reply.error.reason,
            )
            continue
        replies.append(reply)
    return replies


def _statistics(reply: Message, spec: JobSpec) -> ColumnStatistics:
    categorical = spec.features.categorical
    numeric = spec.features.numeric
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
    contributions: dict[str, object] | None = None,
) -> None:
    """Write result.json: spec, encoding and the metrics of every round.

    ``contributions`` is the GTG-Shapley record, when the run computed one.
    """
    payload: dict[str, object] = {
        "spec": spec.to_dict(),
        "encoding": encoding.to_dict(),
        "seconds": seconds,
        "rounds": [_round_dict(record) for record in rounds],
    }
    if contributions is not None:
        payload["contributions"] = contributions
    path = output_dir / RESULT_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=2, allow_nan=True))
    temporary.replace(path)


def _round_dict(record: RoundRecord) -> dict[str, object]:
    data = asdict(record)
    data.pop("started")
    return data


app = make_server_app()
