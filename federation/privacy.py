"""Differential privacy: the (epsilon, delta) a job spends, and per-dataset budgets.

Privacy mode ``dp`` wraps the job's FedAvg in Flower's
``DifferentialPrivacyServerSideFixedClipping``: the hub clips each city's model
update to ``clipping_norm`` (L2) and adds Gaussian noise with standard deviation
``noise_multiplier * clipping_norm / cities`` to their unweighted mean. The unit of
privacy is a whole city dataset (client-level DP), and the hub is trusted to clip
and add noise, because it receives each city's update before noise (central DP).
Flower's wrapper was chosen over Opacus DP-SGD, which would protect single rows,
because it needs no change to local training and runs at full speed; Opacus is
not a dependency of citymesh.

The spend is counted with Flower's Renyi-DP accountant (``flwr.serverapp.
RdpAccountant``, which needs the ``dp-accounting`` package): one Gaussian release
per round, without amplification by sampling, since every member city takes part
in every round. The spend depends only on the noise multiplier and the number of
rounds, so a node can compute it from the job spec before the job starts.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from pathlib import Path

from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)

from citymesh.errors import InvalidInput, PolicyViolation

from .json_file import LockedJsonFile
from .spec import JobSpec, PrivacySpec

log = logging.getLogger("citymesh.federation")


def make_accountant(privacy: PrivacySpec, cities: int) -> RdpAccountant:
    """Return Flower's RDP accountant for a job over ``cities`` member cities."""
    config = PrivacyConfig(
        target_delta=privacy.delta,
        population_size=cities,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
    )
    return RdpAccountant(config)


def release_event(privacy: PrivacySpec, cities: int) -> GaussianPrivacyEvent:
    """Return the privacy event of one round's noisy aggregate."""
    return GaussianPrivacyEvent(
        noise_multiplier=privacy.noise_multiplier,
        sample_size=cities,
        population_size=cities,
    )


def planned_epsilon(spec: JobSpec) -> float:
    """Return the epsilon (at the spec's delta) that the job spends in all rounds.

    Returns 0 when the job does not use differential privacy.
    """
    privacy = spec.privacy
    if privacy.mode != "dp":
        return 0.0
    if privacy.noise_multiplier <= 0:
        raise InvalidInput(
            "privacy mode 'dp' needs noise_multiplier > 0, got "
            f"{privacy.noise_multiplier!r}"
        )
    # The spend without amplification does not depend on the number of cities.
    accountant = make_accountant(privacy, cities=1)
    accountant.compose(release_event(privacy, cities=1), count=spec.rounds)
    return float(accountant.get_privacy_spent().epsilon)


def check_job_budget(spec: JobSpec) -> float:
    """Return the job's planned epsilon, or raise if it exceeds the spec's budget."""
    epsilon = planned_epsilon(spec)
    budget = spec.privacy.epsilon_budget
    if budget is not None and epsilon > budget:
        raise PolicyViolation(
            f"job {spec.id!r} would spend epsilon {epsilon:.3f} in {spec.rounds} "
            f"rounds, above its budget {budget:.3f}; raise noise_multiplier or "
            "lower rounds"
        )
    return epsilon


class PrivacyBudgets:
    """A node's per-dataset epsilon budgets and spends, in a JSON file.

    File layout: ``{dataset_id: {"budget": float, "jobs": {job_id: epsilon}}}``.
    A file lock serializes changes, because each ClientApp call may run in its
    own process.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def set_budget(self, dataset_id: str, epsilon: float) -> None:
        """Set the total epsilon that jobs may spend on ``dataset_id``."""
        if epsilon < 0:
            raise InvalidInput(f"privacy budget must be >= 0, got {epsilon!r}")
        with self._locked() as data:
            entry = data.setdefault(dataset_id, {"budget": 0.0, "jobs": {}})
            entry["budget"] = float(epsilon)

    def budget(self, dataset_id: str) -> float | None:
        """Return the dataset's budget, or None when it has none."""
        entry = self._read().get(dataset_id)
        return None if entry is None else float(entry["budget"])

    def spent(self, dataset_id: str) -> float:
        """Return the epsilon that accepted jobs spend on ``dataset_id``."""
        entry = self._read().get(dataset_id, {"jobs": {}})
        return float(sum(entry["jobs"].values()))

    def reserved(self, dataset_id: str, job_id: str) -> float | None:
        """Return the epsilon reserved for the job, or None when it has none."""
        entry = self._read().get(dataset_id, {"jobs": {}})
        value = entry["jobs"].get(job_id)
        return None if value is None else float(value)

    def reserve(self, dataset_id: str, job_id: str, epsilon: float) -> float:
        """Record ``epsilon`` for the job, or raise PolicyViolation past the budget.

        Reserving again for the same job replaces its earlier amount. Returns the
        dataset's total spend after the reservation. A dataset without a budget
        accepts no differentially private job.
        """
        with self._locked() as data:
            entry = data.get(dataset_id)
            if entry is None:
                raise PolicyViolation(
                    f"dataset {dataset_id!r} has no privacy budget; set one before "
                    "it takes part in a differentially private job"
                )
            others = sum(v for j, v in entry["jobs"].items() if j != job_id)
            total = others + epsilon
            if total > entry["budget"]:
                raise PolicyViolation(
                    f"job {job_id!r} would bring the epsilon spent on dataset "
                    f"{dataset_id!r} to {total:.3f}, above its budget "
                    f"{entry['budget']:.3f}"
                )
            entry["jobs"][job_id] = float(epsilon)
        log.info(
            "dataset %s: job %s reserved epsilon %.3f (total %.3f)",
            dataset_id,
            job_id,
            epsilon,
            total,
        )
        return total

    def _read(self) -> dict[str, dict]:
        return LockedJsonFile(self.path).read()

    def _locked(self) -> AbstractContextManager[dict[str, dict]]:
        return LockedJsonFile(self.path).locked()
