"""Keyword search on SQLite: both page plans return the same pages and totals.

A keyword that matches at least WALK_FROM_FRACTION of the catalog is paged by
walking the id index. A rarer one is paged by looking its matches up by rowid.
The tests compare both plans with a reference computed in Python, on a real
SQLite catalog with its full-text index.
"""

import re
from contextlib import contextmanager

import pytest
from sqlalchemy import event, insert

from citymesh.catalog import store as store_module
from citymesh.catalog.models import DatasetEntry
from citymesh.catalog.store import (
    COUNT_CAP,
    WALK_FROM_FRACTION,
    CatalogStore,
    SearchQuery,
    search_text,
)

ENTRIES = 4000
CODES = ["04.5.1", "04.5.4", "07.3.1", "09.1.2"]


def entry_row(index: int, words: list[str]) -> dict:
    entry = DatasetEntry(
        id=f"{'ab'[index % 2]}:set{index:05d}",
        name=f"set{index:05d}",
        city="ab"[index % 2],
        title=" ".join(["Counts", *words]),
        keywords=words,
        code=CODES[index % len(CODES)],
        grade=["general", "general.1", "core"][index % 3],
        tier="raw",
        columns=[{"name": "value", "type": "int64"}],
    )
    entry.search_text = search_text(entry)
    return entry.model_dump()


def words_of(index: int) -> list[str]:
    """Return the test words of entry ``index``.

    "frequent" is in 10% of the entries and "scarce" in 0.5%. "trailing" is in
    the last 1.5% by index, which sort last among the ids of each city, so a
    walk of the id index reaches them late.
    """
    words = []
    if index % 10 == 3:
        words.append("frequent")
    if index % 200 == 7:
        words.append("scarce")
    if index >= ENTRIES - ENTRIES * 3 // 200:
        words.append("trailing")
    return words


def fill(store: CatalogStore, rows: list[dict]) -> None:
    with store.write_engine.begin() as connection:
        connection.execute(insert(DatasetEntry), rows)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """A catalog of ENTRIES entries and the rows it was filled with."""
    store = CatalogStore(tmp_path_factory.mktemp("plans") / "node.db")
    rows = [entry_row(index, words_of(index)) for index in range(ENTRIES)]
    fill(store, rows)
    yield store, rows
    store.close()


def expected_ids(rows: list[dict], query: SearchQuery) -> list[str]:
    """Return the ids matching ``query`` in id order, computed without SQL.

    A keyword matches the start of a word, as the full-text index does for
    keywords made of letters only.
    """
    words = (query.keyword or "").lower().split()
    found = []
    for row in rows:
        tokens = re.findall(r"[0-9a-z]+", row["search_text"])
        if not all(any(t.startswith(word) for t in tokens) for word in words):
            continue
        if query.city and row["city"] != query.city:
            continue
        if query.grade and not (
            row["grade"] == query.grade or row["grade"].startswith(query.grade + ".")
        ):
            continue
        if query.code_prefix and not (
            row["code"] == query.code_prefix
            or row["code"].startswith(query.code_prefix + ".")
        ):
            continue
        found.append(row["id"])
    return sorted(found)


@contextmanager
def captured_sql(store: CatalogStore):
    """Collect the SQL statements that the store's reading engine runs."""
    statements: list[str] = []

    def collect(_conn, _cursor, statement, _params, _context, _many) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", collect)
    try:
        yield statements
    finally:
        event.remove(store.engine, "before_cursor_execute", collect)


QUERIES = [
    {"keyword": "frequent"},
    {"keyword": "frequent", "offset": 50},
    {"keyword": "frequent", "offset": 390, "limit": 50},
    {"keyword": "frequent", "offset": 1000},
    {"keyword": "FREQ", "limit": 7},
    {"keyword": "scarce"},
    {"keyword": "scarce", "offset": 15, "limit": 3},
    {"keyword": "trailing"},
    {"keyword": "trailing", "offset": 40},
    {"keyword": "absent"},
    {"keyword": "frequent", "grade": "general"},
    {"keyword": "frequent", "city": "b", "offset": 50},
    {"keyword": "frequent", "code_prefix": "04.5"},
    {"keyword": "scarce", "grade": "core"},
    {"keyword": "scarce", "city": "b", "offset": 5, "limit": 4},
    {"keyword": "scarce", "grade": "general", "offset": 100},
    {"keyword": "trailing", "city": "a", "grade": "general"},
    {"keyword": "frequent counts"},
    {"keyword": "frequent scarce"},
    {"keyword": "frequent trailing", "code_prefix": "07"},
]


