"""The catalog entry: one dataset's metadata row in the node's database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel


class DatasetEntry(SQLModel, table=True):
    """Metadata of one dataset; the rows themselves stay in the Parquet file."""

    __tablename__ = "dataset"

    id: str = Field(primary_key=True, max_length=200)
    name: str = Field(index=True, max_length=128)
    city: str = Field(index=True, max_length=64)
    title: str = ""
    description: str = Field(default="", sa_column=Column(Text, nullable=False))
    keywords: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    code: str = Field(index=True, max_length=16)
    local_code: str | None = Field(default=None, index=True, max_length=64)
    code_list_version: str = ""
    grade: str = Field(index=True, max_length=32)
    tier: str = Field(default="raw", index=True, max_length=16)
    path: str = ""
    source_format: str = ""
    rows: int = 0
    bytes: int = 0
    sha256: str = ""
    columns: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    quality: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    policy: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    pii: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    parents: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    transform: str = ""
    created_at: float = 0.0
    search_text: str = Field(default="", sa_column=Column(Text, nullable=False))

    def public(self) -> dict[str, Any]:
        """Return the entry as a JSON-ready dict without internal columns."""
        data = self.model_dump()
        data.pop("search_text", None)
        return data
