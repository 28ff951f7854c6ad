"""One-line errors, early option checks and help text of the CLI commands."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from citymesh.cli import main
from citymesh.node.home import init_home


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    import sys

    argv = sys.argv
    sys.argv = ["citymesh", *args]
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    return " ".join(err.split())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    settings = init_home(tmp_path / "ewr", "ewr", port=closed_port())
    return settings.keys_dir


def test_search_dead_node(capsys, keys: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    code, _, err = run_cli(
        capsys, "catalog", "search", "--node", url, "--keys", str(keys)
    )
    assert code == 1
    assert "Traceback" not in err
    assert one_line(err).startswith(f"error: node {url} cannot be reached:")


def test_search_all_nodes_dead(capsys, keys: Path) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    also_dead = f"http://127.0.0.1:{closed_port()}"
    code, out, err = run_cli(
        capsys,
        "catalog",
        "search",
        "--node",
        dead,
        "--node",
        also_dead,
        "--keys",
        str(keys),
        "--format",
        "json",
    )
    assert code == 1
    assert out.strip() == "[]"
    assert f"error: node {dead} cannot be reached" in err
    assert f"error: none of the 2 nodes could be searched ({dead}, {also_dead})" in (
        one_line(err)
    )


def test_search_prints_live_nodes(capsys, keys: Path, monkeypatch) -> None:
    from citymesh.commands import catalog
    from citymesh.commands.remote import NodeUnreachable

    dead = "http://127.0.0.1:9"
    live = "http://127.0.0.1:8700"

    def search_node(url: str, *_args: object) -> dict:
        if url == dead:
            raise NodeUnreachable(f"node {url} cannot be reached: refused")
        return {"items": [{"id": "ewr:counts", "city": "ewr"}]}

    monkeypatch.setattr(catalog, "_search_node", search_node)
    code, out, err = run_cli(
        capsys,
        "catalog",
        "search",
        "--node",
        dead,
        "--node",
        live,
        "--keys",
        str(keys),
        "--format",
        "json",
    )
    assert code == 1
    assert '"id": "ewr:counts"' in out
    assert f"error: node {dead} cannot be reached: refused" in err
    assert one_line(err).endswith(
        f"error: 1 of 2 nodes could not be searched ({dead}); the results above "
        "are from the others"
    )


def test_search_not_a_url(capsys, keys: Path) -> None:
    code, _, err = run_cli(
        capsys, "catalog", "search", "--node", "notaurl", "--keys", str(keys)
    )
    assert code == 1
    assert one_line(err) == (
        "error: --node 'notaurl' is not an http(s) URL; give a node's base URL "
        "such as http://127.0.0.1:8700"
    )


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--format", "xml", "error: --format must be 'table' or 'json', got 'xml'"),
        (
            "--grade",
            "secret",
            "error: --grade 'secret' is unknown; use one of general, general.1, "
            "general.2, general.3, general.4, important, core",
        ),
    ],
)
def test_search_rejects_option(
    capsys, keys: Path, option: str, value: str, expected: str
) -> None:
    code, _, err = run_cli(
        capsys,
        "catalog",
        "search",
        "--node",
        "http://127.0.0.1:1",
        "--keys",
        str(keys),
        option,
        value,
    )
    assert code == 1
    assert one_line(err) == expected


def test_job_id_patterns_match() -> None:
    from citymesh.federation import spec
    from citymesh.job_files import JOB_ID_PATTERN

    assert spec.JOB_ID_PATTERN.pattern == JOB_ID_PATTERN.pattern


def test_grades_match_code_list() -> None:
    from citymesh.catalog.codes import shared_codes
    from citymesh.commands.catalog import GRADES

    assert set(GRADES) == set(shared_codes().grades)


def test_tiers_match_catalog() -> None:
    from citymesh.catalog.codes import TIERS as CATALOG_TIERS
    from citymesh.commands.catalog import TIERS

    assert TIERS == CATALOG_TIERS


def test_search_rejects_unknown_tier(capsys, keys: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    code, _, err = run_cli(
        capsys, "catalog", "search", "--node", url, "--keys", str(keys), "--tier", "x"
    )
    assert code == 1
    assert "--tier 'x' is unknown; use one of raw, thematic, topic" in one_line(err)


def test_ledger_port_out_of_range(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(
        capsys, "ledger", "serve", "--state", str(tmp_path / "s.db"), "--port", "70000"
    )
    assert code == 2
    assert "70000 is not in the range 1<=x<=65535" in one_line(err)


def test_ledger_missing_key_file(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(
        capsys,
        "ledger",
        "deploy",
        "--rpc-url",
        "http://127.0.0.1:1",
        "--admin-key-file",
        "missing.key",
        "--out",
        str(tmp_path / "d.json"),
    )
    assert code == 1
    assert one_line(err).startswith("error: admin key file 'missing.key' not found")


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            "0x" + "a" * 40 + "=abc",
            "amount 'abc' is invalid; give a whole number of wei",
        ),
        ("0xzz=5", "address '0xzz' is invalid; give 0x and 40 hex digits"),
        ("0x" + "a" * 40, "without '='"),
    ],
)
def test_prefund_names_bad_part(item: str, expected: str) -> None:
    from citymesh.commands.ledger import _parse_prefund
    from citymesh.errors import InvalidInput

    with pytest.raises(InvalidInput) as raised:
        _parse_prefund([item])
    assert expected in str(raised.value)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "foo"], "--model 'foo' is unknown"),
        (
            ["--contributions", "bogus"],
            "--contributions 'bogus' is unknown; use one of none, size, loo, "
            "shapley, gtg, loo+gtg",
        ),
        (["--rows", "5"], "--rows must be at least 30 so each city has data, got 5"),
        (
            ["--contributions", "none"],
            "--contributions none is not supported by the demo",
        ),
    ],
)
def test_demo_checks_options_first(
    capsys, tmp_path: Path, monkeypatch, args: list[str], expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "demo", *args)
    assert code == 1
    assert expected in one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_demo_workdir_is_file(capsys, tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    code, _, err = run_cli(capsys, "demo", "--workdir", str(path))
    assert code == 1
    assert one_line(err) == (
        f"error: --workdir {str(path)!r} is a file, not a folder; pass a new or "
        "empty folder"
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ('rounds = "two"', "job spec key 'rounds' must be an integer, got 'two' (str)"),
        ('name = "../../etc"', "job spec name '../../etc' is invalid"),
        (
            '[model]\nkind = "os:system"',
            "model kind 'os:system' is not a torch.nn.Module subclass",
        ),
        (
            '[model]\nkind = "nonexistent.module:Net"',
            "module 'nonexistent.module' cannot be imported",
        ),
        ('[model]\nkind = "../x:Net"', "model kind '../x:Net' is unknown"),
        (
            "[model]\nbatch_size = 1.5",
            "[model] key 'batch_size' must be an integer, got 1.5 (float)",
        ),
    ],
)
def test_job_validate_rejects_spec(
    capsys, tmp_path: Path, spec: str, expected: str
) -> None:
    path = tmp_path / "job.toml"
    path.write_text(spec + "\n")
    code, _, err = run_cli(
        capsys, "job", "validate", str(path), "--network", str(tmp_path)
    )
    assert code == 1
    assert "Traceback" not in err
    assert expected in one_line(err)


def test_help_lists_choices(capsys) -> None:
    _, out, _ = run_cli(capsys, "demo", "--help")
    for method in ("size", "loo", "gtg", "loo+gtg", "shapley", "none"):
        assert method in out
    _, out, _ = run_cli(capsys, "catalog", "search", "--help")
    assert "general.4" in one_line(out)
    _, out, _ = run_cli(capsys, "node", "serve", "--help")
    assert "127.0.0.1" in one_line(out)
    _, out, _ = run_cli(capsys, "job", "status", "--help")
    assert "JOB_ID" in one_line(out)


def test_job_validate_lists_catalog_ids(capsys, tmp_path: Path) -> None:
    network = tmp_path / "network"
    home = network / "nodes" / "ewr"
    init_home(home, "ewr", port=closed_port())
    (network / "deployment.json").write_text("{}\n")
    source = tmp_path / "counts.csv"
    source.write_text("station,count\nA,1\nB,2\n")
    code, _, err = run_cli(
        capsys,
        "catalog",
        "ingest",
        str(source),
        "--home",
        str(home),
        "--name",
        "counts",
        "--code",
        "04.5.4",
    )
    assert code == 0, err
    spec = tmp_path / "job.toml"
    spec.write_text('min_nodes = 1\n[datasets]\newr = "ewr:missing"\n')
    code, _, err = run_cli(
        capsys, "job", "validate", str(spec), "--network", str(network)
    )
    assert code == 1
    assert (
        "dataset 'ewr:missing' of city 'ewr' not found - the catalog of 'ewr' has "
        "'ewr:counts'"
    ) in one_line(err)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("node-dead", "cannot be reached"),
        ("node-no-scheme", "is not an http(s) URL"),
        ("timeout", "--timeout 0.0 is not above 0"),
        ("out-folder", "is a folder: give a file name"),
    ],
)
def test_exchange_request_errors(
    capsys, keys: Path, tmp_path: Path, option: str, expected: str
) -> None:
    port = closed_port()
    options = {
        "--node": f"http://127.0.0.1:{port}",
        "--timeout": "5",
        "--out": str(tmp_path / "out.arrow"),
    }
    if option == "node-no-scheme":
        options["--node"] = f"127.0.0.1:{port}"
    if option == "timeout":
        options["--timeout"] = "0"
    if option == "out-folder":
        options["--out"] = str(tmp_path)
    args = [item for pair in options.items() for item in pair]
    code, _, err = run_cli(
        capsys,
        "exchange",
        "request",
        "--keys",
        str(keys),
        "--dataset",
        "ewr:flights",
        "--purpose",
        "research",
        *args,
    )
    assert code == 1
    assert "Traceback" not in err
    assert expected in one_line(err)
