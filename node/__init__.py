"""City node: identity, signed requests, the HTTP API and its client."""

from citymesh.node.app import create_app
from citymesh.node.client import NodeClient
from citymesh.node.home import init_home
from citymesh.node.identity import NodeIdentity
from citymesh.node.service import serve
from citymesh.node.settings import NodeSettings, load_settings
from citymesh.node.signing import (
    RequestVerifier,
    SignedRequestAuth,
    SignerInfo,
    dict_resolver,
)

__all__ = [
    "NodeClient",
    "NodeIdentity",
    "NodeSettings",
    "RequestVerifier",
    "SignedRequestAuth",
    "SignerInfo",
    "create_app",
    "dict_resolver",
    "init_home",
    "load_settings",
    "serve",
]
