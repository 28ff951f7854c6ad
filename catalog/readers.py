"""Streaming readers that turn CSV, Parquet and JSON lines files into Arrow batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from citymesh.errors import InvalidInput

FORMATS = ("csv", "parquet", "jsonl")
SUFFIXES = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
BLOCK_BYTES = 1 << 22
PARQUET_BATCH_ROWS = 65_536


class CorruptFile(InvalidInput):
    """A source file cannot be parsed: corrupt, truncated or not of its format."""


class EmptyFile(InvalidInput):
    """A source file has no bytes or no rows."""


class SchemaMismatch(InvalidInput):
    """A source file's columns or types differ from the declared schema."""


@dataclass
class BatchSource:
    """An open source file: its Arrow schema and an iterator over its batches."""

    format: str
    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]


def detect_format(path: Path, declared: str | None = None) -> str:
    """Return the source format: ``declared`` if given, else from the suffix."""
    if declared is not None:
        if declared not in FORMATS:
            raise InvalidInput(
                f"unknown source format {declared!r}: use one of {', '.join(FORMATS)}"
            )
        return declared
    fmt = SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise InvalidInput(
            f"cannot tell the format of {str(path)!r} from its suffix: name it "
            "*.csv, *.parquet or *.jsonl, or pass the format explicitly"
        )
    return fmt


def parse_schema(spec: pa.Schema | dict[str, str] | None) -> pa.Schema | None:
    """Return an Arrow schema from a schema or a {column: type name} mapping."""
    if spec is None or isinstance(spec, pa.Schema):
        return spec
    fields = []
    for column, type_name in spec.items():
        try:
            arrow_type = pa.type_for_alias(type_name)
        except ValueError:
            raise InvalidInput(
                f"unknown column type {type_name!r} for column {column!r}: use an "
                "Arrow type name such as int64, float64, string, bool, date32 "
                "or timestamp[s]"
            ) from None
        fields.append(pa.field(column, arrow_type))
    return pa.schema(fields)


def open_source(path: Path, fmt: str, schema: pa.Schema | None = None) -> BatchSource:
    """Open ``path`` for streaming; ``schema`` fixes the column names and types.

    Raises EmptyFile, CorruptFile or SchemaMismatch with the file name in the
    message; errors found later while iterating surface from ``batches``.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise EmptyFile(
            f"source file {str(path)!r} is empty (0 bytes): give a file with a "
            "header and at least one row"
        )
    try:
        if fmt == "csv":
            source = _open_csv(path, schema)
        elif fmt == "parquet":
            source = _open_parquet(path, schema)
        elif fmt == "jsonl":
            source = _open_jsonl(path, schema)
        else:
            raise InvalidInput(f"unknown source format {fmt!r}: use one of {FORMATS}")
    except (pa.ArrowInvalid, OSError) as error:
        raise read_error(path, fmt, error) from error
    check_column_names(path, source.schema.names)
    return source


def check_column_names(path: Path, names: list[str]) -> None:
    """Raise SchemaMismatch for blank or repeated column names."""
    blank = [index + 1 for index, name in enumerate(names) if not name.strip()]
    if blank:
        raise SchemaMismatch(
            f"source file {str(path)!r} has columns without a name at positions "
            f"{blank!r}: name every column in the header"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SchemaMismatch(
            f"source file {str(path)!r} has the column names {repeated!r} more than "
            "once: give each column its own name"
        )


def _open_csv(path: Path, schema: pa.Schema | None) -> BatchSource:
    convert = pa_csv.ConvertOptions(column_types=schema, strings_can_be_null=True)
    reader = pa_csv.open_csv(
        path,
        read_options=pa_csv.ReadOptions(block_size=BLOCK_BYTES),
        convert_options=convert,
    )
    if schema is not None:
        _check_schema(path, reader.schema, schema)
    return BatchSource("csv", reader.schema, _guarded(path, "csv", reader))


def _open_parquet(path: Path, schema: pa.Schema | None) -> BatchSource:
    parquet = pq.ParquetFile(path)
    file_schema = parquet.schema_arrow
    if schema is not None:
        _check_schema(path, file_schema, schema)
    batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS)
    return BatchSource("parquet", file_schema, _guarded(path, "parquet", batches))


def _open_jsonl(path: Path, schema: pa.Schema | None) -> BatchSource:
    parse = pa_json.ParseOptions(
        explicit_schema=schema,
        unexpected_field_behavior="error" if schema is not None else "infer",
    )
    reader = pa_json.open_json(
        path,
        read_options=pa_json.ReadOptions(block_size=BLOCK_BYTES),
        parse_options=parse,
    )
    return BatchSource("jsonl", reader.schema, _guarded(path, "jsonl", reader))


def _check_schema(path: Path, actual: pa.Schema, declared: pa.Schema) -> None:
    missing = [name for name in declared.names if name not in actual.names]
    if missing:
        raise SchemaMismatch(
            f"{str(path)!r} lacks declared columns {missing!r}; its columns are "
            f"{actual.names!r}: fix the file or the declared schema"
        )
    extra = [name for name in actual.names if name not in declared.names]
    if extra:
        raise SchemaMismatch(
            f"{str(path)!r} has columns {extra!r} that the declared schema lacks: "
            "declare them or remove them from the file"
        )
    for field in declared:
        found = actual.field(field.name).type
        if found != field.type:
            raise SchemaMismatch(
                f"column {field.name!r} of {str(path)!r} has type {str(found)!r} "
                f"but the declared schema says {str(field.type)!r}: fix the file "
                "or the declared schema"
            )


def _guarded(path: Path, fmt: str, batches) -> Iterator[pa.RecordBatch]:
    """Re-raise parse errors met mid-file as CorruptFile or SchemaMismatch."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as error:
            raise read_error(path, fmt, error) from error
        yield batch


def read_error(path: Path, fmt: str, error: Exception) -> InvalidInput:
    """Classify an Arrow read error as SchemaMismatch or CorruptFile."""
    text = str(error)
    if "conversion error" in text or "unexpected field" in text.lower():
        return SchemaMismatch(
            f"{str(path)!r} has values that do not fit the column types ({text}): "
            "declare the column types explicitly or fix the values"
        )
    return CorruptFile(
        f"cannot read {str(path)!r} as {fmt}: {text}; check that the file is "
        "complete, not corrupt and of the declared format"
    )
