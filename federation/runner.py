"""Start a federated job and collect its result.

``run_job`` runs the ServerApp and one ClientApp per city. In ``"inprocess"`` mode
all of them run in this process (see ``inprocess.InProcessGrid``). The ServerApp
writes the same result files in every mode, and ``run_job`` reads them back.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from citymesh.errors import InvalidInput

from .client_app import make_client_app
from .contributions import GTG_METHODS, Contribution, score_contributions
from .deployment import LocalFederation
from .inprocess import InProcessGrid, run_server_app
from .privacy import check_job_budget
from .server_app import (
    MODEL_FILE,
    RESULT_FILE,
    make_server_app,
    require_supported_privacy,
)
from .spec import JobSpec
from .strategy import RoundRecord
from .valuation import CONTRIBUTIONS_KEY

log = logging.getLogger("citymesh.federation")

RUN_MODES = ("inprocess", "deployment")

TrainCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CityMetrics:
    """One city's scores on its own test split, and its train rows, in one round."""

    auc: float
    accuracy: float
    test_rows: int
    train_rows: int


@dataclass(frozen=True)
class RoundMetrics:
    """Pooled and per-city metrics after one round."""

    round: int
    auc: float
    accuracy: float
    seconds: float
    per_city: dict[str, CityMetrics]
    rejected: dict[str, str] = field(default_factory=dict)
    failures: int = 0
    epsilon: float | None = None


@dataclass
class JobResult:
    """The outcome of a federated job."""

    job_id: str
    rounds: list[RoundMetrics]
    final_auc: float
    final_accuracy: float
    model_state: dict[str, torch.Tensor]
    contributions: dict[str, Contribution]
    encoding: dict[str, object]
    seconds: float
    rows_per_city: dict[str, int]
    output_dir: Path | None = None
    # The ServerApp's GTG-Shapley record (values, rounds, cost), or its error.
    gtg_shapley: dict[str, object] | None = None

    @property
    def epsilon(self) -> float | None:
        """Epsilon spent by the job on each member dataset, or None without DP."""
        spent = [r.epsilon for r in self.rounds if r.epsilon is not None]
        return spent[-1] if spent else None

    def to_dict(self) -> dict[str, object]:
        """Return the result without the model weights, as JSON-compatible data."""
        return {
            "job_id": self.job_id,
            "final_auc": self.final_auc,
            "final_accuracy": self.final_accuracy,
            "epsilon": self.epsilon,
            "seconds": self.seconds,
            "rows_per_city": self.rows_per_city,
            "rounds": [_round_to_dict(r) for r in self.rounds],
            "contributions": {c: vars(v) for c, v in self.contributions.items()},
            "encoding": self.encoding,
            "gtg_shapley": self.gtg_shapley,
        }


