"""Validate and run a federated job on a network folder made by ``citymesh demo``.

A run restarts the folder's chain and city nodes, resolves each city's dataset
through that node's catalog, checks the job against the catalog entries and
each node's approval, and trains. Each city's ClientApp appends its
``train_round`` events to the node's usage log and checks the node's approval
itself. Then every node anchors its new events and the job's budget is settled
on chain, split by contribution, with the scores and the model's hash in the
settlement memo. Everything is written to ``<network>/jobs/<job_id>/`` (see
``citymesh.job_files``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from citymesh.errors import CitymeshError, InvalidInput, NotFound, PolicyViolation
from citymesh.federation import JobResult, JobSpec, RoundMetrics
from citymesh.federation.approval import Approvals
from citymesh.federation.encoding import FeatureEncoding
from citymesh.job_approval import approvals_path
from citymesh.job_files import JobFolder, atomic_write_bytes
from citymesh.model_export import export_model
from citymesh.network import Network

logger = logging.getLogger("citymesh.jobs")

__all__ = [
    "JobValidation",
    "default_contributions",
    "run_network_job",
    "validate_network_job",
]

SECONDS_PER_DAY = 86_400


@dataclass
class JobValidation:
    """The outcome of checking a job spec against the catalogs it names."""

    job_id: str
    problems: list[str]
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "valid": self.ok,
            "problems": list(self.problems),
            "datasets": self.datasets,
        }


def default_contributions(mode: str) -> str:
    """Return the contribution method a run uses when none is given.

    GTG-Shapley needs no retraining, so nodes that approved only the job itself
    accept it in both modes. Leave-one-out retrains subsets of cities, and in
    deployment mode each subset is a job of its own that the nodes reject
    unless their operators approved it too.
    """
    return "gtg"


def catalog_entries(network: Network, spec: JobSpec) -> dict[str, Any]:
    """Return each named city's catalog entry, or None when the city or id is unknown.

    The entries are read from the nodes' catalog databases in the network folder.
    """
    from citymesh.catalog.store import CatalogStore
    from citymesh.node.settings import load_settings

    entries: dict[str, Any] = {}
    for city, dataset_id in sorted(spec.datasets.items()):
        if city not in network.cities:
            entries[city] = None
            continue
        store = CatalogStore(load_settings(network.home(city)).database)
        try:
            entries[city] = store.get(dataset_id)
        except NotFound:
            entries[city] = None
        finally:
            store.close()
    return entries


def resolve_datasets(network: Network, spec: JobSpec) -> JobSpec:
    """Return ``spec`` with the datasets its ``[match]`` section selects in each city.

    A spec that already names datasets is returned unchanged. In each city asked,
    at most one catalog entry may have a code under ``match.code`` and every column
    in ``match.columns``. A city with none takes no part. A city with several raises
    InvalidInput, so that the data scientist names one by id.
    """
    from citymesh.catalog.store import CatalogStore, SearchQuery
    from citymesh.node.settings import load_settings

    match = spec.match
    if spec.datasets or not match.code:
        return spec
    unknown = sorted(set(match.cities) - set(network.cities))
    if unknown:
        raise InvalidInput(
            f"[match] cities {unknown!r} have no node in the network; it has "
            f"{network.cities!r}"
        )
    required_columns = set(match.columns)
    datasets: dict[str, str] = {}
    for city in match.cities or network.cities:
        store = CatalogStore(load_settings(network.home(city)).database)
        try:
            page = store.search(SearchQuery(code_prefix=match.code, limit=1000))
            fitting = [
                entry.id
                for entry in page.items
                if required_columns <= {column["name"] for column in entry.columns}
            ]
        finally:
            store.close()
        if len(fitting) > 1:
            raise InvalidInput(
                f"[match] selects {len(fitting)} datasets at {city!r}: {fitting!r}; "
                "name one per city under [datasets]"
            )
        if fitting:
            datasets[city] = fitting[0]
    if not datasets:
        raise NotFound(
            f"no city has a dataset under code {match.code!r} with columns "
            f"{sorted(required_columns)!r}"
        )
    return replace(spec, datasets=datasets)


def resolved_spec_text(spec_text: str, spec: JobSpec) -> str:
    """Return the spec file's text with a ``[datasets]`` table for a resolved match."""
    if "[datasets]" in spec_text or not spec.datasets:
        return spec_text
    lines = ["", "[datasets]  # resolved from [match]"]
    lines += [
        f"{city} = {json.dumps(dataset)}" for city, dataset in spec.datasets.items()
    ]
    return spec_text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"


