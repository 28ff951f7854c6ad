"""Ingest a CSV, Parquet or JSON lines file into the node's data folder.

The file streams batch by batch into a temporary Parquet file in the data
folder. After an fsync, a hard link publishes it under the dataset's name, so
a reader sees either no file or the complete file. Because a hard link fails
when the name exists, two concurrent ingests of one name cannot overwrite each
other. The catalog entry is committed only after the file is published, and if
the commit fails, the file is removed again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from citymesh.catalog.codes import CodeList, check_tier, shared_codes
from citymesh.catalog.models import DatasetEntry
from citymesh.catalog.names import check_name, dataset_path
from citymesh.catalog.pii import CATEGORIES, Finding, detect
from citymesh.catalog.policy import check_policy
from citymesh.catalog.quality import QualityAccumulator, count_outliers
from citymesh.catalog.readers import (
    EmptyFile,
    detect_format,
    open_source,
    parse_schema,
)
from citymesh.catalog.store import CatalogStore, DuplicateDataset
from citymesh.errors import InvalidInput, NotFound

log = logging.getLogger("citymesh.catalog")

DEFAULT_MAX_BYTES = 2 * 1024**3
CITY_PATTERN_HELP = "ASCII letters, digits and '-'"

ProgressCallback = Callable[[int], None]


class FileTooLarge(InvalidInput):
    """A source file is over the configured size limit."""


def dataset_id(city: str, name: str) -> str:
    """Return the catalog id of dataset ``name`` at ``city``: 'city:name'."""
    return f"{city}:{name}"


def check_city(city: str) -> str:
    """Return ``city`` if it is a valid city id, else raise InvalidInput."""
    if (
        not city
        or len(city) > 64
        or not all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in city)
        or not city[0].isalnum()
    ):
        raise InvalidInput(
            f"invalid city id {city!r}: use 1-64 {CITY_PATTERN_HELP}, starting "
            "with a letter or digit"
        )
    return city


def fsync_directory(path: Path) -> None:
    """Flush a directory entry to disk so a rename or link survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_parquet_atomic(
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    destination: Path,
    *,
    on_batch: Callable[[pa.RecordBatch], None] | None = None,
) -> int:
    """Write ``batches`` to ``destination`` atomically and return the row count.

    Raises EmptyFile when no rows arrive and FileExistsError when
    ``destination`` exists; in both cases, and on any error, no file is left.
    """
    destination = Path(destination)
    temporary = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.tmp")
    rows = 0
    try:
        with pq.ParquetWriter(temporary, schema, compression="zstd") as writer:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                writer.write_batch(batch)
                rows += batch.num_rows
                if on_batch is not None:
                    on_batch(batch)
        if rows == 0:
            raise EmptyFile(
                "the source has a header but no rows: give at least one row"
            )
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.link(temporary, destination)
        fsync_directory(destination.parent)
    finally:
        temporary.unlink(missing_ok=True)
    return rows