def run_job(
    spec: JobSpec,
    datasets: dict[str, Path],
    *,
    on_round: TrainCallback | None = None,
    on_metrics: Callable[[RoundMetrics], None] | None = None,
    mode: str = "inprocess",
    usage_logs: dict[str, Path] | None = None,
    dataset_ids: dict[str, str] | None = None,
    output_dir: Path | None = None,
    contributions: str = "loo",
    max_update_norm: float | None = None,
    federation: LocalFederation | None = None,
    approvals: dict[str, Path] | None = None,
) -> JobResult:
    """Run ``spec`` over the cities' Parquet files and return metrics, model and scores.

    mode is "inprocess" (ServerApp and ClientApps in this process) or "deployment"
    (a SuperLink and one SuperNode per city as subprocesses). In deployment mode,
    ``federation`` may name a running ``LocalFederation`` whose nodes serve the
    cities. Otherwise one is started for the job in a temporary folder and
    stopped afterwards, and ``datasets`` and ``usage_logs`` go into its node
    configs.
    on_round(city, round, rows) is called once per accepted training update.
    on_metrics(RoundMetrics) is called after each round's evaluation. In
    deployment mode both are called after the run, from its result file.
    usage_logs maps a city to its node's usage log. The city's ClientApp appends a
    ``train_round`` event there per round. dataset_ids maps a city to the catalog id
    recorded in those events (default: the spec's ``datasets``).
    contributions is "none", "size", "loo" (size and leave-one-out) or "shapley"
    (size, leave-one-out and Shapley values). Leave-one-out and Shapley retrain
    the job on subsets of cities in the same mode; in process mode the cities log
    those rounds under the job id ``<job>-subset-<cities>``. "gtg" (size and
    GTG-Shapley) needs no retraining: the ServerApp rebuilds coalition models from
    the rounds' updates and the cities score them. "loo+gtg" adds leave-one-out.
    approvals maps a city to its node's approval file. The city's ClientApp then
    runs the job only if its operator approved this spec and code.
    """
    if mode not in RUN_MODES:
        raise InvalidInput(f"run mode {mode!r} is unknown; use one of {RUN_MODES!r}")
    if not datasets:
        raise InvalidInput("datasets is empty; give one Parquet path per city")
    if len(datasets) < spec.min_nodes:
        raise InvalidInput(
            f"job needs min_nodes = {spec.min_nodes} cities but datasets names "
            f"{len(datasets)}: {sorted(datasets)!r}"
        )
    require_supported_privacy(spec)
    check_job_budget(spec)
    if spec.privacy.mode == "secagg" and contributions in ("loo", "shapley", "loo+gtg"):
        # A retrained subset of one city would show the hub that city's model.
        smallest = 1 if contributions == "shapley" else len(datasets) - 1
        if smallest < 2:
            raise InvalidInput(
                f"contributions {contributions!r} retrain subsets of {smallest} "
                "city, which secure aggregation cannot protect; use 'size'"
            )
    gtg_method = "gtg" if contributions in GTG_METHODS else ""
    started = time.perf_counter()
    with ExitStack() as stack:
        directory = stack.enter_context(_output_dir(output_dir))
        if mode == "inprocess":
            _run_inprocess(
                spec,
                datasets,
                directory,
                usage_logs=usage_logs or {},
                dataset_ids=dataset_ids or {},
                on_round=on_round,
                on_metrics=on_metrics,
                max_update_norm=max_update_norm,
                approvals=approvals or {},
                contribution_method=gtg_method,
            )

            def retrain(subset: dict[str, Path]) -> float:
                return _retrain_inprocess(
                    spec, subset, max_update_norm, usage_logs or {}, dataset_ids or {}
                )

        else:
            if federation is None:
                federation = stack.enter_context(
                    _temporary_federation(
                        spec, datasets, usage_logs, dataset_ids, approvals
                    )
                )
            _run_deployment(spec, federation, directory, max_update_norm, gtg_method)

            def retrain(subset: dict[str, Path]) -> float:
                return _retrain_deployment(
                    spec, subset, federation, dataset_ids or {}, max_update_norm
                )

        result = read_result(directory)
        if mode != "inprocess":
            _replay(result, on_round, on_metrics)
        result.seconds = time.perf_counter() - started
        result.output_dir = output_dir
        result.contributions = score_contributions(
            spec, datasets, result, method=contributions, retrain=retrain
        )
    return result


def _replay(
    result: JobResult,
    on_round: TrainCallback | None,
    on_metrics: Callable[[RoundMetrics], None] | None,
) -> None:
    """Call the callbacks from a finished run's records, in round order."""
    for metrics in result.rounds:
        for city, part in metrics.per_city.items():
            if on_round is not None and part.train_rows:
                on_round(city, metrics.round, part.train_rows)
        if on_metrics is not None:
            on_metrics(metrics)


def _subset_spec(
    spec: JobSpec, cities: list[str], dataset_ids: dict[str, str]
) -> JobSpec:
    """Return the spec restricted to ``cities``, each named with its dataset id."""
    datasets = {
        city: spec.datasets.get(city) or dataset_ids.get(city) or city
        for city in cities
    }
    # The subset run is a use of the data of its own, so its usage events carry
    # their own job id. NOTE: a node that requires approvals rejects subset runs
    # that its operator did not approve, and leave-one-out then fails.
    return JobSpec.from_dict(
        {
            **spec.to_dict(),
            "job_id": f"{spec.id}:cities={'+'.join(cities)}",
            "datasets": datasets,
            "min_nodes": min(spec.min_nodes, len(cities)),
        }
    )


