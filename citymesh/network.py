"""A whole citymesh network in one work folder: chain, city nodes and the parties' keys.

The folder contains everything a run needs to start again::

    admin.key            the consortium admin's ledger key (mode 0600)
    chain.sqlite         the embedded chain's state
    deployment.json      the contract addresses
    scientist/keys/      the data scientist's identity (registered as a hub)
    regulator/keys/      the regulator's identity
    nodes/<CITY>/        a node home per city: node.toml, keys/, data/, *.db
    logs/                each process's output
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from eth_account import Account

from citymesh.errors import InvalidInput, NotFound
from citymesh.processes import Service, free_port

logger = logging.getLogger("citymesh.network")

__all__ = ["Network"]

ROLE_CITY_NODE, ROLE_HUB, ROLE_REGULATOR = 1, 2, 3
GAS_FUNDS_WEI = 10**21  # gas money for each party's account, in wei
ADMIN_FUNDS_WEI = 10**24


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=False)
    path.write_text(text + "\n")


class Network:
    """The services and parties of one local network; stops its services on exit."""

    def __init__(self, workdir: Path, cities: Sequence[str]) -> None:
        self.workdir = workdir
        self.cities = list(cities)
        self.chain_url = ""
        self.services: list[Service] = []
        self.endpoints: dict[str, str] = {}

    @classmethod
    def create(cls, workdir: Path, cities: Sequence[str]) -> Network:
        """Prepare a new network in ``workdir`` (an empty or new folder)."""
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(workdir, cities)

    @classmethod
    def open(cls, workdir: Path) -> Network:
        """Reopen a network that ran in ``workdir`` before, to restart its services."""
        nodes = workdir / "nodes"
        if not (workdir / "deployment.json").is_file() or not nodes.is_dir():
            raise NotFound(
                f"no citymesh network found in {str(workdir)!r}; run "
                "`citymesh demo --workdir` first"
            )
        network = cls(workdir, sorted(p.name for p in nodes.iterdir() if p.is_dir()))
        for city in network.cities:
            network.endpoints[city] = network._settings(city).endpoint
        return network

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every service this object started, nodes first, chain last."""
        for service in reversed(self.services):
            service.stop()
        self.services.clear()

    # -- parties --------------------------------------------------------------

    @property
    def admin_key(self) -> str:
        path = self.workdir / "admin.key"
        if not path.exists():
            _write_secret(path, Account.create().key.hex())
        return path.read_text().strip()

    def _party(self, name: str) -> Any:
        from citymesh.node.identity import NodeIdentity

        keys = self.workdir / name / "keys"
        if not keys.exists():
            NodeIdentity.generate().save(keys)
        return NodeIdentity.load(keys)

    @property
    def scientist_identity(self) -> Any:
        return self._party("scientist")

    @property
    def regulator_identity(self) -> Any:
        return self._party("regulator")

    @property
    def scientist_account(self) -> str:
        return self.scientist_identity.account

    # -- chain ----------------------------------------------------------------

    def start_chain(self, port: int | None = None, deploy: bool = True) -> None:
        """Start the embedded chain; deploy the contracts when none are deployed yet."""
        port = port or free_port()
        self.chain_url = f"http://127.0.0.1:{port}"
        admin = Account.from_key(self.admin_key).address
        service = Service(
            "chain",
            [
                "ledger",
                "serve",
                "--state",
                str(self.workdir / "chain.sqlite"),
                "--port",
                str(port),
                "--prefund",
                f"{admin}={ADMIN_FUNDS_WEI}",
            ],
            self.workdir / "logs" / "chain.log",
            ready_rpc=self.chain_url,
        )
        self.services.append(service.start())
        if deploy and not (self.workdir / "deployment.json").exists():
            self._deploy()

    def _deploy(self) -> None:
        from citymesh.catalog.codes import load_code_list
        from citymesh.ledger.chain import deploy

        deployment = deploy(self.chain_url, self.admin_key)
        deployment.save(self.workdir / "deployment.json")
        chain = self.admin_chain()
        chain.grant_settler(chain.account)
        codes = load_code_list()
        chain.set_code_list(codes.version, bytes.fromhex(codes.sha256))
        for name, role in (("scientist", ROLE_HUB), ("regulator", ROLE_REGULATOR)):
            identity = self._party(name)
            chain.register_node(name, identity.account, identity.public_key, "", role)

    def deployment(self) -> Any:
        from citymesh.ledger.chain import Deployment

        return Deployment.load(self.workdir / "deployment.json")

    def deployment_dict(self) -> dict[str, Any]:
        return self.deployment().__dict__ | {}

    def admin_chain(self) -> Any:
        """Return a ChainClient that signs as the consortium admin."""
        from citymesh.ledger.chain import ChainClient

        return ChainClient(
            self.chain_url, self.deployment(), private_key=self.admin_key
        )

    def reader_chain(self) -> Any:
        """Return a read-only ChainClient."""
        from citymesh.ledger.chain import ChainClient

        return ChainClient(self.chain_url, self.deployment())

    # -- nodes ----------------------------------------------------------------

    def home(self, city: str) -> Path:
        return self.workdir / "nodes" / city

    def _settings(self, city: str) -> Any:
        from citymesh.node.settings import load_settings

        return load_settings(self.home(city))

    def start_nodes(self) -> None:
        """Start a node per city, creating and registering the ones that are new."""
        from citymesh.node.home import init_home
        from citymesh.node.identity import NodeIdentity

        chain = self.admin_chain()
        for city in self.cities:
            home = self.home(city)
            if not (home / "node.toml").exists():
                port = free_port()
                settings = init_home(
                    home,
                    city,
                    self.chain_url,
                    self.workdir / "deployment.json",
                    port=port,
                )
                identity = NodeIdentity.load(home / "keys")
                chain.register_node(
                    city,
                    identity.account,
                    identity.public_key,
                    settings.endpoint,
                    ROLE_CITY_NODE,
                )
                chain.fund(identity.account, GAS_FUNDS_WEI)
            self.endpoints[city] = self._settings(city).endpoint
        for city in self.cities:
            self.services.append(self._node_service(city).start(timeout=120))

    def _node_service(self, city: str) -> Service:
        endpoint = self.endpoints[city]
        return Service(
            f"node {city}",
            [
                "node",
                "serve",
                "--home",
                str(self.home(city)),
                "--chain-url",
                self.chain_url,
            ],
            self.workdir / "logs" / f"node-{city}.log",
            ready_url=f"{endpoint}/health",
        )

    def operator(self, city: str) -> Any:
        """Return a NodeClient holding the city operator's token."""
        from citymesh.node.client import NodeClient
        from citymesh.node.identity import load_operator_token

        token = load_operator_token(self.home(city) / "keys")
        return NodeClient(self.endpoints[city], operator_token=token, timeout=600)

    def scientist(self, city: str) -> Any:
        """Return a NodeClient that signs as the data scientist."""
        from citymesh.node.client import NodeClient

        return NodeClient(self.endpoints[city], signer=self.scientist_identity)

    def regulator(self, city: str) -> Any:
        """Return a NodeClient that signs as the regulator."""
        from citymesh.node.client import NodeClient

        return NodeClient(self.endpoints[city], signer=self.regulator_identity)

    def dataset_path(self, city: str, dataset_id: str) -> Path:
        """Return the Parquet file of a dataset in the city's own data folder.

        The federated job's client for ``city`` reads this file and nothing else.
        """
        from citymesh.catalog.store import CatalogStore

        settings = self._settings(city)
        store = CatalogStore(settings.database)
        try:
            entry = store.get(dataset_id)
        finally:
            store.close()
        path = (settings.data_dir / entry.path).resolve()
        if not path.is_relative_to(settings.data_dir.resolve()):
            raise InvalidInput(
                f"dataset {dataset_id!r} points outside the data folder of {city!r}"
            )
        return path

    def usage_path(self, city: str) -> Path:
        return self._settings(city).usage_path

    def accounts(self) -> dict[str, str]:
        """Return each city's ledger account, as registered on chain."""
        chain = self.reader_chain()
        return {city: chain.node_by_city(city).account for city in self.cities}

    @staticmethod
    def model_hash(job_dir: Path) -> str:
        """Return the SHA-256 of the job's saved model file (hex)."""
        from citymesh.federation.server_app import MODEL_FILE

        return hashlib.sha256((job_dir / MODEL_FILE).read_bytes()).hexdigest()

    # -- audit ----------------------------------------------------------------

    def audit(self) -> dict[str, Any]:
        """Verify every city node's log against its anchors, as the regulator."""
        from citymesh.audit import audit_nodes

        return audit_nodes(
            self.reader_chain(),
            self.regulator_identity,
            self.cities,
            bundle_dir=self.workdir / "audit",
        )
