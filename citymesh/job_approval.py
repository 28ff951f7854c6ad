"""A city operator's approval or refusal of a federated job at the city's node.

The operator reviews the job spec, the node's dataset that the job names and
the digest of the code that will run (``citymesh.federation.approval``). An
approval goes into the node's approval file, which the node's ClientApp checks
on every message, so the node runs nothing unapproved. Both decisions are
appended to the node's usage log as ``approval`` or ``refusal`` events, which
anchoring puts on the ledger.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citymesh.errors import InvalidInput, NotFound, PolicyViolation
from citymesh.federation import JobSpec
from citymesh.federation.approval import Approvals, code_digest, spec_digest

logger = logging.getLogger("citymesh.jobs")

__all__ = ["APPROVALS_FILE", "JobReview", "approvals_path", "decide_job", "review_job"]

# The node's approved jobs, in its home (see federation.approval.Approvals).
APPROVALS_FILE = "job-approvals.json"


def approvals_path(home: Path) -> Path:
    """Return the approval file of the node at ``home``."""
    return Path(home) / APPROVALS_FILE


@dataclass
class JobReview:
    """The facts an operator reviews before deciding on a job at one node."""

    city: str
    spec: JobSpec
    dataset: dict[str, Any]
    spec_sha256: str
    code_sha256: str
    problems: list[str] = field(default_factory=list)
    approved_before: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "city": self.city,
            "job_id": self.spec.id,
            "spec": self.spec.to_dict(),
            "dataset": self.dataset,
            "spec_sha256": self.spec_sha256,
            "code_sha256": self.code_sha256,
            "problems": list(self.problems),
            "approved_before": self.approved_before,
        }


def _settings(home: Path) -> Any:
    from citymesh.node.settings import CONFIG_FILE, load_settings

    if not (Path(home) / CONFIG_FILE).is_file():
        raise NotFound(
            f"{str(home)!r} is not a node home (no {CONFIG_FILE}); pass the folder "
            "made by `citymesh node init`"
        )
    return load_settings(Path(home))


def review_job(home: Path, spec: JobSpec) -> JobReview:
    """Collect what the operator of the node at ``home`` reviews for ``spec``.

    Raises InvalidInput when the job names no dataset of this node's city and
    NotFound when the node's catalog has no dataset with the named id.
    """
    from citymesh.catalog.store import CatalogStore
    from citymesh.federation.validate import job_problems

    settings = _settings(home)
    city = settings.city
    dataset_id = spec.datasets.get(city)
    if dataset_id is None:
        raise InvalidInput(
            f"job {spec.id!r} names no dataset of city {city!r} (it names "
            f"{sorted(spec.datasets)!r}); this node has nothing to approve"
        )
    store = CatalogStore(settings.database)
    try:
        entry = store.get(dataset_id)
    finally:
        store.close()
    # The checks that concern this node only: its columns, grade and budget.
    local = JobSpec.from_dict(
        {**spec.to_dict(), "datasets": {city: dataset_id}, "min_nodes": 1}
    )
    return JobReview(
        city=city,
        spec=spec,
        dataset={
            "id": entry.id,
            "title": entry.title,
            "rows": entry.rows,
            "grade": entry.grade,
            "code": entry.code,
            "columns": [str(column["name"]) for column in entry.columns],
        },
        spec_sha256=spec_digest(spec),
        code_sha256=code_digest(spec),
        problems=job_problems(local, {city: entry}),
        approved_before=Approvals(approvals_path(home)).get(spec.id) is not None,
    )


def decide_job(
    home: Path,
    spec: JobSpec,
    *,
    approve: bool,
    operator: str,
    reason: str = "",
) -> dict[str, Any]:
    """Record the operator's approval or refusal of ``spec`` at the node at ``home``.

    An approval is rejected with PolicyViolation while the review lists
    problems (a grade that forbids training, a missing column). A refusal
    withdraws an earlier approval of the job. Either way the decision is
    appended to the node's usage log, and the returned dict contains its
    sequence number (``seq``) and the review.
    """
    from citymesh.ledger.events import UsageEvent
    from citymesh.ledger.log import UsageLog

    if not operator:
        raise InvalidInput("operator is empty; name who decides, e.g. 'ewr-office'")
    review = review_job(home, spec)
    if approve and review.problems:
        listed = "; ".join(review.problems)
        raise PolicyViolation(
            f"job {spec.id!r} cannot be approved at {review.city!r}: {listed}"
        )
    approvals = Approvals(approvals_path(home))
    if approve:
        approvals.approve(spec, operator)
    elif review.approved_before:
        approvals.revoke(spec.id)
    kind = "approval" if approve else "refusal"
    detail: dict[str, Any] = {
        "operator": operator,
        "spec_sha256": review.spec_sha256,
        "code_sha256": review.code_sha256,
    }
    if reason:
        detail["reason"] = reason
    event = UsageEvent(
        kind=kind,
        dataset_id=review.dataset["id"],
        provider=review.city,
        consumer=spec.consumer,
        purpose=spec.purpose,
        job_id=spec.id,
        time=time.time(),
        detail=detail,
    )
    usage = UsageLog(_settings(home).usage_path)
    try:
        entry = usage.append(event)
    finally:
        usage.close()
    logger.info(
        "%s of job %s at %s by %s logged as event %d",
        kind,
        spec.id,
        review.city,
        operator,
        entry.seq,
    )
    return {"decision": kind, "seq": entry.seq, **review.to_dict()}
