"""The catalog store: dataset entries in SQLite (WAL) or any SQLAlchemy database."""

from __future__ import annotations

import logging
import math
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
# Looking up one entry by rowid costs about as much as this many steps along an
# index: 1.2 microseconds per lookup against 0.06 per step, measured with SQLite
# 3.40 on the 100,000-entry catalog of bench/catalog.py (2-core x86-64 VM).
ROWID_LOOKUP_STEPS = 20
# Keyword searches that match at least this fraction of the catalog read their
# page by walking the id index instead of looking every match up by rowid. It
# is 1 / (4 * ROWID_LOOKUP_STEPS), as _full_text_page explains.
WALK_FROM_FRACTION = 1 / 80


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
        words = (query.keyword or "").lower().split()
        # On SQLite the session is one read transaction, so the match count and
        # the page come from one snapshot.
        with Session(self.engine, expire_on_commit=False) as session:
            if self.full_text and words:
                page, total = _full_text_page(session, query, words)
            else:
                conditions = search_conditions(query, full_text=self.full_text)
                page, total = _page(session, query, conditions)
            items = []
            if page is not None:
                # The page is picked by id first, because sorting ids from an
                # index is cheap and sorting whole rows (with JSON columns) is not.
                rows = select(DatasetEntry).where(col(DatasetEntry.id).in_(page))
                items = sorted(session.exec(rows), key=lambda entry: entry.id)
        exact = total <= COUNT_CAP
        return SearchPage(
            items=items,
            total=min(total, COUNT_CAP),
            offset=query.offset,
            limit=query.limit,
            extra={"total_exact": exact},
        )


def _page(session: Session, query: SearchQuery, conditions: list) -> tuple[Any, int]:
    """Return the query for the ids of one page and the match count.

    The count is capped at COUNT_CAP + 1. The page query is None when nothing
    matches.
    """
    capped = select(DatasetEntry.id).where(*conditions).limit(COUNT_CAP + 1)
    total = session.exec(select(func.count()).select_from(capped.subquery())).one()
    if total == 0:
        return None, 0
    return _id_page(query, conditions), total


def _id_page(query: SearchQuery, conditions: list) -> Any:
    """Return the query for the ids of one page of entries matching ``conditions``."""
    statement = select(DatasetEntry.id).where(*conditions)
    statement = statement.order_by(DatasetEntry.id)
    statement = statement.offset(query.offset).limit(query.limit)
    # The query goes into "id IN (...)" on the same table, where it must keep
    # its own FROM clause.
    return statement.correlate(None)


def _full_text_page(
    session: Session, query: SearchQuery, words: list[str]
) -> tuple[Any, int]:
    """Return one page's ids (a list or a query) and the keyword match count.

    The count is capped at COUNT_CAP + 1 like in ``_page``. SQLite can
    read the page in two ways. It can look up every full-text match by rowid
    and sort the matches by id, which costs about ROWID_LOOKUP_STEPS index
    steps per match. Or it can walk an index in id order and keep the entries
    whose rowid is among the matches. When the matches are spread over the id
    order, the walk ends after about (offset + limit) / (matching fraction)
    steps, but when they sit at the end of the id order it reads the whole
    index. The walk is chosen from WALK_FROM_FRACTION of the catalog on, where
    by this estimate even that worst case costs at most 4 times as much as the
    lookups.
    """
    match = full_text_match(words)
    # max(rowid) costs one descent of the table's b-tree. With the rowids that
    # SQLite assigns, it is at least the number of entries.
    last_rowid = session.exec(text("SELECT max(rowid) FROM dataset")).one()[0] or 0
    walk_from = max(1, math.ceil(last_rowid * WALK_FROM_FRACTION))
    # Counting full-text matches reads only the full-text index, so the cap
    # may sit above COUNT_CAP where that is needed to choose the plan.
    cap = max(COUNT_CAP + 1, walk_from)
    matches = session.exec(
        text(
            "SELECT count(*) FROM (SELECT rowid FROM dataset_fts "
            "WHERE dataset_fts MATCH :match LIMIT :cap)"
        ).bindparams(match=match, cap=cap)
    ).one()[0]
    if matches == 0:
        return None, 0
    # A unary "+" keeps SQLite from using the rowid term to look rows up, so
    # it walks the id index (or an index of another condition) instead.
    rowid = "dataset.rowid" if matches < walk_from else "+dataset.rowid"
    conditions = filter_conditions(query)
    conditions.append(matching_rowids(rowid, match))
    if len(conditions) == 1:
        # Every full-text row belongs to one catalog entry (the triggers in
        # FULL_TEXT_DDL keep both in step), so the matches are the total.
        return _id_page(query, conditions), min(matches, COUNT_CAP + 1)
    if matches >= walk_from:
        return _page(session, query, conditions)
    # With few matches and more filters, one pass over the matches gives both
    # the page and the total. A count query and a page query would look every
    # match up twice and evaluate the full-text query twice.
    needed = max(COUNT_CAP + 1, query.offset + query.limit)
    statement = select(DatasetEntry.id).where(*conditions)
    ids = list(session.exec(statement.order_by(DatasetEntry.id).limit(needed)))
    page = ids[query.offset : query.offset + query.limit]
    return page or None, min(len(ids), COUNT_CAP + 1)


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
    conditions = filter_conditions(query)
    words = (query.keyword or "").lower().split()
    if words and full_text:
        conditions.append(matching_rowids("dataset.rowid", full_text_match(words)))
    elif words:
        for word in words:
            pattern = f"%{escape_like(word)}%"
            conditions.append(col(DatasetEntry.search_text).like(pattern, escape="\\"))
    return conditions


def filter_conditions(query: SearchQuery) -> list:
    """Return the SQL conditions for every filter of ``query`` but the keywords."""
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
    return conditions


def full_text_match(words: list[str]) -> str:
    """Return the FTS5 query for entries with a word starting with each word."""
    return " AND ".join('"' + word.replace('"', '""') + '"*' for word in words)


def matching_rowids(rowid: str, match: str):
    """Return the condition ``rowid IN (full-text matches of match)``.

    ``rowid`` is the column expression as SQL text, "dataset.rowid" or
    "+dataset.rowid".
    """
    rowids = text("SELECT rowid FROM dataset_fts WHERE dataset_fts MATCH :match")
    return literal_column(rowid).in_(rowids.bindparams(match=match))


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
