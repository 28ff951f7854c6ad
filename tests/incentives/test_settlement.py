"""Settlement against the embedded chain with the deployed contracts."""

import hashlib

import pytest
from eth_account import Account

from citymesh.errors import InvalidInput
from citymesh.incentives import settle_job
from citymesh.ledger.chain import ChainClient
from citymesh.network import Network


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    with Network.create(tmp_path_factory.mktemp("net"), cities=[]) as network:
        network.start_chain()
        yield network


def _city(network, city):
    admin = network.admin_chain()
    key = Account.create().key.hex()
    account = Account.from_key(key).address
    admin.register_node(city, account, hashlib.sha256(city.encode()).digest(), "", 1)
    admin.fund(account, 10**20)
    return ChainClient(network.chain_url, network.deployment(), private_key=key)


def _root(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def test_settle_job_pays_budget_once(network):
    north = _city(network, "north")
    south = _city(network, "south")
    north.anchor(_root("north-1"), 1, 4, 4)
    south.anchor(_root("south-1"), 1, 2, 2)
    accounts = {"north": north.account, "south": south.account}
    admin = network.admin_chain()

    outcome = settle_job(
        admin,
        epoch=1,
        job_id="job-a",
        model_hash="00" * 32,
        rows={"north": 300, "south": 100},
        loo_gain={"north": 0.0, "south": 0.0},
        budget=1000,
        accounts=accounts,
    )

    assert outcome["amounts"] == {"north": 750, "south": 250}
    assert outcome["balances"] == {"north": 750, "south": 250}
    assert outcome["total"] == 1000
    assert sorted(outcome["roots"]) == sorted(
        [_root("north-1").hex(), _root("south-1").hex()]
    )
    assert admin.paid_epoch(_root("north-1")) == 1

    with pytest.raises(InvalidInput, match="no unpaid anchored usage"):
        settle_job(
            admin,
            epoch=2,
            job_id="job-b",
            model_hash="00" * 32,
            rows={"north": 1, "south": 1},
            loo_gain={},
            budget=10,
            accounts=accounts,
        )

    south.anchor(_root("south-2"), 3, 3, 1)
    second = settle_job(
        admin,
        epoch=2,
        job_id="job-b",
        model_hash="00" * 32,
        rows={"north": 1, "south": 1},
        loo_gain={},
        budget=10,
        accounts=accounts,
    )
    assert second["roots"] == [_root("south-2").hex()]
    assert second["balances"] == {"north": 755, "south": 255}
