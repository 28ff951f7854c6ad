"""Compile contracts/src/*.sol into contracts/artifacts/<Name>.json.

Run from a source checkout after `npm ci` in contracts/::

    python -m citymesh.contracts.build            # rewrite the artifacts
    python -m citymesh.contracts.build --check    # exit 1 if they differ from sources

The compiler is solc-js at the version pinned in contracts/package.json, driven through
its standard JSON interface by contracts/compile.js. Every setting is fixed here and the
artifacts are written with sorted keys, so the same sources give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from citymesh.errors import CitymeshError

logger = logging.getLogger("citymesh.contracts")

CONTRACTS_DIR = Path(__file__).resolve().parent
SOURCE_DIR = CONTRACTS_DIR / "src"
ARTIFACT_DIR = CONTRACTS_DIR / "artifacts"
COMPILE_SCRIPT = CONTRACTS_DIR / "compile.js"
NODE_MODULES = CONTRACTS_DIR / "node_modules"

# "london" keeps the bytecode free of PUSH0 (Shanghai) and MCOPY (Cancun), so it runs on
# every London-or-later chain, including the embedded py-evm chain and consortium chains
# that lag behind mainnet forks.
SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "london",
    "metadata": {"bytecodeHash": "ipfs"},
    "outputSelection": {
        "*": {
            "*": [
                "abi",
                "evm.bytecode.object",
                "evm.deployedBytecode.object",
                "metadata",
            ]
        }
    },
}
COMPILE_TIMEOUT_S = 300


class BuildError(CitymeshError):
    """The contracts could not be compiled or the artifacts are out of date."""


def source_units() -> dict[str, str]:
    """Read contracts/src/*.sol as {"src/<File>.sol": text}, sorted by file name."""
    files = sorted(SOURCE_DIR.glob("*.sol"))
    if not files:
        raise BuildError(f"no Solidity sources found in {str(SOURCE_DIR)!r}")
    return {f"src/{f.name}": f.read_text(encoding="utf-8") for f in files}


def standard_input(sources: dict[str, str]) -> dict[str, Any]:
    return {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sources.items()},
        "settings": SETTINGS,
    }


def run_solc(solc_input: dict[str, Any]) -> dict[str, Any]:
    """Run compile.js under node and return its {version, output, imports} JSON."""
    node = shutil.which("node")
    if node is None:
        raise BuildError("node is not on PATH; install Node.js 20 or later")
    if not NODE_MODULES.is_dir():
        raise BuildError(
            f"{str(NODE_MODULES)!r} is missing; run `npm ci` in {str(CONTRACTS_DIR)!r}"
        )
    try:
        completed = subprocess.run(
            [node, str(COMPILE_SCRIPT)],
            input=json.dumps(solc_input),
            capture_output=True,
            text=True,
            cwd=CONTRACTS_DIR,
            timeout=COMPILE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"solc-js timed out after {COMPILE_TIMEOUT_S} s") from exc
    if completed.returncode != 0:
        raise BuildError(
            f"compile.js failed with exit code {completed.returncode}: "
            f"{completed.stderr.strip()}"
        )
    return json.loads(completed.stdout)


def check_diagnostics(output: dict[str, Any]) -> None:
    """Raise BuildError on compiler errors and log its warnings."""
    errors = []
    for diagnostic in output.get("errors", []):
        text = diagnostic.get("formattedMessage") or diagnostic.get("message", "")
        if diagnostic.get("severity") == "error":
            errors.append(text)
        else:
            logger.warning("solc: %s", text.strip())
    if errors:
        raise BuildError("solc reported errors:\n" + "\n".join(errors))


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_artifacts(compiled: dict[str, Any], sources: dict[str, str]) -> dict[str, str]:
    """Return {contract name: artifact JSON text} for every contract in src/."""
    output = compiled["output"]
    check_diagnostics(output)
    all_sources = {**compiled["imports"], **sources}
    artifacts: dict[str, str] = {}
    for unit in sources:
        for name, contract in sorted(output["contracts"].get(unit, {}).items()):
            metadata = json.loads(contract["metadata"])
            used = {path: sha256_hex(all_sources[path]) for path in metadata["sources"]}
            # The digest covers every file the contract was compiled from (its own
            # source and each import), keyed by path in sorted order.
            source_hash = hashlib.sha256(
                json.dumps(used, sort_keys=True).encode("utf-8")
            ).hexdigest()
            artifact = {
                "contractName": name,
                "sourceName": unit,
                "abi": contract["abi"],
                "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x"
                + contract["evm"]["deployedBytecode"]["object"],
                "compiler": {
                    "name": "solc-js",
                    "version": compiled["version"],
                    "optimizer": SETTINGS["optimizer"],
                    "evmVersion": SETTINGS["evmVersion"],
                },
                "sourceHash": "sha256:" + source_hash,
                "sources": used,
            }
            if name in artifacts:
                raise BuildError(f"two contracts are named {name!r}; rename one")
            artifacts[name] = json.dumps(artifact, indent=2, sort_keys=True) + "\n"
    return artifacts


def build() -> dict[str, str]:
    """Compile the sources and return {contract name: artifact JSON text}."""
    sources = source_units()
    compiled = run_solc(standard_input(sources))
    return make_artifacts(compiled, sources)


def stale_artifacts(artifacts: dict[str, str], directory: Path) -> list[str]:
    """Return the names whose file in `directory` is missing, differs or is extra."""
    stale = []
    for name, text in artifacts.items():
        path = directory / f"{name}.json"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    for path in sorted(directory.glob("*.json")):
        if path.stem not in artifacts:
            stale.append(path.stem)
    return stale


def write_artifacts(artifacts: dict[str, str], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in artifacts.items():
        (directory / f"{name}.json").write_text(text, encoding="utf-8")
    for path in directory.glob("*.json"):
        if path.stem not in artifacts:
            path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m citymesh.contracts.build", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ARTIFACT_DIR,
        help="folder to write or check the artifacts in (default: %(default)s)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the artifacts differ from a fresh build",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        artifacts = build()
    except BuildError as exc:
        logger.error("%s", exc)
        return 2
    if args.check:
        stale = stale_artifacts(artifacts, args.out)
        if stale:
            logger.error(
                "artifacts out of date in %s: %s; "
                "run python -m citymesh.contracts.build",
                args.out,
                ", ".join(stale),
            )
            return 1
        logger.info("artifacts in %s match the sources", args.out)
        return 0
    write_artifacts(artifacts, args.out)
    logger.info("wrote %d artifacts to %s", len(artifacts), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
