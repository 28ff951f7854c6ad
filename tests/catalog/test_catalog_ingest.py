import json
import threading

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from citymesh.catalog.codes import UnknownCode
from citymesh.catalog.ingest import FileTooLarge, ingest_file
from citymesh.catalog.names import UnsafeName
from citymesh.catalog.readers import CorruptFile, EmptyFile, SchemaMismatch
from citymesh.catalog.store import DuplicateDataset
from citymesh.errors import InvalidInput, NotFound


def ingest(source, node_dirs, name="flights", **options):
    data, store = node_dirs
    options.setdefault("code", "04.5.4")
    return ingest_file(
        source, data_dir=data, store=store, city="ewr", name=name, **options
    )


def assert_nothing_written(node_dirs):
    data, store = node_dirs
    assert sorted(p.name for p in data.iterdir()) == []
    assert store.count() == 0


def test_ingest_csv_round_trip(flights_csv, flights_table, node_dirs):
    entry = ingest(flights_csv, node_dirs, title="NYC flights", keywords=["Air"])
    data, store = node_dirs
    written = pq.read_table(data / "flights.parquet")
    assert entry.id == "ewr:flights"
    assert entry.rows == flights_table.num_rows == written.num_rows
    assert written.column_names == flights_table.column_names
    assert (
        pc.sum(written["distance"]).as_py() == pc.sum(flights_table["distance"]).as_py()
    )
    assert entry.keywords == ["air"]
    assert entry.code_list_version == "1.0.0"
    assert len(entry.sha256) == 64
    assert store.get("ewr:flights").rows == entry.rows


def test_ingest_parquet_and_jsonl(tmp_path, flights_table, node_dirs):
    parquet = tmp_path / "in.parquet"
    pq.write_table(flights_table, parquet)
    jsonl = tmp_path / "in.jsonl"
    rows = flights_table.slice(0, 300).select(["carrier", "distance"]).to_pylist()
    jsonl.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    first = ingest(parquet, node_dirs, name="from-parquet")
    second = ingest(jsonl, node_dirs, name="from-jsonl")
    assert first.rows == flights_table.num_rows
    assert first.source_format == "parquet"
    assert second.rows == 300
    assert second.columns == [
        {"name": "carrier", "type": "string"},
        {"name": "distance", "type": "int64"},
    ]


def test_ingest_empty_file_rejected(tmp_path, node_dirs):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFile, match="is empty"):
        ingest(empty, node_dirs)
    assert_nothing_written(node_dirs)


def test_ingest_header_only_rejected(tmp_path, node_dirs):
    header = tmp_path / "header.csv"
    header.write_text("year,month,day\n")
    with pytest.raises(EmptyFile, match="has a header but no rows"):
        ingest(header, node_dirs)
    assert_nothing_written(node_dirs)


def test_ingest_truncated_parquet_rejected(tmp_path, flights_table, node_dirs):
    whole = tmp_path / "whole.parquet"
    pq.write_table(flights_table, whole)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CorruptFile, match="cannot read .*truncated.parquet"):
        ingest(truncated, node_dirs)
    assert_nothing_written(node_dirs)


def test_ingest_corrupt_parquet_pages_rejected(tmp_path, flights_table, node_dirs):
    whole = tmp_path / "whole.parquet"
    pq.write_table(flights_table, whole, compression="snappy")
    body = bytearray(whole.read_bytes())
    body[200:4200] = b"\xff" * 4000
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(bytes(body))
    with pytest.raises(CorruptFile):
        ingest(corrupt, node_dirs)
    assert_nothing_written(node_dirs)


def test_ingest_malformed_csv_rejected(tmp_path, node_dirs):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3\n")
    with pytest.raises(CorruptFile, match="Expected 2 columns"):
        ingest(bad, node_dirs)
    assert_nothing_written(node_dirs)


def test_ingest_unknown_code_rejected(flights_csv, node_dirs):
    with pytest.raises(UnknownCode, match="unknown classification code '04.5.9'"):
        ingest(flights_csv, node_dirs, code="04.5.9")
    assert_nothing_written(node_dirs)


def test_ingest_unknown_grade_rejected(flights_csv, node_dirs):
    with pytest.raises(UnknownCode, match="unknown data grade 'public'"):
        ingest(flights_csv, node_dirs, grade="public")
    assert_nothing_written(node_dirs)


def test_ingest_escaping_name_rejected(flights_csv, node_dirs):
    with pytest.raises(UnsafeName, match="invalid dataset name '../flights'"):
        ingest(flights_csv, node_dirs, name="../flights")
    assert_nothing_written(node_dirs)


def test_ingest_oversize_rejected(flights_csv, node_dirs):
    limit = flights_csv.stat().st_size - 1
    with pytest.raises(FileTooLarge, match=f"over the limit of {limit} bytes"):
        ingest(flights_csv, node_dirs, max_bytes=limit)
    assert_nothing_written(node_dirs)


def test_ingest_missing_source_rejected(tmp_path, node_dirs):
    with pytest.raises(NotFound, match="does not exist"):
        ingest(tmp_path / "nope.csv", node_dirs)