def _retrain_inprocess(
    spec: JobSpec,
    datasets: dict[str, Path],
    max_update_norm: float | None,
    usage_logs: dict[str, Path],
    dataset_ids: dict[str, str],
) -> float:
    """Train the job on a subset of cities and return its final pooled AUC.

    The subset run uses the cities' data, so each city's node logs its rounds under
    the job id ``<job>-subset-<cities>``, which ties them to the scored job.
    """
    subset_spec = JobSpec.from_dict(
        {
            **spec.to_dict(),
            "job_id": f"{spec.id}-subset-{'-'.join(sorted(datasets))}",
            "min_nodes": min(spec.min_nodes, len(datasets)),
        }
    )
    with _output_dir(None) as directory:
        _run_inprocess(
            subset_spec,
            datasets,
            directory,
            usage_logs={c: p for c, p in usage_logs.items() if c in datasets},
            dataset_ids={
                c: dataset_ids.get(c, spec.datasets.get(c, "")) for c in datasets
            },
            on_round=None,
            on_metrics=None,
            max_update_norm=max_update_norm,
        )
        return read_result(directory).final_auc


def _run_deployment(
    spec: JobSpec,
    federation: LocalFederation,
    output_dir: Path,
    max_update_norm: float | None,
    contribution_method: str = "",
) -> None:
    extra = {CONTRIBUTIONS_KEY: contribution_method} if contribution_method else None
    run_id = federation.submit(spec, output_dir, max_update_norm, extra)
    # Each round has a train and an evaluate exchange, plus the statistics step.
    exchanges = 2 * spec.rounds + 1
    if contribution_method:
        # GTG-Shapley scores coalitions in about one exchange per city, more
        # when it samples permutations (over 5 cities).
        exchanges += 2 * len(spec.datasets) + 1
    timeout = spec.round_timeout_s * exchanges
    federation.wait(run_id, timeout)


def _retrain_deployment(
    spec: JobSpec,
    datasets: dict[str, Path],
    federation: LocalFederation,
    dataset_ids: dict[str, str],
    max_update_norm: float | None,
) -> float:
    subset_spec = _subset_spec(spec, sorted(datasets), dataset_ids)
    with _output_dir(None) as directory:
        _run_deployment(subset_spec, federation, directory, max_update_norm)
        return read_result(directory).final_auc


@contextmanager
def _temporary_federation(
    spec: JobSpec,
    datasets: dict[str, Path],
    usage_logs: dict[str, Path] | None,
    dataset_ids: dict[str, str] | None,
    approvals: dict[str, Path] | None,
) -> Iterator[LocalFederation]:
    configs = node_configs(spec, datasets, usage_logs, dataset_ids, approvals)
    nodes = {str(config.pop("city")): config for config in configs}
    with (
        tempfile.TemporaryDirectory(prefix="citymesh-federation-") as workspace,
        LocalFederation(Path(workspace), nodes) as federation,
    ):
        yield federation


def job_run_config(
    spec: JobSpec,
    output_dir: Path,
    max_update_norm: float | None = None,
    contribution_method: str = "",
) -> dict[str, object]:
    """Return the ServerApp run config for a job writing into ``output_dir``.

    ``contribution_method`` "gtg" makes the ServerApp estimate GTG-Shapley values.
    """
    run_config: dict[str, object] = {
        "job-spec": spec.to_json(),
        "output-dir": str(output_dir),
    }
    if max_update_norm is not None:
        run_config["max-update-norm"] = float(max_update_norm)
    if contribution_method:
        run_config[CONTRIBUTIONS_KEY] = contribution_method
    return run_config


def node_configs(
    spec: JobSpec,
    datasets: dict[str, Path],
    usage_logs: dict[str, Path] | None = None,
    dataset_ids: dict[str, str] | None = None,
    approvals: dict[str, Path] | None = None,
) -> list[dict[str, object]]:
    """Return one ClientApp node config per city, in city order."""
    usage_logs = usage_logs or {}
    dataset_ids = dataset_ids or {}
    approvals = approvals or {}
    configs = []
    for city, path in sorted(datasets.items()):
        config: dict[str, object] = {"city": city, "data-path": str(path)}
        if city in usage_logs:
            config["usage-log"] = str(usage_logs[city])
        dataset_id = dataset_ids.get(city, spec.datasets.get(city))
        if dataset_id:
            config["dataset-id"] = dataset_id
        if city in approvals:
            config["approvals"] = str(approvals[city])
        configs.append(config)
    return configs


