"""DCAT-AP 3 export of a node's catalog as JSON-LD.

The ``dcat:Catalog`` has a title, a description, the node as publisher
(``foaf:Agent``), English as the language of its texts and the EU data-theme
scheme as its theme taxonomy. Each entry becomes a ``dcat:Dataset`` with
identifier, title, description, keywords, EU data themes (``dcat:theme``), its
COFOG code as a ``skos:Concept`` in ``dct:subject``, access rights from its
grade, the node as publisher, lineage (``dct:source``) and one
``dcat:Distribution``. The distribution has a description, access URL, Parquet
format, byte size and SHA-256 checksum.

DCAT-AP 3.0 fixes the class of several objects. The export gives each of them
an explicit ``@type``, so SHACL class checks pass with and without RDFS
inference. Themes are ``skos:Concept`` nodes with a preferred label, access
rights are ``dct:RightsStatement``, the format is ``dct:MediaTypeOrExtent``,
the checksum algorithm is ``spdx:ChecksumAlgorithm`` and the access URL is
``rdfs:Resource``.

``check_dcat`` tests the mandatory properties of DCAT-AP 3.0 for the classes
exported here: Catalog (dct:title, dct:description, dct:publisher), Dataset
(dct:title, dct:description) and Distribution (dcat:accessURL). It needs only
rdflib.

``check_dcat_shapes`` validates the same document with pyshacl against
``data/dcat-ap-3-shapes.ttl``. Those shapes check the mandatory properties,
and the classes and maximum counts that DCAT-AP 3.0 sets for the properties
exported here.
NOTE: the shapes are written by hand and cover only the properties this module
exports. The export omits recommended properties that the catalog does not
record, such as contact point, spatial and temporal coverage, licence and
availability.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from citymesh.catalog.codes import CodeList, shared_codes
from citymesh.catalog.models import DatasetEntry

CONTEXT = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "spdx": "http://spdx.org/rdf/terms#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "adms": "http://www.w3.org/ns/adms#",
}
THEME_SCHEME = "http://publications.europa.eu/resource/authority/data-theme"
THEME_BASE = THEME_SCHEME + "/"
ACCESS_BASE = "http://publications.europa.eu/resource/authority/access-right/"
FILE_TYPE_PARQUET = "http://publications.europa.eu/resource/authority/file-type/PARQUET"
LANGUAGE_ENGLISH = "http://publications.europa.eu/resource/authority/language/ENG"
SHA256 = "http://spdx.org/rdf/terms#checksumAlgorithm_sha256"


def access_right(grade_id: str, codes: CodeList) -> str:
    """Map a grade to the EU access-right vocabulary."""
    family = codes.grade_family(grade_id)
    if family == "core":
        return ACCESS_BASE + "NON_PUBLIC"
    if grade_id == "general.1":
        return ACCESS_BASE + "PUBLIC"
    return ACCESS_BASE + "RESTRICTED"


def _text(value: str) -> dict[str, str]:
    return {"@value": value, "@language": "en"}


def _typed(iri: str, rdf_type: str) -> dict[str, str]:
    return {"@id": iri, "@type": rdf_type}


def publisher_node(city: str, base_url: str) -> dict[str, Any]:
    """Return the node's ``foaf:Agent``, publisher of the catalog and its datasets."""
    return {"@id": f"{base_url}/identity", "@type": "foaf:Agent", "foaf:name": city}


def theme_scheme_node(codes: CodeList) -> dict[str, Any]:
    """Return the EU data-theme ``skos:ConceptScheme``, titled from the code list."""
    return {
        "@id": THEME_SCHEME,
        "@type": "skos:ConceptScheme",
        "dct:title": _text(codes.document["theme_scheme"]["name"]),
    }


def theme_node(theme: str, codes: CodeList) -> dict[str, Any]:
    """Return one EU data theme as a ``skos:Concept`` labelled from the code list.

    A theme missing from the code list's theme table is labelled with its code.
    """
    return {
        "@id": THEME_BASE + theme,
        "@type": "skos:Concept",
        "skos:prefLabel": _text(codes.themes.get(theme, theme)),
        "skos:inScheme": {"@id": THEME_SCHEME},
    }


def distribution_node(entry: DatasetEntry, iri: str) -> dict[str, Any]:
    """Return the Parquet distribution of the dataset at ``iri``."""
    return {
        "@id": f"{iri}#parquet",
        "@type": "dcat:Distribution",
        "dct:description": _text(
            f"{entry.rows} rows of {entry.title or entry.name} in one Parquet file."
        ),
        "dcat:accessURL": _typed(iri, "rdfs:Resource"),
        "dct:format": _typed(FILE_TYPE_PARQUET, "dct:MediaTypeOrExtent"),
        "dcat:byteSize": {
            "@value": str(entry.bytes),
            "@type": "xsd:nonNegativeInteger",
        },
        "spdx:checksum": {
            "@type": "spdx:Checksum",
            "spdx:algorithm": _typed(SHA256, "spdx:ChecksumAlgorithm"),
            "spdx:checksumValue": {
                "@value": entry.sha256,
                "@type": "xsd:hexBinary",
            },
        },
    }


