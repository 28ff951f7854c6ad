"""Node settings: ``node.toml`` in the node home, overridden by CITYMESH_* variables."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from citymesh.errors import InvalidInput, NotFound

CONFIG_FILE = "node.toml"
DEFAULT_MAX_INGEST_BYTES = 2 * 1024**3
DEFAULT_MAX_REQUEST_BYTES = 1024**2


class NodeSettings(BaseSettings):
    """Settings of one city node.

    Precedence, highest first: keyword arguments, CITYMESH_<FIELD> environment
    variables, then ``node.toml`` in ``home``.
    """

    model_config = SettingsConfigDict(env_prefix="CITYMESH_", extra="ignore")

    home: Path
    city: str
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=1, le=65535, description="TCP port, 1..65535.")
    endpoint: str = Field(
        default="", description="Base URL peers use to reach this node."
    )
    role: int = Field(default=1, description="1 city node, 2 hub, 3 regulator.")
    chain_url: str | None = None
    deployment_path: Path | None = None
    db_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite node.db in home."
    )
    max_ingest_bytes: int = DEFAULT_MAX_INGEST_BYTES
    max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES,
        ge=1,
        description="Maximum body of a signed request, in bytes; ingest has its own.",
    )
    prepared_extract_bytes: int = Field(
        default=2 * 1024**3,
        ge=0,
        description=(
            "Disk kept for prepared extract streams in extracts/, in bytes; "
            "0 turns preparing off."
        ),
    )
    signature_window_s: float = Field(
        default=300.0,
        description="Accepted clock difference of a signed request, in seconds.",
    )
    signer_cache_s: float = Field(
        default=10.0,
        description="Seconds a resolved signer is reused before asking again.",
    )
    signer_negative_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="Seconds an unknown signer is remembered before asking again.",
    )
    signer_cache_max: int = Field(
        default=10_000, ge=1, description="Maximum number of accounts cached."
    )
    require_signed_catalog: bool = False
    auto_anchor: bool = Field(
        default=True,
        description="Anchor usage events in the background when a chain is set.",
    )
    anchor_batch_size: int = Field(
        default=1000, ge=1, description="Events that make a batch due at once."
    )
    anchor_max_delay_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds the oldest waiting event may wait before anchoring.",
    )
    code_map: Path | None = Field(
        default=None,
        description="Local code mapping file; default: codes.map.json in home.",
    )
    signers_file: Path | None = Field(
        default=None,
        description=(
            "JSON {account: [pubkey hex, role, active, city]} of the signers "
            "to accept when no chain is configured."
        ),
    )
    peers: list[str] = Field(
        default_factory=list,
        description="Peer base URLs for federated search; default: the registry.",
    )

    @property
    def code_map_path(self) -> Path:
        return self.code_map or self.home / "codes.map.json"

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_FILE

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def nonce_path(self) -> Path:
        """Return the SQLite file of the signed-request nonces seen recently."""
        return self.home / "nonces.db"

    @property
    def usage_path(self) -> Path:
        return self.home / "usage.db"

    @property
    def database(self) -> str:
        """Return the catalog database URL or SQLite path."""
        return self.db_url or str(self.home / "node.db")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs = getattr(init_settings, "init_kwargs", {})
        return (init_settings, env_settings, _HomeTomlSource(settings_cls, init_kwargs))


class _HomeTomlSource(PydanticBaseSettingsSource):
    """Values from ``node.toml`` in the home given as argument or CITYMESH_HOME."""

    def __init__(self, settings_cls: type[BaseSettings], init_kwargs: dict) -> None:
        super().__init__(settings_cls)
        home = init_kwargs.get("home") or os.environ.get("CITYMESH_HOME")
        self.path = Path(home) / CONFIG_FILE if home else None

    def get_field_value(self, field, field_name):
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self.path is None or not self.path.is_file():
            return {}
        with open(self.path, "rb") as handle:
            return tomllib.load(handle)


def load_settings(home: Path, **overrides: Any) -> NodeSettings:
    """Load the settings of the node at ``home``.

    Raises NotFound when ``home`` has no node.toml and neither ``overrides``
    nor CITYMESH_CITY give the city.
    """
    home = Path(home)
    configured = (home / CONFIG_FILE).is_file()
    if not configured and "city" not in overrides and "CITYMESH_CITY" not in os.environ:
        raise NotFound(
            f"no node home at {str(home)!r}: {CONFIG_FILE} is missing; run "
            "`citymesh node init --home <folder> --city <city>` first"
        )
    try:
        return NodeSettings(home=home, **overrides)
    except ValidationError as error:
        raise InvalidInput(
            f"invalid settings of the node at {str(home)!r}: {error}; fix "
            f"{CONFIG_FILE} or the CITYMESH_* variables"
        ) from None


def toml_text(values: dict[str, Any]) -> str:
    """Render flat settings as TOML; JSON string escapes are valid TOML escapes."""
    import json

    lines = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, int | float):
            rendered = repr(value)
        else:
            rendered = json.dumps(str(value))
        lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"
