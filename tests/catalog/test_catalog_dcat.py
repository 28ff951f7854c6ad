import json

import pytest

from citymesh.catalog.dcat import check_dcat, export_dcat
from citymesh.catalog.ingest import ingest_file

rdflib = pytest.importorskip("rdflib")
DCAT = rdflib.Namespace("http://www.w3.org/ns/dcat#")
DCTERMS = rdflib.Namespace("http://purl.org/dc/terms/")


def test_dcat_export_valid(flights_csv, node_dirs):
    data, store = node_dirs
    ingest_file(
        flights_csv,
        data_dir=data,
        store=store,
        city="ewr",
        name="flights",
        code="04.5.4",
        keywords=["air"],
        grade="general.1",
    )
    ingest_file(
        flights_csv,
        data_dir=data,
        store=store,
        city="ewr",
        name="wards",
        code="07.3.1",
        grade="core",
    )
    document = export_dcat(store.all(), city="ewr", base_url="http://127.0.0.1:8701/")
    assert check_dcat(document) == []
    graph = rdflib.Graph().parse(data=json.dumps(document), format="json-ld")
    datasets = sorted(str(s) for s in graph.subjects(rdflib.RDF.type, DCAT.Dataset))
    assert datasets == [
        "http://127.0.0.1:8701/catalog/datasets/ewr:flights",
        "http://127.0.0.1:8701/catalog/datasets/ewr:wards",
    ]
    flights = rdflib.URIRef(datasets[0])
    themes = {str(o) for o in graph.objects(flights, DCAT.theme)}
    assert themes == {
        "http://publications.europa.eu/resource/authority/data-theme/TRAN"
    }
    rights = {
        str(o) for o in graph.objects(rdflib.URIRef(datasets[1]), DCTERMS.accessRights)
    }
    assert rights == {
        "http://publications.europa.eu/resource/authority/access-right/NON_PUBLIC"
    }


def test_dcat_missing_title_detected(flights_csv, node_dirs):
    data, store = node_dirs
    ingest_file(
        flights_csv,
        data_dir=data,
        store=store,
        city="ewr",
        name="flights",
        code="04.5.4",
    )
    document = export_dcat(store.all(), city="ewr", base_url="http://127.0.0.1:1")
    del document["dcat:dataset"][0]["dct:title"]
    del document["dcat:dataset"][0]["dcat:distribution"]["dcat:accessURL"]
    problems = check_dcat(document)
    assert len(problems) == 2
    assert any("lacks http://purl.org/dc/terms/title" in p for p in problems)
    assert any("lacks http://www.w3.org/ns/dcat#accessURL" in p for p in problems)


def test_dcat_shapes_valid_export_conforms(flights_csv, node_dirs):
    pytest.importorskip("pyshacl")
    from citymesh.catalog.dcat import check_dcat_shapes

    data, store = node_dirs
    ingest_file(
        flights_csv,
        data_dir=data,
        store=store,
        city="ewr",
        name="flights",
        code="04.5.4",
        keywords=["air"],
    )
    document = export_dcat(store.all(), city="ewr", base_url="http://127.0.0.1:8701")
    assert check_dcat_shapes(document) == []


def test_dcat_shapes_missing_title_rejected(flights_csv, node_dirs):
    pytest.importorskip("pyshacl")
    from citymesh.catalog.dcat import check_dcat_shapes

    data, store = node_dirs
    ingest_file(
        flights_csv,
        data_dir=data,
        store=store,
        city="ewr",
        name="flights",
        code="04.5.4",
    )
    document = export_dcat(store.all(), city="ewr", base_url="http://127.0.0.1:8701")
    del document["dcat:dataset"][0]["dct:title"]
    problems = check_dcat_shapes(document)
    assert problems == [
        "http://127.0.0.1:8701/catalog/datasets/ewr:flights "
        "http://purl.org/dc/terms/title: "
        "a dcat:Dataset needs at least one dct:title literal"
    ]


def test_dcat_shapes_bad_checksum_rejected(flights_csv, node_dirs):
    pytest.importorskip("pyshacl")
    from citymesh.catalog.dcat import check_dcat_shapes

    data, store = node_dirs
    ingest_file(
        flights_csv,
        data_dir=data,
        store=store,
        city="ewr",
        name="flights",
        code="04.5.4",
    )
    document = export_dcat(store.all(), city="ewr", base_url="http://127.0.0.1:8701")
    del document["dct:publisher"]
    distribution = document["dcat:dataset"][0]["dcat:distribution"]
    del distribution["spdx:checksum"]["spdx:algorithm"]
    problems = check_dcat_shapes(document)
    assert len(problems) == 2
    assert any("http://purl.org/dc/terms/publisher" in line for line in problems)
    assert any("http://spdx.org/rdf/terms#algorithm" in line for line in problems)
