"""Signer resolvers backed by the on-chain node registry."""

from __future__ import annotations

import logging
from pathlib import Path

from citymesh.errors import ChainError, NotFound
from citymesh.node.signing import SignerInfo, SignerResolver

log = logging.getLogger("citymesh.node")


def chain_resolver(client) -> SignerResolver:
    """Return a resolver that reads ``client.node(account)`` from the registry.

    An account the registry does not know (NotFound, or a record with an empty
    public key) resolves to None, which the verifier rejects as unknown.
    """

    def resolve(account: str) -> SignerInfo | None:
        try:
            record = client.node(account)
        except NotFound:
            return None
        except ChainError as error:
            log.error("node registry look-up of %s failed: %s", account, error)
            raise
        if record is None or not record.pubkey:
            return None
        return SignerInfo(
            account=record.account,
            pubkey=bytes(record.pubkey),
            role=int(record.role),
            active=bool(record.active),
            city=record.city,
        )

    return resolve


def open_chain_client(
    chain_url: str, deployment_path: Path, private_key: str | None = None
):
    """Connect a ChainClient to ``chain_url`` with the saved deployment."""
    from citymesh.ledger.chain import ChainClient, Deployment

    deployment = Deployment.load(Path(deployment_path))
    return ChainClient(chain_url, deployment, private_key=private_key)


def file_resolver(path: Path) -> SignerResolver:
    """Return a resolver backed by a JSON file of known signers.

    The file maps each account to [pubkey hex, role, active, city]. It serves
    networks without a chain, such as tests and benchmarks; it is read once.
    """
    import json

    from citymesh.errors import InvalidInput
    from citymesh.node.signing import dict_resolver

    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
        nodes = {
            account: (bytes.fromhex(pubkey), int(role), bool(active), str(city))
            for account, (pubkey, role, active, city) in table.items()
        }
    except (OSError, ValueError, TypeError) as error:
        raise InvalidInput(
            f"cannot read signers file {str(path)!r}: {error}; write JSON "
            '{"0x...": ["<pubkey hex>", 1, true, "city"]}'
        ) from None
    return dict_resolver(nodes)
