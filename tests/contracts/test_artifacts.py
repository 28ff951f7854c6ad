"""The committed contract artifacts: loading them and rebuilding them from sources."""

import json
import shutil
from pathlib import Path

import pytest

from citymesh.contracts import CONTRACT_NAMES, artifact_names, load_artifact
from citymesh.contracts import build as contracts_build
from citymesh.errors import NotFound

CONTRACTS_DIR = Path(contracts_build.__file__).resolve().parent
COMMITTED = CONTRACTS_DIR / "artifacts"
NEEDS_COMPILER = pytest.mark.skipif(
    not (CONTRACTS_DIR / "node_modules" / "solc").is_dir()
    or shutil.which("node") is None,
    reason="solc-js is not installed: run `npm ci` in contracts/ (needs Node.js)",
)


def test_artifact_names_lists_four_contracts():
    assert artifact_names() == sorted(CONTRACT_NAMES)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_load_artifact_returns_abi_and_bytecode(name):
    artifact = load_artifact(name)
    assert artifact.name == name
    assert artifact.bytecode.startswith("0x60")
    assert len(artifact.bytecode) > 1000
    assert artifact.deployed_bytecode.startswith("0x")
    assert artifact.compiler.startswith("0.8.37+")
    assert artifact.source_hash.startswith("sha256:")
    assert f"src/{name}.sol" in artifact.sources
    assert any(entry["type"] == "constructor" for entry in artifact.abi)


def test_load_artifact_unknown_name_raises_not_found():
    with pytest.raises(NotFound, match="'Missing'"):
        load_artifact("Missing")


def test_load_artifact_rejects_path_name():
    with pytest.raises(NotFound):
        load_artifact("../artifacts/UsageAnchor")


def test_artifacts_declare_contract_rules():
    anchor_abi = load_artifact("UsageAnchor").abi
    errors = {e["name"] for e in anchor_abi if e["type"] == "error"}
    assert {"AnchorOutOfSequence", "NodeNotActive", "CountMismatch"} <= errors
    token_abi = load_artifact("CreditToken").abi
    events = {e["name"] for e in token_abi if e["type"] == "event"}
    assert "Settled" in events
    token_errors = {e["name"] for e in token_abi if e["type"] == "error"}
    assert "RootAlreadyPaid" in token_errors


def test_artifacts_target_london_without_push0():
    for name in CONTRACT_NAMES:
        data = json.loads((COMMITTED / f"{name}.json").read_text())
        assert data["compiler"]["evmVersion"] == "london"
        assert data["compiler"]["optimizer"] == {"enabled": True, "runs": 200}


@pytest.fixture(scope="module")
def fresh_artifacts():
    return contracts_build.build()


@NEEDS_COMPILER
def test_build_matches_committed_artifacts(fresh_artifacts):
    assert sorted(fresh_artifacts) == sorted(CONTRACT_NAMES)
    stale = contracts_build.stale_artifacts(fresh_artifacts, COMMITTED)
    assert stale == [], (
        f"artifacts differ from the sources for {stale}; "
        "run `python -m citymesh.contracts.build` and commit contracts/artifacts"
    )


@NEEDS_COMPILER
def test_build_check_flags_changed_artifact(fresh_artifacts, tmp_path):
    folder = tmp_path / "artifacts"
    shutil.copytree(COMMITTED, folder)
    changed = folder / "UsageAnchor.json"
    changed.write_text(changed.read_text().replace('"london"', '"paris"'))
    (folder / "Extra.json").write_text("{}\n")

    assert contracts_build.stale_artifacts(fresh_artifacts, folder) == [
        "UsageAnchor",
        "Extra",
    ]
    assert contracts_build.main(["--check", "--out", str(folder)]) == 1


@NEEDS_COMPILER
def test_build_writes_identical_bytes(fresh_artifacts, tmp_path):
    contracts_build.write_artifacts(fresh_artifacts, tmp_path)
    for name in CONTRACT_NAMES:
        written = (tmp_path / f"{name}.json").read_bytes()
        assert written == (COMMITTED / f"{name}.json").read_bytes()
