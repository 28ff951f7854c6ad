"""Create a node home: node.toml, keys/, data/, and the databases on first use."""

from __future__ import annotations

import logging
from pathlib import Path

from citymesh.catalog.ingest import check_city
from citymesh.errors import InvalidInput
from citymesh.node.identity import (
    NodeIdentity,
    create_operator_token,
    load_or_create_deid_secret,
)
from citymesh.node.settings import CONFIG_FILE, NodeSettings, toml_text

log = logging.getLogger("citymesh.node")


def init_home(
    home: Path,
    city: str,
    chain_url: str | None = None,
    deployment_path: Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8700,
    endpoint: str | None = None,
    role: int = 1,
    db_url: str | None = None,
    max_ingest_bytes: int | None = None,
) -> NodeSettings:
    """Create the node home at ``home`` for ``city`` and return its settings.

    The home contains node.toml, keys/ and data/. The keys folder contains the
    Ed25519 signing key, the ledger account key, the operator token and the
    de-identification secret, each with mode 0600. The node creates node.db
    and usage.db when it first opens them. Raises InvalidInput if ``port`` is
    outside 1..65535, if ``home`` already contains a node.toml, so existing
    keys are never overwritten, or if ``home`` is a file or a non-empty folder.
    """
    home = Path(home).resolve()
    check_city(city)
    check_port(port)
    if (home / CONFIG_FILE).exists():
        raise InvalidInput(
            f"{str(home / CONFIG_FILE)!r} already exists: this folder is a node "
            "home already; pick another folder or remove it first"
        )
    if home.exists() and not home.is_dir():
        raise InvalidInput(
            f"{str(home)!r} is a file, not a folder: pick a new or empty folder "
            "for the node home"
        )
    if home.is_dir() and any(home.iterdir()):
        raise InvalidInput(
            f"{str(home)!r} is not empty and is not a node home: pick a new or "
            "empty folder for the node home"
        )
    home.mkdir(parents=True, exist_ok=True)
    (home / "data").mkdir(exist_ok=True)
    identity = NodeIdentity.generate()
    identity.save(home / "keys")
    create_operator_token(home / "keys")
    load_or_create_deid_secret(home / "keys")
    values = {
        "city": city,
        "host": host,
        "port": port,
        "endpoint": endpoint or f"http://{host}:{port}",
        "role": role,
        "chain_url": chain_url,
        "deployment_path": str(Path(deployment_path).resolve())
        if deployment_path
        else None,
        "db_url": db_url,
        "max_ingest_bytes": max_ingest_bytes,
    }
    (home / CONFIG_FILE).write_text(toml_text(values), encoding="utf-8")
    log.info(
        "node home created at %s for city %s, account %s", home, city, identity.account
    )
    return NodeSettings(home=home)


def check_port(port: int) -> None:
    """Raise InvalidInput unless ``port`` is a TCP port number (1..65535)."""
    if not 1 <= port <= 65535:
        raise InvalidInput(f"invalid port {port!r}: use a TCP port in 1..65535")
