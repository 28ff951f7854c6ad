import json

import pytest

from citymesh.catalog.mapping import InvalidMapping, load_mapping, validate_mapping


def mapping(*pairs, **options):
    items = [{"local": local, "target": target} for local, target in pairs]
    return {"city": "ewr", "mappings": items, **options}


def test_mapping_resolves_chains():
    result = validate_mapping(
        mapping(("TR-AIR", "04.5.4"), ("TR-CARGO", "TR-AIR"), ("RD", "04.5.1"))
    )
    assert result.to_shared("TR-CARGO") == "04.5.4"
    assert result.to_shared("04.5.1") == "04.5.1"
    assert result.local_codes_for("04.5") == ["RD", "TR-AIR", "TR-CARGO"]
    assert result.local_codes_for("04.5.4") == ["TR-AIR", "TR-CARGO"]


def test_mapping_unknown_target_rejected():
    with pytest.raises(InvalidMapping, match="'X' maps to '99.9'"):
        validate_mapping(mapping(("X", "99.9")))


def test_mapping_many_to_one_rejected_unless_allowed():
    doc = mapping(("A", "04.5.1"), ("B", "04.5.1"))
    with pytest.raises(InvalidMapping, match=r"\['A', 'B'\] all map onto"):
        validate_mapping(doc)
    allowed = validate_mapping({**doc, "allow_many_to_one": True})
    assert allowed.to_shared("B") == "04.5.1"


def test_mapping_cycle_rejected():
    with pytest.raises(InvalidMapping, match="cycle: A -> B -> C -> A") as caught:
        validate_mapping(mapping(("A", "B"), ("B", "C"), ("C", "A"), ("D", "07")))
    assert len(caught.value.problems) == 1


def test_mapping_reports_every_problem(tmp_path):
    doc = mapping(
        ("04.5", "04.5.1"), ("X", "X"), ("Y", "nowhere"), code_list_version="0.9"
    )
    path = tmp_path / "map.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InvalidMapping) as caught:
        load_mapping(path)
    problems = caught.value.problems
    assert any("version '0.9'" in p for p in problems)
    assert any("'04.5' is also a shared code" in p for p in problems)
    assert any("cycle: X -> X" in p for p in problems)
    assert any("'Y' maps to 'nowhere'" in p for p in problems)


def test_mapping_invalid_json_rejected(tmp_path):
    path = tmp_path / "map.json"
    path.write_text("{not json")
    with pytest.raises(InvalidMapping, match="not valid JSON"):
        load_mapping(path)
