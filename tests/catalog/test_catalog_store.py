import os
import threading
import uuid

import pytest
from sqlalchemy import create_engine, text

from citymesh.catalog.models import DatasetEntry
from citymesh.catalog.store import CatalogStore, DuplicateDataset, SearchQuery
from citymesh.errors import InvalidInput, NotFound

POSTGRES_URL = os.environ.get(
    "CITYMESH_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
ENTRIES = [
    ("ewr", "flights", "04.5.4", "general", "raw", "Flights from Newark"),
    ("jfk", "flights", "04.5.4", "general.2", "raw", "Flights from JFK"),
    ("ewr", "roads", "04.5.1", "important", "raw", "Road traffic counts"),
    ("ewr", "wards", "07.3.1", "core", "raw", "Hospital ward occupancy"),
    ("lga", "delays", "04.5", "general.1", "thematic", "Delay summary 100%_done"),
    ("lga", "energy", "04.3.5", "general", "raw", "Electricity use"),
]


def make_entry(city, name, code, grade, tier, title) -> DatasetEntry:
    return DatasetEntry(
        id=f"{city}:{name}",
        name=name,
        city=city,
        code=code,
        grade=grade,
        tier=tier,
        title=title,
        columns=[{"name": "origin", "type": "string"}],
    )


def fill(store: CatalogStore) -> None:
    for values in ENTRIES:
        store.add(make_entry(*values))


def ids(store: CatalogStore, **filters) -> list[str]:
    return [item.id for item in store.search(SearchQuery(**filters)).items]


def check_search(store: CatalogStore) -> None:
    assert ids(store, code_prefix="04.5") == [
        "ewr:flights",
        "ewr:roads",
        "jfk:flights",
        "lga:delays",
    ]
    assert ids(store, code_prefix="04.5.4") == ["ewr:flights", "jfk:flights"]
    assert ids(store, code_prefix="04") == [
        "ewr:flights",
        "ewr:roads",
        "jfk:flights",
        "lga:delays",
        "lga:energy",
    ]
    assert ids(store, code_prefix="04.4") == []
    assert ids(store, keyword="FLIGHTS newark") == ["ewr:flights"]
    assert ids(store, keyword="origin") == sorted(f"{e[0]}:{e[1]}" for e in ENTRIES)
    assert ids(store, keyword="100%") == ["lga:delays"]
    assert ids(store, keyword="1_0") == []
    assert ids(store, city="lga") == ["lga:delays", "lga:energy"]
    assert ids(store, grade="general") == [
        "ewr:flights",
        "jfk:flights",
        "lga:delays",
        "lga:energy",
    ]
    assert ids(store, grade="general.2") == ["jfk:flights"]
    assert ids(store, grade="core") == ["ewr:wards"]
    assert ids(store, tier="thematic") == ["lga:delays"]
    assert ids(store, code_prefix="04", city="ewr", grade="general") == ["ewr:flights"]


def check_pagination(store: CatalogStore) -> None:
    first = store.search(SearchQuery(code_prefix="04", limit=2))
    second = store.search(SearchQuery(code_prefix="04", limit=2, offset=2))
    last = store.search(SearchQuery(code_prefix="04", limit=2, offset=4))
    assert first.total == second.total == last.total == 5
    assert [item.id for item in first.items] == ["ewr:flights", "ewr:roads"]
    assert [item.id for item in second.items] == ["jfk:flights", "lga:delays"]
    assert [item.id for item in last.items] == ["lga:energy"]


def check_concurrent_writes(store: CatalogStore, writers: int = 50) -> None:
    errors = []
    barrier = threading.Barrier(writers)

    def write(index: int) -> None:
        barrier.wait()
        try:
            store.add(
                make_entry(
                    "par",
                    f"set-{index:02d}",
                    "04.5.1",
                    "general",
                    "raw",
                    f"parallel {index}",
                )
            )
        except Exception as error:  # noqa: BLE001 - collected for the assert
            errors.append(repr(error))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.search(SearchQuery(city="par", limit=100)).total == writers


def test_store_search_filters_sqlite(tmp_path):
    store = CatalogStore(tmp_path / "node.db")
    fill(store)
    check_search(store)
    store.close()


def test_store_pagination_sqlite(tmp_path):
    store = CatalogStore(tmp_path / "node.db")
    fill(store)
    check_pagination(store)
    store.close()


def test_store_concurrent_writes_sqlite(tmp_path):
    store = CatalogStore(tmp_path / "node.db")
    check_concurrent_writes(store)
    store.close()


def test_store_uses_wal_sqlite(tmp_path):
    store = CatalogStore(tmp_path / "node.db")
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    store.close()


def test_store_duplicate_and_missing(tmp_path):
    store = CatalogStore(tmp_path / "node.db")
    fill(store)
    with pytest.raises(DuplicateDataset, match="'ewr:roads' is already"):
        store.add(make_entry(*ENTRIES[2]))
    with pytest.raises(NotFound, match="'ewr:nothing' is not in this catalog"):
        store.get("ewr:nothing")
    store.close()


def test_store_page_bounds_rejected(tmp_path):
    store = CatalogStore(tmp_path / "node.db")
    with pytest.raises(InvalidInput, match="invalid page size 0"):
        store.search(SearchQuery(limit=0))
    with pytest.raises(InvalidInput, match="invalid offset -1"):
        store.search(SearchQuery(offset=-1))
    store.close()


@pytest.fixture
def postgres_store():
    """A CatalogStore in a fresh PostgreSQL schema, dropped afterwards."""
    schema = f"citymesh_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as error:  # noqa: BLE001 - any connection failure skips
        admin.dispose()
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is not reachable: {error}")
    separator = "&" if "?" in POSTGRES_URL else "?"
    store = CatalogStore(f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}")
    yield store
    store.close()
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def test_store_search_filters_postgres(postgres_store):
    fill(postgres_store)
    check_search(postgres_store)


def test_store_pagination_postgres(postgres_store):
    fill(postgres_store)
    check_pagination(postgres_store)


def test_store_concurrent_writes_postgres(postgres_store):
    check_concurrent_writes(postgres_store)
