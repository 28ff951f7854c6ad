import json

import pyarrow.parquet as pq
import pytest

from citymesh.catalog.ingest import ingest_file
from citymesh.catalog.lineage import derive, lineage, render_lineage
from citymesh.errors import InvalidInput, PolicyViolation


def test_lineage_derive_and_graph(flights_csv, flights_table, node_dirs):
    data, store = node_dirs
    ingest_file(
        flights_csv,
        data_dir=data,
        store=store,
        city="ewr",
        name="flights",
        code="04.5.4",
    )
    ingest_file(
        flights_csv,
        data_dir=data,
        store=store,
        city="ewr",
        name="flights2",
        code="04.5.4",
        grade="general.3",
    )
    spec = {
        "filter": [["distance", ">", 500]],
        "group_by": ["carrier"],
        "aggregate": [["distance", "mean"], ["distance", "count"]],
    }
    derived = derive(
        store,
        data,
        city="ewr",
        name="carrier-distance",
        parents=["ewr:flights", "ewr:flights2"],
        transform=spec,
    )
    table = pq.read_table(data / "carrier-distance.parquet")
    expected_carriers = {
        row["carrier"] for row in flights_table.to_pylist() if row["distance"] > 500
    }
    assert derived.tier == "thematic"
    assert derived.grade == "general.3"
    assert derived.parents == ["ewr:flights", "ewr:flights2"]
    assert json.loads(derived.transform) == spec
    assert set(table["carrier"].to_pylist()) == expected_carriers
    assert sum(table["distance_count"].to_pylist()) == 2 * sum(
        1 for row in flights_table.to_pylist() if row["distance"] > 500
    )

    topic = derive(
        store,
        data,
        city="ewr",
        name="top",
        tier="topic",
        parents=["ewr:carrier-distance"],
        transform={"filter": [["distance_mean", ">", 1000]]},
    )
    graph = lineage(store, "ewr:carrier-distance")
    assert set(graph.nodes) == {
        "ewr:flights",
        "ewr:flights2",
        "ewr:carrier-distance",
        "ewr:top",
    }
    assert [(p, c) for p, c, _ in graph.edges] == [
        ("ewr:carrier-distance", "ewr:top"),
        ("ewr:flights", "ewr:carrier-distance"),
        ("ewr:flights2", "ewr:carrier-distance"),
    ]
    text = render_lineage(lineage(store, topic.id))
    assert "ewr:flights -> ewr:carrier-distance" in text
    assert "ewr:carrier-distance -> ewr:top" in text


def test_lineage_grade_cannot_drop(flights_csv, node_dirs):
    data, store = node_dirs
    ingest_file(
        flights_csv,
        data_dir=data,
        store=store,
        city="ewr",
        name="base",
        code="04.5.4",
        grade="important",
    )
    with pytest.raises(PolicyViolation, match="less sensitive than parent"):
        derive(
            store,
            data,
            city="ewr",
            name="d",
            parents=["ewr:base"],
            transform={"select": ["carrier"]},
            grade="general",
        )


def test_lineage_bad_transform_rejected(flights_csv, node_dirs):
    data, store = node_dirs
    ingest_file(
        flights_csv, data_dir=data, store=store, city="ewr", name="base", code="04.5.4"
    )
    with pytest.raises(InvalidInput, match="unknown transform keys"):
        derive(
            store,
            data,
            city="ewr",
            name="d",
            parents=["ewr:base"],
            transform={"join": []},
        )
    with pytest.raises(InvalidInput, match="invalid aggregation"):
        derive(
            store,
            data,
            city="ewr",
            name="d",
            parents=["ewr:base"],
            transform={"aggregate": [["distance", "median_of_medians"]]},
        )
    assert store.count() == 1
    assert sorted(p.name for p in data.iterdir()) == ["base.parquet"]