def validate_network_job(spec: JobSpec, network_dir: Path) -> JobValidation:
    """Check ``spec`` against the catalogs of the network's nodes that it names."""
    from citymesh.federation.validate import job_problems

    network = Network.open(network_dir)
    spec = resolve_datasets(network, spec)
    entries = catalog_entries(network, spec)
    problems = [
        f"city {city!r} has no node in {str(network_dir)!r}; the network has "
        f"{network.cities!r}"
        for city in sorted(spec.datasets)
        if city not in network.cities
    ]
    problems += job_problems(spec, entries)
    datasets = {
        city: (
            {"id": spec.datasets[city], "found": False}
            if entry is None
            else {
                "id": entry.id,
                "found": True,
                "rows": entry.rows,
                "grade": entry.grade,
            }
        )
        for city, entry in entries.items()
    }
    return JobValidation(spec.id, problems, datasets)


def check_approvals(network: Network, spec: JobSpec) -> dict[str, Path]:
    """Return each city's approval file if every city approved this spec and code.

    Raises PolicyViolation naming each city whose operator has not.
    """
    paths = {city: approvals_path(network.home(city)) for city in spec.datasets}
    unapproved: list[str] = []
    changed: list[str] = []
    for city, path in sorted(paths.items()):
        approvals = Approvals(path)
        try:
            approvals.check(spec)
        except PolicyViolation as exc:
            if approvals.get(spec.id) is None:
                unapproved.append(city)
            else:
                changed.append(f"{city}: {exc}")
    if unapproved or changed:
        parts = []
        if unapproved:
            parts.append(f"is not approved at {', '.join(unapproved)}")
        if changed:
            parts.append(f"has a stale approval ({'; '.join(changed)})")
        raise PolicyViolation(
            f"job {spec.id!r} {' and '.join(parts)}; each city's operator must run "
            "`citymesh job approve SPEC --home NODE_HOME`"
        )
    return paths


def run_network_job(
    spec_path: Path,
    network_dir: Path,
    *,
    mode: str = "inprocess",
    contributions: str | None = None,
    epoch: int | None = None,
) -> dict[str, Any]:
    """Run the job in ``spec_path`` on the network in ``network_dir``.

    Returns the summary written to result.json. The job's status.json goes from
    queued to running to succeeded, or to failed with the error, which is then
    raised again.
    """
    spec = JobSpec.from_toml(spec_path)
    network = Network.open(network_dir)
    spec = resolve_datasets(network, spec)
    spec_text = resolved_spec_text(Path(spec_path).read_text(), spec)
    folder = JobFolder(network_dir, spec.id)
    folder.create()
    atomic_write_bytes(folder.file("spec.toml"), spec_text.encode())
    method = contributions or default_contributions(mode)
    folder.set_state("queued", mode=mode, contributions=method, rounds=spec.rounds)
    with folder.logging() as log:
        log.info("job %s queued on %s in %s mode", spec.id, network_dir, mode)
        try:
            with network:
                summary = _run(network, spec, folder, log, mode, method, epoch)
        except CitymeshError as exc:
            folder.set_state("failed", error=str(exc))
            log.error("job %s failed: %s", spec.id, exc)
            raise
        except BaseException as exc:
            # Also an interrupt (Ctrl-C), so that no job stays "running".
            folder.set_state("failed", error=f"{type(exc).__name__}: {exc}")
            log.exception("job %s failed unexpectedly", spec.id)
            raise
    return summary


