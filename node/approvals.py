"""Operator approvals of extracts of important data, kept in the node database."""

from __future__ import annotations

import time
import uuid

from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, col, select

from citymesh.errors import InvalidInput, NotFound


class Approval(SQLModel, table=True):
    """The operator's approval for one consumer to extract one dataset for a purpose."""

    __tablename__ = "approval"

    id: str = Field(primary_key=True, max_length=32)
    dataset_id: str = Field(index=True, max_length=200)
    consumer: str = Field(index=True, max_length=42)
    purpose: str = Field(max_length=200)
    approved_at: float = 0.0
    expires_at: float | None = None
    revoked: bool = False


class ApprovalStore:
    """Approvals in the node database (the catalog store's engines)."""

    def __init__(self, engine: Engine, write_engine: Engine) -> None:
        self.engine = engine
        self.write_engine = write_engine
        SQLModel.metadata.create_all(write_engine, tables=[Approval.__table__])

    def add(
        self,
        dataset_id: str,
        consumer: str,
        purpose: str,
        expires_at: float | None = None,
    ) -> Approval:
        """Record an approval and return it."""
        if not consumer.startswith("0x") or len(consumer) != 42:
            raise InvalidInput(
                f"invalid consumer account {consumer!r}: give the consumer node's "
                "ledger account (0x and 40 hex digits)"
            )
        if not purpose:
            raise InvalidInput("an approval needs a purpose: state what it allows")
        approval = Approval(
            id=uuid.uuid4().hex,
            dataset_id=dataset_id,
            consumer=consumer.lower(),
            purpose=purpose,
            approved_at=time.time(),
            expires_at=expires_at,
        )
        with Session(self.write_engine, expire_on_commit=False) as session:
            session.add(approval)
            session.commit()
        return approval

    def revoke(self, approval_id: str) -> Approval:
        """Mark an approval revoked; raise NotFound for an unknown id."""
        with Session(self.write_engine, expire_on_commit=False) as session:
            approval = session.get(Approval, approval_id)
            if approval is None:
                raise NotFound(f"approval {approval_id!r} does not exist")
            approval.revoked = True
            session.add(approval)
            session.commit()
        return approval

    def find(self, dataset_id: str, consumer: str, purpose: str) -> Approval | None:
        """Return a valid approval matching the request, or None."""
        now = time.time()
        statement = select(Approval).where(
            Approval.dataset_id == dataset_id,
            Approval.consumer == consumer.lower(),
            Approval.purpose == purpose,
            col(Approval.revoked).is_(False),
        )
        with Session(self.engine, expire_on_commit=False) as session:
            for approval in session.exec(statement):
                if approval.expires_at is None or approval.expires_at > now:
                    return approval
        return None

    def all(self) -> list[Approval]:
        """Return every approval, newest first."""
        statement = select(Approval).order_by(Approval.approved_at.desc())
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(statement))