def _run_inprocess(
    spec: JobSpec,
    datasets: dict[str, Path],
    output_dir: Path,
    *,
    usage_logs: dict[str, Path],
    dataset_ids: dict[str, str],
    on_round: TrainCallback | None,
    on_metrics: Callable[[RoundMetrics], None] | None,
    max_update_norm: float | None,
    approvals: dict[str, Path] | None = None,
    contribution_method: str = "",
) -> None:
    run_config = job_run_config(spec, output_dir, max_update_norm, contribution_method)
    configs = node_configs(spec, datasets, usage_logs, dataset_ids, approvals)

    def report_round(record: RoundRecord) -> None:
        if on_metrics is not None:
            on_metrics(_round_metrics(json.loads(json.dumps(_record_dict(record)))))

    server_app = make_server_app(on_train=on_round, on_round=report_round)
    grid = InProcessGrid(make_client_app(), configs, run_config=run_config)
    try:
        with single_torch_thread():
            run_server_app(server_app, grid, run_config)
    finally:
        grid.close()


def read_result(output_dir: Path) -> JobResult:
    """Read the result files a ServerApp wrote into ``output_dir``."""
    data = json.loads((output_dir / RESULT_FILE).read_text())
    state = torch.load(output_dir / MODEL_FILE, weights_only=True)
    rounds = [_round_metrics(r) for r in data["rounds"]]
    last = rounds[-1]
    rows: dict[str, int] = {}
    for metrics in rounds:
        for city, part in metrics.per_city.items():
            rows[city] = max(rows.get(city, 0), part.train_rows + part.test_rows)
    return JobResult(
        job_id=data["spec"]["job_id"] or data["spec"]["name"],
        rounds=rounds,
        final_auc=last.auc,
        final_accuracy=last.accuracy,
        model_state=state,
        contributions={},
        encoding=data["encoding"],
        seconds=float(data["seconds"]),
        rows_per_city=rows,
        output_dir=output_dir,
        gtg_shapley=data.get("contributions"),
    )


def _record_dict(record: RoundRecord) -> dict[str, object]:
    return {
        "round": record.round,
        "seconds": record.seconds,
        "auc": record.auc,
        "accuracy": record.accuracy,
        "cities": {city: vars(c) for city, c in record.cities.items()},
        "rejected": dict(record.rejected),
        "failures": record.failures,
        "epsilon": record.epsilon,
    }


def _round_metrics(data: dict[str, object]) -> RoundMetrics:
    cities = dict(data["cities"])  # type: ignore[call-overload]
    return RoundMetrics(
        round=int(data["round"]),  # type: ignore[call-overload]
        auc=float(data["auc"]),  # type: ignore[arg-type]
        accuracy=float(data["accuracy"]),  # type: ignore[arg-type]
        seconds=float(data["seconds"]),  # type: ignore[arg-type]
        per_city={
            city: CityMetrics(
                auc=float(c["auc"]),
                accuracy=float(c["accuracy"]),
                test_rows=int(c["test_rows"]),
                train_rows=int(c["train_rows"]),
            )
            for city, c in sorted(cities.items())
        },
        rejected=dict(data.get("rejected", {})),  # type: ignore[call-overload]
        failures=int(data.get("failures", 0)),  # type: ignore[call-overload]
        epsilon=data.get("epsilon"),  # type: ignore[arg-type]
    )


def _round_to_dict(metrics: RoundMetrics) -> dict[str, object]:
    return {
        "round": metrics.round,
        "auc": metrics.auc,
        "accuracy": metrics.accuracy,
        "seconds": metrics.seconds,
        "per_city": {city: vars(m) for city, m in metrics.per_city.items()},
        "rejected": metrics.rejected,
        "failures": metrics.failures,
        "epsilon": metrics.epsilon,
    }


@contextmanager
def _output_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="citymesh-job-") as directory:
        yield Path(directory)


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run torch single-threaded, because ClientApps already run in parallel threads.

    Torch's intra-op threads on top of one thread per ClientApp would oversubscribe
    the cores. The caller's setting is restored afterwards.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
