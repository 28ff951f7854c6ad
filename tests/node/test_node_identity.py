import os
import stat

import pytest

from citymesh.errors import InvalidInput
from citymesh.node.home import init_home
from citymesh.node.identity import NodeIdentity, load_operator_token
from citymesh.node.settings import NodeSettings, load_settings


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_home_layout_and_modes(tmp_path):
    home = tmp_path / "ewr"
    settings = init_home(
        home, "ewr", "http://127.0.0.1:8545", tmp_path / "dep.json", port=8711
    )
    assert settings.city == "ewr"
    assert settings.port == 8711
    assert settings.endpoint == "http://127.0.0.1:8711"
    assert settings.chain_url == "http://127.0.0.1:8545"
    assert settings.deployment_path == (tmp_path / "dep.json").resolve()
    assert (home / "node.toml").is_file()
    assert (home / "data").is_dir()
    for name in ("ed25519.key", "account.key", "operator.token"):
        assert mode(home / "keys" / name) == 0o600, name
    assert mode(home / "keys") == 0o700


def test_init_home_existing_rejected(tmp_path):
    init_home(tmp_path / "n", "ewr")
    with pytest.raises(InvalidInput, match="already exists"):
        init_home(tmp_path / "n", "jfk")


def test_init_home_bad_city_rejected(tmp_path):
    with pytest.raises(InvalidInput, match="invalid city id 'New York'"):
        init_home(tmp_path / "n", "New York")


def test_identity_reload_same_keys(tmp_path):
    init_home(tmp_path / "n", "ewr")
    first = NodeIdentity.load(tmp_path / "n" / "keys")
    second = NodeIdentity.load(tmp_path / "n" / "keys")
    assert first.account == second.account
    assert first.account.startswith("0x")
    assert len(first.account) == 42
    assert first.public_key == second.public_key
    assert len(first.public_key) == 32
    assert len(load_operator_token(tmp_path / "n" / "keys")) >= 40


def test_identity_loose_mode_rejected(tmp_path):
    init_home(tmp_path / "n", "ewr")
    key = tmp_path / "n" / "keys" / "account.key"
    os.chmod(key, 0o644)
    with pytest.raises(InvalidInput, match="chmod 600"):
        NodeIdentity.load(tmp_path / "n" / "keys")


def test_identity_keys_never_overwritten(tmp_path):
    keys = tmp_path / "keys"
    NodeIdentity.generate().save(keys)
    with pytest.raises(FileExistsError):
        NodeIdentity.generate().save(keys)


def test_settings_env_overrides_file(tmp_path, monkeypatch):
    init_home(tmp_path / "n", "ewr", port=8711)
    monkeypatch.setenv("CITYMESH_PORT", "9999")
    monkeypatch.setenv("CITYMESH_MAX_INGEST_BYTES", "1234")
    settings = load_settings(tmp_path / "n")
    assert settings.port == 9999
    assert settings.max_ingest_bytes == 1234
    assert settings.city == "ewr"
    explicit = NodeSettings(home=tmp_path / "n", port=7000)
    assert explicit.port == 7000