@pytest.mark.parametrize("filters", QUERIES)
def test_keyword_page_matches_reference(catalog, filters):
    store, rows = catalog
    query = SearchQuery(**filters)
    expected = expected_ids(rows, query)
    page = store.search(query)
    window = expected[query.offset : query.offset + query.limit]
    assert [item.id for item in page.items] == window
    assert page.total == len(expected)
    assert page.extra == {"total_exact": True}


@pytest.mark.parametrize("filters", QUERIES)
def test_like_search_matches_reference(catalog, filters):
    """The search without the full-text index (as on PostgreSQL) agrees."""
    store, rows = catalog
    query = SearchQuery(**filters)
    expected = expected_ids(rows, query)
    store.full_text = False
    try:
        page = store.search(query)
    finally:
        store.full_text = True
    window = expected[query.offset : query.offset + query.limit]
    assert [item.id for item in page.items] == window
    assert page.total == len(expected)


def test_keyword_plan_follows_match_count(catalog):
    store, rows = catalog
    walk_from = len(rows) * WALK_FROM_FRACTION
    assert len(expected_ids(rows, SearchQuery(keyword="frequent"))) >= walk_from
    assert len(expected_ids(rows, SearchQuery(keyword="scarce"))) < walk_from
    with captured_sql(store) as statements:
        store.search(SearchQuery(keyword="frequent"))
    walked = [sql for sql in statements if "dataset_fts MATCH" in sql]
    with captured_sql(store) as statements:
        store.search(SearchQuery(keyword="scarce"))
    looked_up = [sql for sql in statements if "dataset_fts MATCH" in sql]
    # The first statement counts the matches, the second reads the page.
    assert len(walked) == 2
    assert "+dataset.rowid IN" in walked[1]
    assert len(looked_up) == 2
    assert "dataset.rowid IN" in looked_up[1]
    assert "+dataset.rowid" not in looked_up[1]


def test_keyword_walk_reads_id_index_in_order(catalog):
    """The walk plan relies on SQLite reading the id index without a sort."""
    store, _rows = catalog
    with captured_sql(store) as statements:
        store.search(SearchQuery(keyword="frequent"))
    page_sql = next(sql for sql in statements if "+dataset.rowid IN" in sql)
    parameters = ('"frequent"*', 50, 0)
    with store.engine.connect() as connection:
        plan = connection.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + page_sql, parameters
        ).all()
    details = [row[3] for row in plan]
    assert any(d.startswith("SCAN dataset USING COVERING INDEX") for d in details)
    assert not any("TEMP B-TREE" in d for d in details)


@pytest.fixture(scope="module")
def broad_catalog(tmp_path_factory):
    """A catalog where one word is in COUNT_CAP + 30 entries, and their sorted ids."""
    store = CatalogStore(tmp_path_factory.mktemp("broad") / "node.db")
    rows = [entry_row(index, ["everywhere"]) for index in range(COUNT_CAP + 30)]
    fill(store, rows)
    yield store, sorted(row["id"] for row in rows)
    store.close()


def test_keyword_total_capped_above_count_cap(broad_catalog):
    store, all_ids = broad_catalog
    broad = store.search(SearchQuery(keyword="everywhere", offset=COUNT_CAP))
    assert broad.total == COUNT_CAP
    assert broad.extra == {"total_exact": False}
    assert [item.id for item in broad.items] == all_ids[COUNT_CAP:]
    core = store.search(SearchQuery(keyword="everywhere", grade="core"))
    assert core.total == sum(1 for index in range(len(all_ids)) if index % 3 == 2)
    assert core.extra == {"total_exact": True}
    raw = store.search(SearchQuery(keyword="everywhere", tier="raw"))
    assert raw.total == COUNT_CAP
    assert raw.extra == {"total_exact": False}
    assert [item.id for item in raw.items] == all_ids[:50]


def test_lookup_page_beyond_count_cap(broad_catalog, monkeypatch):
    """With filters, the lookup plan reads pages past COUNT_CAP matches too."""
    store, all_ids = broad_catalog
    # A fraction above 1 makes every keyword search use rowid lookups.
    monkeypatch.setattr(store_module, "WALK_FROM_FRACTION", 2.0)
    query = SearchQuery(keyword="everywhere", tier="raw", offset=COUNT_CAP - 10)
    page = store.search(query)
    assert page.total == COUNT_CAP
    assert page.extra == {"total_exact": False}
    assert [item.id for item in page.items] == all_ids[COUNT_CAP - 10 :]