def test_ingest_declared_schema_mismatch_rejected(tmp_path, flights_table, node_dirs):
    parquet = tmp_path / "in.parquet"
    pq.write_table(flights_table.select(["carrier", "distance"]), parquet)
    with pytest.raises(
        SchemaMismatch, match="column 'distance' .* 'int64' .* 'string'"
    ):
        ingest(parquet, node_dirs, schema={"carrier": "string", "distance": "string"})
    with pytest.raises(SchemaMismatch, match=r"lacks declared columns \['origin'\]"):
        ingest(parquet, node_dirs, schema={"carrier": "string", "origin": "string"})
    assert_nothing_written(node_dirs)


def test_ingest_csv_declared_types_applied(flights_csv, node_dirs, flights_table):
    schema = {name: "string" for name in flights_table.column_names}
    schema["distance"] = "float64"
    entry = ingest(flights_csv, node_dirs, schema=schema)
    types = {column["name"]: column["type"] for column in entry.columns}
    assert types["distance"] == "double"
    assert types["year"] == "string"


def test_ingest_csv_value_not_matching_declared_type(tmp_path, node_dirs):
    source = tmp_path / "typed.csv"
    source.write_text("a,b\n1,x\n2,y\n")
    with pytest.raises(SchemaMismatch):
        ingest(source, node_dirs, schema={"a": "int64", "b": "int64"})
    assert_nothing_written(node_dirs)


def test_ingest_duplicate_name_rejected(flights_csv, node_dirs):
    ingest(flights_csv, node_dirs)
    with pytest.raises(
        DuplicateDataset, match="'ewr:flights' is already in the catalog"
    ):
        ingest(flights_csv, node_dirs)
    _data, store = node_dirs
    assert store.count() == 1


def test_ingest_concurrent_same_name_one_wins(flights_csv, node_dirs):
    outcomes = []

    def run():
        try:
            ingest(flights_csv, node_dirs)
            outcomes.append("ok")
        except DuplicateDataset:
            outcomes.append("duplicate")

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    data, store = node_dirs
    assert sorted(outcomes) == ["duplicate", "duplicate", "duplicate", "ok"]
    assert store.count() == 1
    assert [p.name for p in data.iterdir()] == ["flights.parquet"]


def test_ingest_derived_needs_parents(flights_csv, node_dirs):
    with pytest.raises(InvalidInput, match="needs its parent dataset ids"):
        ingest(flights_csv, node_dirs, name="derived", tier="thematic")
    with pytest.raises(NotFound, match="'ewr:missing' is not in this catalog"):
        ingest(
            flights_csv,
            node_dirs,
            name="derived",
            tier="thematic",
            parents=["ewr:missing"],
        )
    ingest(flights_csv, node_dirs, name="base")
    entry = ingest(
        flights_csv,
        node_dirs,
        name="derived",
        tier="thematic",
        parents=["ewr:base"],
        transform="copy",
    )
    assert entry.parents == ["ewr:base"]


def test_ingest_progress_reports_rows(flights_csv, node_dirs, flights_table):
    seen = []
    ingest(flights_csv, node_dirs, progress=seen.append)
    assert seen[-1] == flights_table.num_rows


def test_quality_report_values(tmp_path, node_dirs):
    values = list(range(1, 101)) + [10_000]
    table = pa.table(
        {
            "id": values,
            "label": ["a" if i % 2 else "b" for i in values[:-1]] + ["  "],
            "score": [float(i) if i != 5 else None for i in values[:-1]]
            + [float("nan")],
        }
    )
    source = tmp_path / "q.parquet"
    pq.write_table(table, source)
    report = ingest(source, node_dirs, name="q").quality
    columns = report["columns"]
    assert report["rows"] == 101
    assert columns["id"]["distinct"] == 101
    assert columns["id"]["uniqueness"] == 1.0
    assert columns["id"]["outliers"] == 1
    assert columns["id"]["max"] == 10_000
    assert columns["label"]["distinct"] == 3
    assert columns["label"]["invalid"] == 1
    assert columns["score"]["nulls"] == 1
    assert columns["score"]["completeness"] == pytest.approx(100 / 101)
    assert columns["score"]["invalid"] == 1
    assert columns["score"]["validity"] == pytest.approx(99 / 100)
    assert columns["score"]["mean"] == pytest.approx(sum(range(1, 101)) / 99 - 5 / 99)


def test_quality_distinct_estimate_large(tmp_path, node_dirs):
    table = pa.table({"key": list(range(200_000))})
    source = tmp_path / "big.parquet"
    pq.write_table(table, source)
    column = ingest(source, node_dirs, name="big").quality["columns"]["key"]
    assert column["distinct_exact"] is False
    assert column["distinct"] == pytest.approx(200_000, rel=0.05)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("a,a\n1,2\n", "column names \\['a'\\] more than once"),
        (",b\n1,2\n", "columns without a name at positions \\[1\\]"),
        ("a, \n1,2\n", "columns without a name at positions \\[2\\]"),
    ],
)
def test_ingest_bad_column_names_rejected(tmp_path, node_dirs, header, message):
    source = tmp_path / "names.csv"
    source.write_text(header)
    with pytest.raises(SchemaMismatch, match=message):
        ingest(source, node_dirs)
    assert_nothing_written(node_dirs)


def test_ingest_names_differing_in_case_kept(tmp_path, node_dirs):
    source = tmp_path / "names.jsonl"
    source.write_text('{"a": 1, "A": 2}\n')
    entry = ingest(source, node_dirs)
    assert [column["name"] for column in entry.columns] == ["a", "A"]
