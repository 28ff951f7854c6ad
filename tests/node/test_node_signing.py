import pytest

from citymesh.errors import AuthError
from citymesh.node.identity import NodeIdentity
from citymesh.node.signing import RequestVerifier, dict_resolver, sign_headers

NOW = 1_750_000_000.0
TARGET = b"/ledger/events?from_seq=1"


@pytest.fixture(scope="module")
def peer() -> NodeIdentity:
    return NodeIdentity.generate()


def verifier_for(
    peer: NodeIdentity, *, active=True, role=1, now=NOW
) -> RequestVerifier:
    resolver = dict_resolver({peer.account: (peer.public_key, role, active)})
    return RequestVerifier(resolver, window_s=300, clock=lambda: now)


def test_signed_request_verifies(peer):
    headers = sign_headers(peer, "GET", TARGET, b"", now=NOW)
    signer = verifier_for(peer, role=3).verify("GET", TARGET, headers, b"")
    assert signer.account == peer.account
    assert signer.role == 3
    assert signer.pubkey == peer.public_key


def test_signed_request_missing_headers_rejected(peer):
    with pytest.raises(AuthError, match="unsigned request"):
        verifier_for(peer).verify("GET", TARGET, {}, b"")


def test_signed_request_tampered_body_rejected(peer):
    headers = sign_headers(peer, "POST", TARGET, b'{"rows": 1}', now=NOW)
    with pytest.raises(AuthError, match="bad signature"):
        verifier_for(peer).verify("POST", TARGET, headers, b'{"rows": 9}')


def test_signed_request_other_path_rejected(peer):
    headers = sign_headers(peer, "GET", TARGET, b"", now=NOW)
    with pytest.raises(AuthError, match="bad signature"):
        verifier_for(peer).verify("GET", b"/ledger/events?from_seq=2", headers, b"")


def test_signed_request_other_key_rejected(peer):
    impostor = NodeIdentity(NodeIdentity.generate().signing_key, peer.account_key)
    headers = sign_headers(impostor, "GET", TARGET, b"", now=NOW)
    with pytest.raises(AuthError, match="bad signature"):
        verifier_for(peer).verify("GET", TARGET, headers, b"")


def test_signed_request_replay_rejected(peer):
    verifier = verifier_for(peer)
    headers = sign_headers(peer, "GET", TARGET, b"", now=NOW)
    verifier.verify("GET", TARGET, headers, b"")
    with pytest.raises(AuthError, match="replayed request"):
        verifier.verify("GET", TARGET, headers, b"")


def test_signed_request_stale_rejected(peer):
    headers = sign_headers(peer, "GET", TARGET, b"", now=NOW - 301)
    with pytest.raises(AuthError, match="stale request"):
        verifier_for(peer).verify("GET", TARGET, headers, b"")
    future = sign_headers(peer, "GET", TARGET, b"", now=NOW + 301)
    with pytest.raises(AuthError, match="stale request"):
        verifier_for(peer).verify("GET", TARGET, future, b"")


def test_signed_request_unknown_signer_rejected(peer):
    stranger = NodeIdentity.generate()
    headers = sign_headers(stranger, "GET", TARGET, b"", now=NOW)
    with pytest.raises(AuthError, match="unknown signer"):
        verifier_for(peer).verify("GET", TARGET, headers, b"")


def test_signed_request_revoked_signer_rejected(peer):
    headers = sign_headers(peer, "GET", TARGET, b"", now=NOW)
    with pytest.raises(AuthError, match="revoked signer"):
        verifier_for(peer, active=False).verify("GET", TARGET, headers, b"")


def test_signed_request_bad_timestamp_rejected(peer):
    headers = sign_headers(peer, "GET", TARGET, b"", now=NOW)
    headers["X-Citymesh-Timestamp"] = "yesterday"
    with pytest.raises(AuthError, match="invalid timestamp 'yesterday'"):
        verifier_for(peer).verify("GET", TARGET, headers, b"")
