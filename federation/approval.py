"""Owner approval: a city's node runs only jobs its operator approved.

The operator approves a job spec together with the digest of the code that will
run at the node. The code digest covers every Python source file of
``citymesh.federation`` (the ClientApp and everything it imports from this
package) and, for a user's own model (``package.module:ClassName``), that
module's file. A changed spec or changed code no longer matches the approval, so
it needs a new one. The ClientApp checks the approval on every message when its
node config has ``approvals`` (the path of the node's approval file).

NOTE: Flower's own FAB signing with ``flower-supernode --trusted-entities`` is not
used. The FAB that citymesh submits contains only its pyproject.toml, and the code
comes from the installed citymesh package, which this digest covers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path

from citymesh.errors import NotFound, PolicyViolation

from .json_file import LockedJsonFile
from .spec import JobSpec

log = logging.getLogger("citymesh.federation")

PACKAGE_DIR = Path(__file__).resolve().parent


def code_digest(spec: JobSpec | None = None) -> str:
    """Return the SHA-256 over the federation sources and the spec's own model."""
    files = sorted(PACKAGE_DIR.glob("*.py"))
    if spec is not None and ":" in spec.model.kind:
        module_name = spec.model.kind.partition(":")[0]
        found = importlib.util.find_spec(module_name)
        if found is None or found.origin is None:
            raise NotFound(f"model module {module_name!r} not found")
        files.append(Path(found.origin))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\x00")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def spec_digest(spec: JobSpec) -> str:
    """Return the SHA-256 of the spec's canonical JSON."""
    return hashlib.sha256(spec.to_json().encode()).hexdigest()


@dataclass(frozen=True)
class Approval:
    """An operator's approval of one job at one node."""

    job_id: str
    spec_sha256: str
    code_sha256: str
    operator: str
    time: float


class Approvals:
    """A node's approved jobs, in a JSON file keyed by job id."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def approve(self, spec: JobSpec, operator: str) -> Approval:
        """Approve ``spec`` with the installed code, replacing an earlier approval."""
        approval = Approval(
            job_id=spec.id,
            spec_sha256=spec_digest(spec),
            code_sha256=code_digest(spec),
            operator=operator,
            time=time.time(),
        )
        with self._locked() as data:
            data[spec.id] = asdict(approval)
        log.info("operator %s approved job %s", operator, spec.id)
        return approval

    def revoke(self, job_id: str) -> None:
        """Withdraw the approval of ``job_id``."""
        with self._locked() as data:
            if data.pop(job_id, None) is None:
                raise NotFound(f"job {job_id!r} has no approval to revoke")

    def get(self, job_id: str) -> Approval | None:
        """Return the approval of ``job_id``, or None."""
        entry = self._read().get(job_id)
        return None if entry is None else Approval(**entry)

    def check(self, spec: JobSpec) -> Approval:
        """Return the job's approval, or raise PolicyViolation.

        The approval must name the same spec and the same code digest.
        """
        approval = self.get(spec.id)
        if approval is None:
            raise PolicyViolation(
                f"job {spec.id!r} is not approved at this node; the operator must "
                "approve it first"
            )
        if approval.spec_sha256 != spec_digest(spec):
            raise PolicyViolation(
                f"job {spec.id!r} differs from the spec the operator approved; "
                "a changed job needs a new approval"
            )
        if approval.code_sha256 != code_digest(spec):
            raise PolicyViolation(
                f"the code of job {spec.id!r} differs from the code the operator "
                "approved; changed code needs a new approval"
            )
        return approval

    def _read(self) -> dict[str, dict]:
        return LockedJsonFile(self.path).read()

    def _locked(self) -> AbstractContextManager[dict[str, dict]]:
        return LockedJsonFile(self.path).locked()