def _run(
    network: Network,
    spec: JobSpec,
    folder: JobFolder,
    log: logging.Logger,
    mode: str,
    method: str,
    epoch: int | None,
) -> dict[str, Any]:
    from citymesh.federation import run_job
    from citymesh.federation.validate import validate_job

    if not logger.isEnabledFor(logging.DEBUG):
        # Flower sets its logger's level when imported; its per-round summary
        # repeats the job's own round lines.
        logging.getLogger("flwr").setLevel(logging.WARNING)
    # The catalogs and approval files are files in the network folder, so a job
    # that cannot run fails before any process starts.
    missing = sorted(set(spec.datasets) - set(network.cities))
    if missing:
        raise NotFound(
            f"job {spec.id!r} names cities {missing!r} without a node in the network"
        )
    validate_job(spec, catalog_entries(network, spec))
    approvals = check_approvals(network, spec)

    log.info("starting the chain and %d city nodes", len(network.cities))
    network.start_chain(deploy=False)
    network.start_nodes()
    datasets = {
        city: network.dataset_path(city, dataset_id)
        for city, dataset_id in spec.datasets.items()
    }
    usage_logs = {city: network.usage_path(city) for city in spec.datasets}

    folder.set_state("running", round=0)
    log.info("job %s running on %s", spec.id, sorted(datasets))
    progress: list[RoundMetrics] = []

    def on_metrics(metrics: RoundMetrics) -> None:
        progress.append(metrics)
        folder.write_json("metrics.json", {"rounds": [_round(m) for m in progress]})
        folder.update(round=metrics.round, auc=metrics.auc)
        log.info(
            "round %d/%d: pooled AUC %.4f, accuracy %.4f, %.2f s",
            metrics.round,
            spec.rounds,
            metrics.auc,
            metrics.accuracy,
            metrics.seconds,
        )

    result = run_job(
        spec,
        datasets,
        on_metrics=on_metrics,
        mode=mode,
        usage_logs=usage_logs,
        approvals=approvals,
        contributions=method,
    )
    summary = _write_outputs(folder, spec, result, method)
    log.info(
        "model saved: %s (sha256 %s)",
        summary["model"]["export"],
        summary["model"]["sha256"],
    )

    summary["anchors"] = _anchor(network)
    summary["settlement"] = _settle(network, spec, result, summary, epoch, log)
    folder.write_json("settlement.json", summary["settlement"])
    folder.write_json("result.json", summary)
    folder.set_state(
        "succeeded",
        round=len(result.rounds),
        auc=result.final_auc,
        accuracy=result.final_accuracy,
    )
    log.info("job %s succeeded: AUC %.4f", spec.id, result.final_auc)
    return summary


def _write_outputs(
    folder: JobFolder, spec: JobSpec, result: JobResult, method: str
) -> dict[str, Any]:
    """Write metrics, privacy, contributions, model and export; return the summary."""
    folder.write_json("metrics.json", {"rounds": [_round(m) for m in result.rounds]})
    privacy = _privacy(spec, result)
    folder.write_json("privacy.json", privacy)
    contributions = {
        "method": method,
        "per_city": {city: vars(c) for city, c in result.contributions.items()},
        "gtg": result.gtg_shapley,
    }
    folder.write_json("contributions.json", contributions)

    buffer = io.BytesIO()
    torch.save(result.model_state, buffer)
    model_bytes = buffer.getvalue()
    atomic_write_bytes(folder.file("model.pt"), model_bytes)
    folder.write_json("encoding.json", result.encoding)
    width = FeatureEncoding.from_dict(dict(result.encoding)).width
    exported = export_model(spec, result.model_state, width, folder.path)
    return {
        "job_id": spec.id,
        "final_auc": result.final_auc,
        "final_accuracy": result.final_accuracy,
        "rounds": len(result.rounds),
        "seconds": result.seconds,
        "rows_per_city": result.rows_per_city,
        "privacy": privacy,
        "contributions": contributions["per_city"],
        "contribution_method": method,
        "model": {
            "state_dict": "model.pt",
            "sha256": hashlib.sha256(model_bytes).hexdigest(),
            "export": exported.path.name,
            "format": exported.format,
            "inputs": exported.inputs,
            "encoding": "encoding.json",
        },
    }


