"""Errors of CLI commands that send requests to city nodes over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx

from citymesh.errors import CitymeshError, InvalidInput


class NodeUnreachable(CitymeshError):
    """A node did not respond: the connection was refused, timed out or broke."""


def check_node_url(url: str) -> str:
    """Return ``url`` if it is an http(s) URL with a host, else raise InvalidInput."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f"--node {url!r} is not an http(s) URL; give a node's base URL such as "
            "http://127.0.0.1:8700"
        )
    return url


@contextmanager
def reaching_node(url: str) -> Iterator[None]:
    """Turn httpx transport and protocol errors into NodeUnreachable naming ``url``.

    HTTP error statuses are not caught here: NodeClient raises them as citymesh
    errors already.
    """
    try:
        yield
    except httpx.TimeoutException as error:
        raise NodeUnreachable(
            f"node {url} timed out ({type(error).__name__}); check that it runs"
        ) from error
    except httpx.HTTPError as error:
        detail = str(error) or type(error).__name__
        raise NodeUnreachable(
            f"node {url} cannot be reached: {detail}; check the URL and that the "
            "node runs (`citymesh node serve`)"
        ) from error
