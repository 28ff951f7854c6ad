"""Dataset catalog on shared codes: code list, ingest, quality and search."""

from citymesh.catalog.codes import CodeList, load_code_list, shared_codes
from citymesh.catalog.ingest import dataset_id, ingest_file
from citymesh.catalog.models import DatasetEntry
from citymesh.catalog.store import CatalogStore, SearchPage, SearchQuery

__all__ = [
    "CatalogStore",
    "CodeList",
    "DatasetEntry",
    "SearchPage",
    "SearchQuery",
    "dataset_id",
    "ingest_file",
    "load_code_list",
    "shared_codes",
]
