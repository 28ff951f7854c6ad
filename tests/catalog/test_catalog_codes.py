import json

import pytest

from citymesh.catalog.codes import (
    CodeList,
    UnknownCode,
    canonical_digest,
    check_tier,
    shared_codes,
)
from citymesh.errors import InvalidInput


def test_codes_level_counts_match_cofog():
    codes = shared_codes().codes.values()
    levels = [code.level for code in codes]
    assert levels.count("division") == 10
    assert levels.count("group") == 69
    assert levels.count("class") == 109


def test_codes_names_and_parents():
    codes = shared_codes()
    assert codes.code("04.5.1").name == "Road transport"
    assert codes.code("04.5.1").parent == "04.5"
    assert codes.code("07.3.1").name == "General hospital services"
    assert codes.code("10").name == "Social protection"


def test_codes_themes_map_to_eu_vocabulary():
    codes = shared_codes()
    assert codes.code("04.5").themes == ("TRAN",)
    assert codes.code("04.5.4").themes == ("TRAN",)
    assert codes.code("07").themes == ("HEAL",)
    assert codes.code("04.2.1").themes == ("AGRI",)
    assert set(codes.themes) >= {"TRAN", "HEAL", "GOVE", "ENVI"}
    for code in codes.codes.values():
        assert code.themes, code.code
        assert set(code.themes) <= set(codes.themes), code.code


def test_codes_digest_is_recomputable():
    codes = shared_codes()
    assert codes.sha256 == canonical_digest(codes.document)
    assert len(codes.sha256) == 64
    assert codes.info() == {"version": codes.version, "sha256": codes.sha256}


def test_codes_tampered_list_rejected():
    document = json.loads(json.dumps(shared_codes().document))
    document["codes"][0]["name"] = "Changed"
    with pytest.raises(InvalidInput, match="digest mismatch"):
        CodeList(document)


def test_codes_unknown_code_message():
    with pytest.raises(UnknownCode, match=r"unknown classification code '04\.9\.9'"):
        shared_codes().code("04.9.9")


def test_codes_descendants_of_prefix():
    found = [code.code for code in shared_codes().descendants("04.5")]
    assert found == ["04.5", "04.5.1", "04.5.2", "04.5.3", "04.5.4", "04.5.5"]


def test_grades_family_and_rank():
    codes = shared_codes()
    assert codes.grade_family("general.3") == "general"
    assert codes.grade_family("core") == "core"
    assert codes.grade("important").rank < codes.grade("core").rank
    with pytest.raises(UnknownCode, match="unknown data grade 'secret'"):
        codes.grade("secret")


def test_tier_unknown_rejected():
    assert check_tier("thematic") == "thematic"
    with pytest.raises(UnknownCode, match="unknown tier 'gold'"):
        check_tier("gold")
