"""Training rounds under secure aggregation (SecAgg+), on the hub's side.

Flower 1.42 runs SecAgg+ only on its legacy path: ``SecAggPlusWorkflow`` drives a
legacy ``Strategy`` through a ``LegacyContext``, and each city replies through
``secaggplus_mod`` around a ``NumPyClient`` (see ``secagg_client``). The hub then
sees only the sum of the cities' masked, row-weighted updates.

``SecAggPlusWorkflow.__call__`` returns normally when a stage fails: it logs
"Secure aggregation halted" and leaves the model as it was. So every round here
checks that all four stages ran, that each member's secrets have at least
``threshold`` shares, that at least ``min_nodes`` masked vectors were summed,
and that the model changed. Otherwise it raises ``SecureAggregationError``.

Evaluation stays on the Message API: after each aggregated round the strategy
sends the global model to the cities, which reply with score histograms.

NOTE: the hub cannot screen single updates under SecAgg+, so ``max-update-norm``
is not enforced here. Each city withholds a NaN or infinite update itself (see
``client_app``), and the hub checks only that the aggregate is finite.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, FitRes, Parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import (
    WorkflowState,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from .grids import MemberGrid
from .server_app import FederationError
from .spec import JobSpec
from .strategy import CityFedAvg, CityRound

log = logging.getLogger("citymesh.federation")

# Each city's secrets are split into one share per member city, and any two
# thirds of the shares (at least 2) rebuild them. So the hub learns a city's
# masks only from the city itself or with the help of a third of the others.
SHARE_FRACTION = 1.0
RECONSTRUCTION_FRACTION = 2 / 3
# Weights are quantized to [-CLIPPING_RANGE, CLIPPING_RANGE] before masking.
# Flower's default; a logistic regression or small MLP on scaled features stays
# far inside it.
CLIPPING_RANGE = 8.0
STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


class SecureAggregationError(FederationError):
    """A SecAgg+ round halted or did not aggregate what it should have."""


@dataclass
class ProtocolRecord:
    """The hub's record of one SecAgg+ round: stages, parameters and counts."""

    stages: list[str] = field(default_factory=list)
    sampled: set[int] = field(default_factory=set)
    num_shares: int = 0
    threshold: int = 0
    masked_vectors: int = 0
    shares: dict[int, int] = field(default_factory=dict)
    aggregated: list[np.ndarray] | None = None


class CheckedSecAggPlusWorkflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow that records which stages completed.

    The stage methods are Flower's. Each override only notes the stage's
    outcome and the protocol parameters in ``record``.
    """

    def __init__(self, record: ProtocolRecord, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.record = record

    def _note(self, stage: str, state: WorkflowState, passed: bool) -> bool:
        if passed:
            self.record.stages.append(stage)
        self.record.sampled = set(state.sampled_node_ids)
        self.record.num_shares = state.num_shares
        self.record.threshold = state.threshold
        return passed

    def setup_stage(
        self, grid: Grid, context: LegacyContext, state: WorkflowState
    ) -> bool:
        passed = super().setup_stage(grid, context, state)
        return self._note(STAGES[0], state, passed)

    def share_keys_stage(
        self, grid: Grid, context: LegacyContext, state: WorkflowState
    ) -> bool:
        passed = super().share_keys_stage(grid, context, state)
        return self._note(STAGES[1], state, passed)

    def collect_masked_vectors_stage(
        self, grid: Grid, context: LegacyContext, state: WorkflowState
    ) -> bool:
        passed = super().collect_masked_vectors_stage(grid, context, state)
        self.record.masked_vectors = len(state.legacy_results)
        return self._note(STAGES[2], state, passed)

    def unmask_stage(
        self, grid: Grid, context: LegacyContext, state: WorkflowState
    ) -> bool:
        passed = super().unmask_stage(grid, context, state)
        return self._note(STAGES[3], state, passed)


class _ShareCountingGrid(MemberGrid):
    """A member grid that counts the key shares cities return in the unmask stage."""

    def __init__(self, grid: Grid, members: set[int], record: ProtocolRecord) -> None:
        super().__init__(grid, members)
        self.record = record

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = list(super().send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.has_error():
                continue
            configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is None or Key.NODE_ID_LIST not in configs:
                continue
            for owner in configs[Key.NODE_ID_LIST]:  # type: ignore[union-attr]
                owner = int(owner)
                self.record.shares[owner] = self.record.shares.get(owner, 0) + 1
        return replies


class _RoundStrategy(LegacyFedAvg):
    """The legacy strategy one SecAgg+ round drives.

    ``configure_fit`` samples member nodes as ``CityFedAvg.configure_train``
    does. ``aggregate_fit`` receives every city's plain ``FitRes`` metrics with
    the already unmasked sum as parameters, records each city's rows and loss,
    and keeps the aggregate.
    """

    def __init__(
        self,
        strategy: CityFedAvg,
        grid: Grid,
        config: dict[str, bool | bytes | float | int | str],
        record: ProtocolRecord,
    ) -> None:
        super().__init__(min_fit_clients=strategy.min_train_nodes)
        self.strategy = strategy
        self.grid = grid
        self.fit_config = config
        self.record = record
        self.proxies: dict[int, ClientProxy] = {}

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: object
    ) -> list[tuple[ClientProxy, FitIns]]:
        available = len(list(self.grid.get_node_ids()))
        sample_size = max(
            int(available * self.strategy.fraction_train),
            self.strategy.min_train_nodes,
        )
        node_ids, _ = sample_nodes(
            self.grid, self.strategy.min_available_nodes, sample_size
        )
        config = {**self.fit_config, "server-round": server_round}
        pairs = []
        for node_id in node_ids:
            proxy = self.proxies.setdefault(
                node_id, GridClientProxy(node_id, self.grid, self.grid.run.run_id)
            )
            pairs.append((proxy, FitIns(parameters, dict(config))))
        return pairs

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[object],
    ) -> tuple[Parameters | None, dict[str, object]]:
        record = self.strategy.rounds[server_round]
        for _, fit_res in results:
            city = str(fit_res.metrics.get("city", ""))
            part = record.cities.setdefault(city, CityRound())
            part.train_rows = int(fit_res.num_examples)
            part.train_loss = float(fit_res.metrics.get("train-loss", float("nan")))
            if self.strategy.on_train is not None:
                self.strategy.on_train(city, server_round, part.train_rows)
        if not results:
            return None, {}
        # SecAggPlusWorkflow sets every result's parameters to the unmasked sum
        # divided by the summed weights, which is the weighted mean.
        parameters = results[0][1].parameters
        self.record.aggregated = parameters_to_ndarrays(parameters)
        return parameters, {}


def run_secagg_rounds(
    grid: MemberGrid,
    context: Context,
    spec: JobSpec,
    strategy: CityFedAvg,
    initial: ArrayRecord,
    config: ConfigRecord,
    max_rows: int,
) -> ArrayRecord:
    """Train ``spec.rounds`` rounds with SecAgg+ and return the final model.

    ``max_rows`` is the largest member's training rows. SecAgg+ weighs each
    update by its rows divided by this maximum, which must not exceed 1.
    Evaluation, per-city records and the ``on_round`` hook are the strategy's.
    Raises SecureAggregationError when a round's aggregation did not happen.
    """
    arrays = initial
    members = set(grid.members)
    fit_config = {key: value for key, value in config.items()}
    for server_round in range(1, spec.rounds + 1):
        record = strategy.round_record(server_round)
        record.started = time.perf_counter()
        protocol = ProtocolRecord()
        counting_grid = _ShareCountingGrid(grid, members, protocol)
        round_strategy = _RoundStrategy(strategy, counting_grid, fit_config, protocol)
        legacy = _legacy_context(context, spec, round_strategy, server_round, arrays)
        workflow = CheckedSecAggPlusWorkflow(
            protocol,
            num_shares=SHARE_FRACTION,
            reconstruction_threshold=RECONSTRUCTION_FRACTION,
            max_weight=float(max(max_rows, 1)),
            clipping_range=CLIPPING_RANGE,
            timeout=spec.round_timeout_s,
        )
        workflow(counting_grid, legacy)
        aggregated = check_round(spec, server_round, protocol, arrays)
        record.failures += len(protocol.sampled) - protocol.masked_vectors
        arrays = _named_arrays(arrays, aggregated)
        log.info(
            "round %d: SecAgg+ summed %d masked updates (%d shares each, threshold %d)",
            server_round,
            protocol.masked_vectors,
            protocol.num_shares,
            protocol.threshold,
        )

        replies = grid.send_and_receive(
            strategy.configure_evaluate(
                server_round, arrays, ConfigRecord(dict(config)), grid
            ),
            timeout=spec.round_timeout_s,
        )
        strategy.aggregate_evaluate(server_round, replies)
    return arrays


def check_round(
    spec: JobSpec,
    server_round: int,
    protocol: ProtocolRecord,
    previous: ArrayRecord,
) -> list[np.ndarray]:
    """Return the round's aggregate, or raise if SecAgg+ did not produce one."""
    where = f"job {spec.id!r}, round {server_round}"

    missing = [stage for stage in STAGES if stage not in protocol.stages]
    if missing:
        raise SecureAggregationError(
            f"SecAgg+ halted in {where} before the stage {missing[0]!r} completed "
            f"({protocol.masked_vectors} masked update(s) of "
            f"{len(protocol.sampled)} sampled cities); check the nodes' logs"
        )

    short = {
        node: count
        for node in sorted(protocol.sampled)
        if (count := protocol.shares.get(node, 0)) < protocol.threshold
    }
    if short:
        raise SecureAggregationError(
            f"SecAgg+ in {where}: nodes {short!r} have fewer than "
            f"{protocol.threshold} key shares; their masks cannot be removed"
        )
    if protocol.masked_vectors < spec.min_nodes:
        raise SecureAggregationError(
            f"SecAgg+ in {where} summed {protocol.masked_vectors} masked "
            f"update(s), fewer than min_nodes = {spec.min_nodes}"
        )

    aggregated = protocol.aggregated
    if aggregated is None:
        raise SecureAggregationError(
            f"SecAgg+ in {where} completed but passed no aggregate to the strategy"
        )
    reference = previous.to_numpy_ndarrays()
    if [a.shape for a in aggregated] != [r.shape for r in reference]:
        raise SecureAggregationError(
            f"SecAgg+ in {where} returned arrays of shapes "
            f"{[a.shape for a in aggregated]!r}, expected "
            f"{[r.shape for r in reference]!r}"
        )
    if not all(np.all(np.isfinite(a)) for a in aggregated):
        raise SecureAggregationError(
            f"SecAgg+ in {where} returned NaN or infinite weights"
        )
    if all(
        np.array_equal(a.astype(r.dtype), r)
        for a, r in zip(aggregated, reference, strict=True)
    ):
        raise SecureAggregationError(
            f"SecAgg+ in {where} left the global model unchanged"
        )
    return aggregated


def _legacy_context(
    context: Context,
    spec: JobSpec,
    strategy: _RoundStrategy,
    server_round: int,
    arrays: ArrayRecord,
) -> LegacyContext:
    """Build the context SecAggPlusWorkflow reads the round and model from."""
    fresh = Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config=context.node_config,
        state=RecordDict(),
        run_config=context.run_config,
    )
    legacy = LegacyContext(
        fresh,
        config=ServerConfig(num_rounds=spec.rounds, round_timeout=spec.round_timeout_s),
        strategy=strategy,
        client_manager=SimpleClientManager(),
    )
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: server_round}
    )
    legacy.state.array_records[MAIN_PARAMS_RECORD] = arrays
    return legacy


def _named_arrays(reference: ArrayRecord, arrays: list[np.ndarray]) -> ArrayRecord:
    """Return ``arrays`` under the names and dtypes of ``reference``.

    Legacy parameters are an unnamed list, so the names come from the model.
    """
    named = {}
    for (name, old), new in zip(reference.items(), arrays, strict=True):
        dtype = old.numpy().dtype
        named[name] = Array(np.ascontiguousarray(new, dtype=dtype))
    return ArrayRecord(named)