def ingest_file(
    source: Path,
    *,
    data_dir: Path,
    store: CatalogStore,
    city: str,
    name: str,
    code: str,
    grade: str = "general",
    tier: str = "raw",
    title: str = "",
    description: str = "",
    keywords: Iterable[str] = (),
    fmt: str | None = None,
    schema: pa.Schema | dict[str, str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    policy: dict[str, Any] | None = None,
    parents: Iterable[str] = (),
    transform: str = "",
    local_code: str | None = None,
    codes: CodeList | None = None,
    progress: ProgressCallback | None = None,
) -> DatasetEntry:
    """Ingest ``source`` as dataset ``name`` and return its committed catalog entry.

    Every input is checked before the first byte is written. The checks cover
    the city id, the dataset name (it must stay inside ``data_dir``), the code,
    grade and tier against the shared code list, and the parents of a derived
    dataset. They also cover the file's size against ``max_bytes`` and its
    format. ``progress`` receives the number of rows written so far after each
    batch.

    Personal-data findings from the first batch are stored with the entry.
    Unless ``policy`` sets ``deid`` rules, the suggested rule of every column
    found to hold personal data becomes the dataset's de-identification rule.
    """
    codes = codes or shared_codes()
    check_city(city)
    check_name(name)
    codes.code(code)
    codes.grade(grade)
    check_tier(tier)
    parents = list(parents)
    _check_parents(store, tier, parents)
    source = Path(source)
    if not source.is_file():
        raise NotFound(f"source file {str(source)!r} does not exist: check the path")
    size = source.stat().st_size
    if size > max_bytes:
        raise FileTooLarge(
            f"source file {str(source)!r} is {size} bytes, over the limit of "
            f"{max_bytes} bytes: split the file or raise the node's max_ingest_bytes"
        )
    identifier = dataset_id(city, name)
    if store.exists(identifier):
        raise DuplicateDataset(
            f"dataset {identifier!r} is already in the catalog: ingest under "
            "another name"
        )
    destination = dataset_path(data_dir, name)
    if destination.exists():
        raise DuplicateDataset(
            f"a file for dataset {name!r} already exists at {str(destination)!r}: "
            "ingest under another name or remove the stale file"
        )

    fmt = detect_format(source, fmt)
    opened = open_source(source, fmt, parse_schema(schema))
    policy = dict(policy or {})
    check_policy(
        policy,
        [{"name": field.name, "type": str(field.type)} for field in opened.schema],
    )
    quality = QualityAccumulator(opened.schema)
    findings: list[Finding] = []
    started = time.monotonic()

    def on_batch(batch: pa.RecordBatch) -> None:
        if quality.rows == 0:
            findings.extend(detect(batch))
        quality.update(batch)
        if progress is not None:
            progress(quality.rows)

    try:
        rows = write_parquet_atomic(
            opened.batches, opened.schema, destination, on_batch=on_batch
        )
    except EmptyFile:
        raise EmptyFile(
            f"source file {str(source)!r} has a header but no rows: give at least "
            "one row"
        ) from None
    except FileExistsError:
        raise DuplicateDataset(
            f"dataset {name!r} was published by another ingest meanwhile: ingest "
            "under another name"
        ) from None

    if "deid" not in policy:
        policy["deid"] = {
            finding.column: finding.suggestion
            for finding in findings
            if finding.category in CATEGORIES
        }
    try:
        report = count_outliers(destination, quality.report())
        entry = DatasetEntry(
            id=identifier,
            name=name,
            city=city,
            title=title or name,
            description=description,
            keywords=sorted(
                {word.strip().lower() for word in keywords if word.strip()}
            ),
            code=code,
            local_code=local_code,
            code_list_version=codes.version,
            grade=grade,
            tier=tier,
            path=destination.name,
            source_format=fmt,
            rows=rows,
            bytes=destination.stat().st_size,
            sha256=file_sha256(destination),
            columns=[
                {"name": field.name, "type": str(field.type)} for field in opened.schema
            ],
            quality=report,
            policy=policy,
            pii=[finding.as_dict() for finding in findings],
            parents=parents,
            transform=transform,
            created_at=time.time(),
        )
        store.add(entry)
    except BaseException:
        destination.unlink(missing_ok=True)
        raise
    log.info(
        "ingested %s: %d rows from %s in %.2f s",
        identifier,
        rows,
        source.name,
        time.monotonic() - started,
    )
    return entry


def _check_parents(store: CatalogStore, tier: str, parents: list[str]) -> None:
    if tier == "raw" and parents:
        raise InvalidInput(
            f"a raw dataset has no parents but {parents!r} were given: use tier "
            "'thematic' or 'topic' for a derived dataset"
        )
    if tier != "raw" and not parents:
        raise InvalidInput(
            f"a {tier!r} dataset is derived and needs its parent dataset ids: "
            "pass parents"
        )
    for parent in parents:
        store.get(parent)
