"""Run a node's HTTP service."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from citymesh.node.app import create_app
from citymesh.node.settings import load_settings

log = logging.getLogger("citymesh.node")


def serve(home: Path, host: str | None = None, port: int | None = None) -> None:
    """Serve the node at ``home`` until SIGINT or SIGTERM (blocking).

    ``host`` and ``port`` default to the values in node.toml.
    """
    settings = load_settings(Path(home))
    host = host or settings.host
    port = port or settings.port
    app = create_app(settings)
    log.info("node %s serving on http://%s:%d", settings.city, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
