"""A node against the embedded py-evm chain: on-chain signer look-up and anchoring."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account

from citymesh.errors import AuthError
from citymesh.ledger.chain import ChainClient, deploy
from citymesh.ledger.evm_chain import EmbeddedChain
from citymesh.ledger.evm_server import ChainServer
from citymesh.node.app import create_app
from citymesh.node.client import NodeClient
from citymesh.node.home import init_home
from citymesh.node.identity import NodeIdentity, load_operator_token

# A public development key (anvil's first default account); funded only on this
# throw-away chain.
ADMIN_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ETHER = 10**18


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    state = tmp_path_factory.mktemp("chain") / "chain.db"
    admin = Account.from_key(ADMIN_KEY).address
    with (
        EmbeddedChain(state, prefund={admin: 10**24}) as embedded,
        ChainServer(embedded) as server,
    ):
        deployment = deploy(server.url, ADMIN_KEY)
        yield server.url, deployment


def test_node_chain_signers_and_anchor(chain, serve_app, tmp_path: Path):
    url, deployment = chain
    deployment_path = tmp_path / "deployment.json"
    deployment.save(deployment_path)
    settings = init_home(tmp_path / "jfk", "jfk", url, deployment_path)
    settings = settings.model_copy(update={"signer_cache_s": 0.0})
    node = NodeIdentity.load(settings.keys_dir)
    peer = NodeIdentity.generate()
    stranger = NodeIdentity.generate()
    admin = ChainClient(url, deployment, private_key=ADMIN_KEY)
    admin.fund(node.account, ETHER)
    admin.register_node("jfk", node.account, node.public_key, settings.endpoint, 1)
    admin.register_node("lga", peer.account, peer.public_key, "http://127.0.0.1:1", 1)

    source = tmp_path / "counts.csv"
    source.write_text("hour,vehicles\n" + "".join(f"{h},{h * 10}\n" for h in range(24)))
    base = serve_app(create_app(settings))
    operator = NodeClient(base, operator_token=load_operator_token(settings.keys_dir))
    entry = operator.ingest(source, name="counts", code="04.5.1")
    assert entry["rows"] == 24

    with NodeClient(base, peer) as client:
        events = client.events()
    assert [e["event"]["kind"] for e in events] == ["ingest"]

    with (
        NodeClient(base, stranger) as client,
        pytest.raises(AuthError, match="unknown signer"),
    ):
        client.events()

    result = operator.anchor()
    assert result["head"] == 1
    assert [(b["from_seq"], b["to_seq"]) for b in result["batches"]] == [(1, 1)]
    anchors = admin.anchors(node.account)
    assert [(a.from_seq, a.to_seq, a.count) for a in anchors] == [(1, 1, 1)]
    assert anchors[0].root.hex() == result["batches"][0]["root"]

    admin.revoke_node(peer.account)
    with (
        NodeClient(base, peer) as client,
        pytest.raises(AuthError, match="revoked signer"),
    ):
        client.events()
    operator.close()