def _privacy(spec: JobSpec, result: JobResult) -> dict[str, Any]:
    epsilon = result.epsilon
    return {
        "mode": spec.privacy.mode,
        "epsilon": epsilon,
        "delta": spec.privacy.delta if epsilon is not None else None,
        "noise_multiplier": spec.privacy.noise_multiplier,
        "clipping_norm": spec.privacy.clipping_norm,
        # Every member city's dataset takes part in every round, so each one
        # spends the job's epsilon.
        "per_dataset": {
            dataset_id: {"city": city, "epsilon": epsilon}
            for city, dataset_id in sorted(spec.datasets.items())
        },
    }


def _anchor(network: Network) -> dict[str, Any]:
    anchored = {}
    for city in network.cities:
        outcome = network.operator(city).anchor()
        anchored[city] = {
            "head": outcome["head"],
            "roots": [batch["root"] for batch in outcome["batches"]],
        }
    return anchored


def _settle(
    network: Network,
    spec: JobSpec,
    result: JobResult,
    summary: dict[str, Any],
    epoch: int | None,
    log: logging.Logger,
) -> dict[str, Any]:
    """Settle the job's budget on chain, split by contribution."""
    from citymesh.incentives import settle_job

    if spec.budget <= 0:
        log.info("job %s has no budget; nothing to settle", spec.id)
        return {"skipped": "the job's budget is 0"}
    contributions = result.contributions
    rows = {city: c.rows for city, c in contributions.items()} or result.rows_per_city
    gain_method = "size"
    gains: dict[str, float] = {}
    if contributions and all(c.shapley is not None for c in contributions.values()):
        gain_method = "shapley"
        gains = {city: float(c.shapley or 0.0) for city, c in contributions.items()}
    elif contributions and all(c.loo is not None for c in contributions.values()):
        gain_method = "loo"
        gains = {city: float(c.loo or 0.0) for city, c in contributions.items()}
    epoch = epoch if epoch is not None else int(time.time() // SECONDS_PER_DAY)
    accounts = network.accounts()
    outcome = settle_job(
        network.admin_chain(),
        epoch=epoch,
        job_id=spec.id,
        model_hash=summary["model"]["sha256"],
        rows=rows,
        loo_gain=gains,
        budget=spec.budget,
        accounts={city: accounts[city] for city in rows},
    )
    outcome["gain"] = gain_method
    outcome["gains"] = gains
    outcome["model_hash"] = summary["model"]["sha256"]
    log.info(
        "settled %d credits for job %s in epoch %d (tx %s)",
        outcome["total"],
        spec.id,
        epoch,
        outcome["tx"],
    )
    return outcome


def _round(metrics: RoundMetrics) -> dict[str, Any]:
    return {
        "round": metrics.round,
        "auc": metrics.auc,
        "accuracy": metrics.accuracy,
        "seconds": metrics.seconds,
        "epsilon": metrics.epsilon,
        "rejected": dict(metrics.rejected),
        "failures": metrics.failures,
        "per_city": {city: vars(m) for city, m in metrics.per_city.items()},
    }


def require_valid(validation: JobValidation) -> None:
    """Raise InvalidInput listing the problems of an invalid job."""
    if not validation.ok:
        listed = "\n".join(f"- {p}" for p in validation.problems)
        raise InvalidInput(f"job {validation.job_id!r} is invalid:\n{listed}")
