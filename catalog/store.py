"""The catalog store: dataset entries in SQLite (WAL) or any SQLAlchemy database."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, literal_column, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, SQLModel, col, create_engine, select

from citymesh.catalog.models import DatasetEntry
from citymesh.errors import InvalidInput, NotFound

log = logging.getLogger("citymesh.catalog")

SQLITE_BUSY_TIMEOUT_MS = 30_000
MAX_PAGE = 1000
# Searches count matches exactly up to this many; above it the total is a
# lower bound and the page marks it so, which keeps broad searches fast.
COUNT_CAP = 10_000


class DuplicateDataset(InvalidInput):
    """A dataset id is already in the catalog."""


@dataclass
class SearchQuery:
    """Search filters; every filter given must match (logical AND)."""

    code_prefix: str | None = None
    keyword: str | None = None
    city: str | None = None
    grade: str | None = None
    tier: str | None = None
    local_code: str | None = None
    limit: int = 50
    offset: int = 0


@dataclass
class SearchPage:
    """One page of search results and the total number of matches.

    ``extra["total_exact"]`` is False when more than COUNT_CAP entries match;
    ``total`` is then COUNT_CAP.
    """

    items: list[DatasetEntry]
    total: int
    offset: int
    limit: int
    extra: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """Return the page as a JSON-ready dict."""
        return {
            "items": [item.public() for item in self.items],
            "total": self.total,
            "offset": self.offset,
            "limit": self.limit,
            **self.extra,
        }


def database_url(target: str | Path) -> str:
    """Return a SQLAlchemy URL: a path becomes a SQLite URL, a URL stays."""
    text = str(target)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).resolve()}"


def make_engine(url: str, *, immediate: bool = False) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and full fsync.

    With ``immediate`` every SQLite transaction starts with BEGIN IMMEDIATE, so a
    writer takes the write lock up front and waits up to the busy timeout
    instead of failing with "database is locked" when it upgrades a read lock.
    """
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=8,
        max_overflow=56,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class CatalogStore:
    """Dataset entries of one node, by path (SQLite) or database URL."""

    def __init__(self, target: str | Path) -> None:
        self.url = database_url(target)
        self.engine = make_engine(self.url)
        self.write_engine = (
            make_engine(self.url, immediate=True)
            if self.url.startswith("sqlite")
            else self.engine
        )
        SQLModel.metadata.create_all(self.write_engine, tables=[DatasetEntry.__table__])
        self.full_text = False
        if self.url.startswith("sqlite"):
            self.full_text = _create_full_text_index(self.write_engine)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()

    def add(self, entry: DatasetEntry) -> DatasetEntry:
        """Insert ``entry``; raise DuplicateDataset if its id exists."""
        entry.search_text = search_text(entry)
        with Session(self.write_engine, expire_on_commit=False) as session:
            session.add(entry)
            try:
                session.commit()
            except IntegrityError as error:
                raise DuplicateDataset(
                    f"dataset {entry.id!r} is already in the catalog: ingest under "
                    "another name"
                ) from error
        log.info("catalog entry added: %s (%s rows)", entry.id, entry.rows)
        return entry

    def get(self, dataset_id: str) -> DatasetEntry:
        """Return the entry with ``dataset_id`` or raise NotFound."""
        with Session(self.engine, expire_on_commit=False) as session:
            entry = session.get(DatasetEntry, dataset_id)
        if entry is None:
            raise NotFound(
                f"dataset {dataset_id!r} is not in this catalog: search the "
                "catalog for the ids it holds"
            )
        return entry

    def update_policy(self, dataset_id: str, policy: dict[str, Any]) -> DatasetEntry:
        """Replace the policy of an entry and return the updated entry."""
        with Session(self.write_engine, expire_on_commit=False) as session:
            entry = session.get(DatasetEntry, dataset_id)
            if entry is None:
                raise NotFound(
                    f"dataset {dataset_id!r} is not in this catalog: search the "
                    "catalog for the ids it holds"
                )
            entry.policy = dict(policy)
            session.add(entry)
            session.commit()
        log.info("policy of %s updated", dataset_id)
        return entry

    def exists(self, dataset_id: str) -> bool:
        """Return whether an entry with ``dataset_id`` exists."""
        with Session(self.engine) as session:
            return session.get(DatasetEntry, dataset_id) is not None

    def count(self) -> int:
        """Return the number of entries."""
        with Session(self.engine) as session:
            return session.exec(select(func.count()).select_from(DatasetEntry)).one()

    def all(self) -> list[DatasetEntry]:
        """Return every entry in id order."""
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(select(DatasetEntry).order_by(DatasetEntry.id)))

    def search(self, query: SearchQuery) -> SearchPage:
        """Return one page of entries matching ``query`` in id order."""
        if query.limit < 1 or query.limit > MAX_PAGE:
            raise InvalidInput(
                f"invalid page size {query.limit!r}: use 1 to {MAX_PAGE}"
            )
        if query.offset < 0:
            raise InvalidInput(f"invalid offset {query.offset!r}: use 0 or more")
        conditions = search_conditions(query, full_text=self.full_text)
        # Page through ids first: sorting ids from an index is cheap, sorting
        # whole rows (with their JSON columns) is not.
        id_statement = select(DatasetEntry.id).where(*conditions)
        id_statement = id_statement.order_by(DatasetEntry.id)
        id_statement = id_statement.offset(query.offset).limit(query.limit)
        capped = select(DatasetEntry.id).where(*conditions).limit(COUNT_CAP + 1)
        total_statement = select(func.count()).select_from(capped.subquery())
        with Session(self.engine, expire_on_commit=False) as session:
            ids = list(session.exec(id_statement))
            items = []
            if ids:
                rows = select(DatasetEntry).where(col(DatasetEntry.id).in_(ids))
                items = sorted(session.exec(rows), key=lambda entry: entry.id)
            total = session.exec(total_statement).one()
        exact = total <= COUNT_CAP
        return SearchPage(
            items=items,
            total=min(total, COUNT_CAP),
            offset=query.offset,
            limit=query.limit,
            extra={"total_exact": exact},
        )