def dataset_node(
    entry: DatasetEntry,
    base_url: str,
    codes: CodeList,
    publisher: dict[str, Any],
) -> dict[str, Any]:
    """Return the JSON-LD node of one catalog entry, published by ``publisher``.

    NOTE: ``dct:source`` names each parent by IRI only. The document conforms
    only while every parent is exported in the same catalog, because the
    parent's own node carries its ``dcat:Dataset`` type.
    """
    code = codes.code(entry.code)
    iri = f"{base_url}/catalog/datasets/{entry.id}"
    description = entry.description or (
        f"{entry.title or entry.name}: {entry.rows} rows from {entry.city}, "
        f"classified {entry.code} ({code.name})."
    )
    node: dict[str, Any] = {
        "@id": iri,
        "@type": "dcat:Dataset",
        "dct:identifier": entry.id,
        "dct:title": _text(entry.title or entry.name),
        "dct:description": _text(description),
        "dct:publisher": publisher,
        "dcat:keyword": [_text(word) for word in entry.keywords or []],
        "dcat:theme": [theme_node(theme, codes) for theme in code.themes],
        "dct:subject": {
            "@type": "skos:Concept",
            "skos:notation": entry.code,
            "skos:prefLabel": _text(code.name),
        },
        "dct:accessRights": _typed(
            access_right(entry.grade, codes), "dct:RightsStatement"
        ),
        "adms:versionNotes": _text(f"code list {entry.code_list_version}"),
        "dcat:distribution": distribution_node(entry, iri),
    }
    if entry.parents:
        node["dct:source"] = [
            {"@id": f"{base_url}/catalog/datasets/{parent}"} for parent in entry.parents
        ]
    return node


def export_dcat(
    entries: list[DatasetEntry],
    *,
    city: str,
    base_url: str,
    codes: CodeList | None = None,
) -> dict[str, Any]:
    """Return the node's catalog as a DCAT-AP 3 JSON-LD document."""
    codes = codes or shared_codes()
    base_url = base_url.rstrip("/")
    publisher = publisher_node(city, base_url)
    return {
        "@context": CONTEXT,
        "@id": f"{base_url}/catalog",
        "@type": "dcat:Catalog",
        "dct:title": _text(f"citymesh catalog of {city}"),
        "dct:description": _text(
            f"Datasets published by the citymesh node of {city}, classified by "
            f"COFOG with code list {codes.version}."
        ),
        "dct:publisher": publisher,
        "dct:language": _typed(LANGUAGE_ENGLISH, "dct:LinguisticSystem"),
        "dcat:themeTaxonomy": theme_scheme_node(codes),
        "dcat:dataset": [
            dataset_node(entry, base_url, codes, publisher) for entry in entries
        ],
    }


MANDATORY = {
    "http://www.w3.org/ns/dcat#Catalog": (
        "http://purl.org/dc/terms/title",
        "http://purl.org/dc/terms/description",
        "http://purl.org/dc/terms/publisher",
    ),
    "http://www.w3.org/ns/dcat#Dataset": (
        "http://purl.org/dc/terms/title",
        "http://purl.org/dc/terms/description",
    ),
    "http://www.w3.org/ns/dcat#Distribution": ("http://www.w3.org/ns/dcat#accessURL",),
}


def check_dcat(document: dict[str, Any]) -> list[str]:
    """Return the DCAT-AP mandatory-property violations in ``document``.

    Parses the JSON-LD into RDF with rdflib, so a document whose context does
    not expand the terms fails too.
    """
    import json

    from rdflib import Graph, URIRef
    from rdflib.namespace import RDF

    graph = Graph()
    graph.parse(data=json.dumps(document), format="json-ld")
    problems = []
    for class_iri, properties in MANDATORY.items():
        subjects = list(graph.subjects(RDF.type, URIRef(class_iri)))
        if class_iri.endswith("Catalog") and not subjects:
            problems.append("no dcat:Catalog node")
        for subject in subjects:
            for prop in properties:
                if graph.value(subject, URIRef(prop)) is None:
                    problems.append(f"{subject} ({class_iri}) lacks {prop}")
    return problems


SHAPES_FILE = "dcat-ap-3-shapes.ttl"


def check_dcat_shapes(document: dict[str, Any]) -> list[str]:
    """Validate ``document`` against the shipped DCAT-AP 3 SHACL shapes.

    Returns one line per violation (focus node, property path, message), so an
    empty list means the document conforms. Raises ModuleNotFoundError when
    pyshacl is not installed: use ``check_dcat`` then.
    """
    import json

    from pyshacl import validate
    from rdflib import Graph
    from rdflib.namespace import SH

    data = Graph().parse(data=json.dumps(document), format="json-ld")
    shapes_text = (
        resources.files("citymesh.catalog") / "data" / SHAPES_FILE
    ).read_text(encoding="utf-8")
    shapes = Graph().parse(data=shapes_text, format="turtle")
    conforms, report, _ = validate(data, shacl_graph=shapes, inference="none")
    if conforms:
        return []
    problems = []
    for result in report.subjects(SH.resultSeverity, SH.Violation):
        focus = report.value(result, SH.focusNode)
        path = report.value(result, SH.resultPath)
        message = report.value(result, SH.resultMessage)
        problems.append(f"{focus} {path}: {message}")
    return sorted(problems)
