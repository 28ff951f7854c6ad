"""Merkle trees: RFC 6962 test vectors, the recursive definition, proof round trips."""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citymesh.errors import InvalidInput
from citymesh.ledger.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_inclusion,
)

# The test leaves and tree heads of the Certificate Transparency reference code
# (also in transparency-dev/merkle testonly/constants.go).
CT_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_PATH_0_OF_8 = [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
]


def reference_root(leaves):
    """MTH straight from RFC 6962 section 2.1: split at the largest power of two."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    split = 1
    while split * 2 < len(leaves):
        split *= 2
    return node_hash(reference_root(leaves[:split]), reference_root(leaves[split:]))


@pytest.mark.parametrize("size", range(1, 9))
def test_merkle_root_ct_known_answers(size):
    assert merkle_root(CT_LEAVES[:size]).hex() == CT_ROOTS[size - 1]


def test_merkle_proof_ct_known_answer():
    assert [p.hex() for p in inclusion_proof(CT_LEAVES, 0)] == CT_PATH_0_OF_8


def test_merkle_empty_root_is_sha256_of_nothing():
    assert merkle_root([]) == EMPTY_ROOT
    assert EMPTY_ROOT.hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_merkle_leaf_and_node_domains_differ():
    left, right = b"\x11" * 32, b"\x22" * 32
    assert leaf_hash(left + right) != node_hash(left, right)
    # A two-leaf tree's root cannot pass as the hash of a leaf holding both halves.
    assert merkle_root([left, right]) != leaf_hash(leaf_hash(left) + leaf_hash(right))


leaf_lists = st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=70)


@settings(max_examples=150, deadline=None)
@given(leaves=leaf_lists)
def test_merkle_root_matches_rfc_definition(leaves):
    assert merkle_root(leaves) == reference_root(leaves)


@settings(max_examples=150, deadline=None)
@given(leaves=leaf_lists, data=st.data())
def test_merkle_proof_round_trip(leaves, data):
    tree = MerkleTree(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1))
    path = tree.proof(index)
    size = len(leaves)
    assert verify_inclusion(leaves[index], index, size, path, tree.root)
    assert not verify_inclusion(leaves[index] + b"!", index, size, path, tree.root)
    assert not verify_inclusion(
        leaves[index], index, size, path + [b"\0" * 32], tree.root
    )
    if path:
        assert not verify_inclusion(leaves[index], index, size, path[:-1], tree.root)
        flipped = bytes([path[0][0] ^ 1]) + path[0][1:]
        changed = [flipped, *path[1:]]
        assert not verify_inclusion(leaves[index], index, size, changed, tree.root)


def test_merkle_proof_wrong_index_fails():
    leaves = [bytes([i]) * 32 for i in range(11)]
    tree = MerkleTree(leaves)
    for index in range(11):
        path = tree.proof(index)
        for other in range(11):
            if other != index:
                assert not verify_inclusion(leaves[index], other, 11, path, tree.root)


def test_merkle_proof_rejects_index_out_of_range():
    tree = MerkleTree([b"a", b"b", b"c"])
    with pytest.raises(InvalidInput, match="within 0..2"):
        tree.proof(3)
    assert not verify_inclusion(b"a", 3, 3, tree.proof(0), tree.root)
    assert not verify_inclusion(b"a", -1, 3, tree.proof(0), tree.root)