def prefix_range(column, prefix: str):
    """Match ``prefix`` itself and dotted sub-codes as one index range.

    '04.5' matches everything from '04.5' up to but excluding '04.5/'. Because
    '/' follows '.' in ASCII and precedes the digits, that range contains '04.5'
    and '04.5.*' but not '04.50', for codes made of digits and dots.
    """
    return (column >= prefix) & (column < prefix + "/")


def escape_like(text: str) -> str:
    """Escape LIKE wildcards so user text matches literally (escape char '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search_conditions(query: SearchQuery, *, full_text: bool = False) -> list:
    """Return the SQL conditions for ``query``.

    Each keyword must match the start of a word, case-insensitively. With
    ``full_text`` (SQLite with FTS5) the full-text index evaluates that. Other
    databases use LIKE on the search text, which matches the keyword anywhere
    in a word, so they may return more entries.
    """
    conditions = []
    if query.code_prefix:
        conditions.append(prefix_range(col(DatasetEntry.code), query.code_prefix))
    if query.local_code:
        conditions.append(col(DatasetEntry.local_code) == query.local_code)
    if query.city:
        conditions.append(col(DatasetEntry.city) == query.city)
    if query.grade:
        conditions.append(prefix_range(col(DatasetEntry.grade), query.grade))
    if query.tier:
        conditions.append(col(DatasetEntry.tier) == query.tier)
    if query.keyword:
        words = query.keyword.lower().split()
        indexed = words if full_text else []
        if indexed:
            match = " AND ".join(
                '"' + word.replace('"', '""') + '"*' for word in indexed
            )
            rowids = text("SELECT rowid FROM dataset_fts WHERE dataset_fts MATCH :m")
            conditions.append(
                literal_column("dataset.rowid").in_(rowids.bindparams(m=match))
            )
        for word in words:
            if word in indexed:
                continue
            pattern = f"%{escape_like(word)}%"
            conditions.append(col(DatasetEntry.search_text).like(pattern, escape="\\"))
    return conditions


def search_text(entry: DatasetEntry) -> str:
    """Return the lower-case text that keyword search matches against."""
    parts = [entry.id, entry.name, entry.title, entry.description, entry.code]
    parts.extend(entry.keywords or [])
    parts.extend(column.get("name", "") for column in entry.columns or [])
    if entry.local_code:
        parts.append(entry.local_code)
    return " ".join(part for part in parts if part).lower()


FULL_TEXT_DDL = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS dataset_fts USING fts5(search_text, "
    "content='dataset', content_rowid='rowid', tokenize='unicode61')",
    "CREATE TRIGGER IF NOT EXISTS dataset_fts_insert AFTER INSERT ON dataset BEGIN "
    "INSERT INTO dataset_fts(rowid, search_text) VALUES (new.rowid, new.search_text);"
    " END",
    "CREATE TRIGGER IF NOT EXISTS dataset_fts_delete AFTER DELETE ON dataset BEGIN "
    "INSERT INTO dataset_fts(dataset_fts, rowid, search_text) "
    "VALUES ('delete', old.rowid, old.search_text); END",
    "CREATE TRIGGER IF NOT EXISTS dataset_fts_update AFTER UPDATE ON dataset BEGIN "
    "INSERT INTO dataset_fts(dataset_fts, rowid, search_text) "
    "VALUES ('delete', old.rowid, old.search_text); "
    "INSERT INTO dataset_fts(rowid, search_text) VALUES (new.rowid, new.search_text);"
    " END",
    # Covering indexes: a page query reads ids only, so SQLite reads it from
    # the index without visiting the table rows.
    "CREATE INDEX IF NOT EXISTS ix_dataset_code_id ON dataset (code, id)",
    "CREATE INDEX IF NOT EXISTS ix_dataset_grade_id ON dataset (grade, id)",
    "CREATE INDEX IF NOT EXISTS ix_dataset_city_grade ON dataset (city, grade, id)",
    "CREATE INDEX IF NOT EXISTS ix_dataset_tier_code ON dataset (tier, code, id)",
)


def _create_full_text_index(engine: Engine) -> bool:
    """Create the SQLite full-text and covering indexes; False without FTS5."""
    try:
        with engine.begin() as connection:
            for statement in FULL_TEXT_DDL:
                connection.exec_driver_sql(statement)
    except OperationalError as error:
        log.warning(
            "SQLite full-text index unavailable, keyword search scans: %s", error
        )
        return False
    return True
