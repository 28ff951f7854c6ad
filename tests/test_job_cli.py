"""``citymesh job`` on a real network folder: chain and node processes, real files.

One small demo network (3,000 flights) is built per module. The CLI runs in this
process through ``citymesh.cli.main``, except the successful job run, which runs
as its own ``citymesh`` process like a user's.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from citymesh.catalog.models import DatasetEntry  # noqa: E402
from citymesh.catalog.store import CatalogStore  # noqa: E402
from citymesh.cli import main  # noqa: E402
from citymesh.errors import InvalidInput  # noqa: E402
from citymesh.federation import JobSpec  # noqa: E402
from citymesh.federation.approval import Approvals  # noqa: E402
from citymesh.incentives import Payout, payout_memo  # noqa: E402
from citymesh.job_approval import approvals_path, decide_job  # noqa: E402
from citymesh.job_files import JobFolder  # noqa: E402
from citymesh.ledger.log import UsageLog  # noqa: E402
from citymesh.node.settings import load_settings  # noqa: E402

ROWS = 3_000
CITIES = ["EWR", "JFK", "LGA"]
BUDGET = 300_000
ROUNDS = 3


def run_cli(
    capsys: pytest.CaptureFixture[str], *args: str, stdin: str | None = None
) -> tuple[int, str, str]:
    """Run ``citymesh ARGS`` in this process; return exit code, stdout, stderr."""
    capsys.readouterr()
    saved_argv, saved_stdin = sys.argv, sys.stdin
    sys.argv = ["citymesh", *args]
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        main()
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    finally:
        sys.argv, sys.stdin = saved_argv, saved_stdin
    out, err = capsys.readouterr()
    # Rich wraps the error line at the console width; join it back into one line.
    return code, out, " ".join(err.split())


def spec_toml(job_id: str, datasets: dict[str, str], **extra: object) -> str:
    values: dict[str, object] = {
        "job_id": job_id,
        "name": "late-arrivals",
        "rounds": ROUNDS,
        "min_nodes": 3,
        "budget": BUDGET,
        "consumer": "0x000000000000000000000000000000000000dEaD",
    }
    values.update(extra)
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    lines += ["", "[datasets]"]
    lines += [f'{city} = "{dataset}"' for city, dataset in datasets.items()]
    lines += ["", "[model]", 'kind = "logreg"', "learning_rate = 0.05"]
    lines += ["batch_size = 256"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A network made by `citymesh demo`, which stops its chain and nodes at exit."""
    workdir = tmp_path_factory.mktemp("job-cli") / "network"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "citymesh.cli",
            "demo",
            "--rows",
            str(ROWS),
            "--rounds",
            "2",
            "--contributions",
            "size",
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def datasets(network: Path) -> dict[str, str]:
    """Each city's flights dataset id, as the demo ingested it."""
    return {city: f"{city}:flights-{city.lower()}" for city in CITIES}


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("specs")


def write_spec(folder: Path, job_id: str, datasets: dict[str, str], **extra) -> Path:
    path = folder / f"{job_id}.toml"
    path.write_text(spec_toml(job_id, datasets, **extra))
    return path


def add_entry_copy(network: Path, city: str, source: str, **changes: object) -> str:
    """Add a catalog entry that copies ``source`` with ``changes``; return its id."""
    store = CatalogStore(load_settings(network / "nodes" / city).database)
    try:
        data = store.get(source).model_dump()
        data.pop("search_text", None)
        store.add(DatasetEntry(**(data | changes)))
    finally:
        store.close()
    return str(changes["id"])


def usage_events(network: Path, city: str, job_id: str) -> list[str]:
    with UsageLog(load_settings(network / "nodes" / city).usage_path) as log:
        return [e.event.kind for e in log.entries() if e.event.job_id == job_id]


# job folder ------------------------------------------------------------------------


def test_job_folder_state_changes(tmp_path: Path) -> None:
    folder = JobFolder(tmp_path, "state-1")
    folder.create()
    queued = folder.set_state("queued", mode="inprocess")
    assert queued["state"] == "queued"
    assert "started" not in queued
    running = folder.set_state("running", round=0)
    assert running["mode"] == "inprocess"
    assert running["started"] == running["updated"]
    folder.update(round=2)
    assert folder.status()["round"] == 2
    assert folder.status()["state"] == "running"
    done = folder.set_state("succeeded")
    assert done["finished"] == done["updated"]
    with pytest.raises(InvalidInput, match="job state 'paused' is unknown"):
        folder.set_state("paused")


def test_job_folder_reuses_failed_job(tmp_path: Path) -> None:
    folder = JobFolder(tmp_path, "again-1")
    folder.create()
    folder.set_state("queued")
    folder.write_json("metrics.json", {"rounds": []})
    folder.log_path.write_text("first run\n")
    folder.set_state("failed", error="boom")
    folder.create()
    assert not folder.file("metrics.json").exists()
    assert folder.log_path.read_text() == "first run\n"
    assert folder.set_state("queued")["state"] == "queued"
    assert "error" not in folder.status()


def test_job_folder_rejects_existing_job(tmp_path: Path) -> None:
    folder = JobFolder(tmp_path, "done-1")
    folder.create()
    folder.set_state("succeeded")
    with pytest.raises(InvalidInput, match="already exists with state 'succeeded'"):
        folder.create()


@pytest.mark.parametrize("job_id", ["../escape", "", "a/b", ".hidden", "x" * 129])
def test_job_folder_rejects_unsafe_id(tmp_path: Path, job_id: str) -> None:
    with pytest.raises(InvalidInput, match="is invalid"):
        JobFolder(tmp_path, job_id)


# validate --------------------------------------------------------------------------


def test_validate_accepts_demo_datasets(
    capsys, network: Path, datasets: dict[str, str], specs: Path
) -> None:
    spec = write_spec(specs, "valid-1", datasets)
    code, out, _ = run_cli(
        capsys,
        "job",
        "validate",
        str(spec),
        "--network",
        str(network),
        "--format",
        "json",
    )
    assert code == 0
    report = json.loads(out)
    assert report["valid"] is True
    assert report["problems"] == []
    assert sorted(report["datasets"]) == CITIES
    assert sum(d["rows"] for d in report["datasets"].values()) == ROWS


def test_resolve_match_by_code_and_columns(
    capsys, network: Path, datasets: dict[str, str], specs: Path
) -> None:
    spec = specs / "match-1.toml"
    spec.write_text(
        'job_id = "match-1"\nmin_nodes = 3\n\n[match]\ncode = "04.5"\n'
        'columns = ["arr_delay", "carrier"]\n'
    )
    resolved = specs / "match-1-resolved.toml"

    code, _, err = run_cli(
        capsys,
        "job",
        "resolve",
        str(spec),
        "--network",
        str(network),
        "--out",
        str(resolved),
    )

    assert code == 0, err
    assert JobSpec.from_toml(resolved).datasets == datasets
    spec.write_text(spec.read_text().replace('"carrier"', '"carrier", "no_such"'))
    code, _, err = run_cli(
        capsys, "job", "resolve", str(spec), "--network", str(network)
    )
    assert code == 1
    assert "no city has a dataset under code '04.5' with columns" in err


def test_validate_lists_every_problem(
    capsys, network: Path, datasets: dict[str, str], specs: Path
) -> None:
    text_distance = add_entry_copy(
        network,
        "JFK",
        datasets["JFK"],
        id="JFK:flights-text",
        name="flights-text",
        columns=[
            {**c, "type": "string"} if c["name"] == "distance" else c
            for c in CatalogStore(load_settings(network / "nodes" / "JFK").database)
            .get(datasets["JFK"])
            .columns
        ],
    )
    core = add_entry_copy(
        network,
        "LGA",
        datasets["LGA"],
        id="LGA:flights-core",
        name="flights-core",
        grade="core",
    )
    spec = write_spec(
        specs, "invalid-1", {"EWR": "EWR:missing", "JFK": text_distance, "LGA": core}
    )
    code, out, _ = run_cli(
        capsys,
        "job",
        "validate",
        str(spec),
        "--network",
        str(network),
        "--format",
        "json",
    )
    assert code == 1
    problems = json.loads(out)["problems"]
    assert "dataset 'EWR:missing' of city 'EWR' not found" in problems
    assert any(p.startswith("column 'distance' has different types") for p in problems)
    assert any("graded core" in p for p in problems)

    code, _, err = run_cli(
        capsys, "job", "validate", str(spec), "--network", str(network)
    )
    assert code == 1
    assert "job 'invalid-1' is invalid:" in err


def test_validate_finds_missing_target(
    capsys, network: Path, datasets: dict[str, str], specs: Path
) -> None:
    spec = specs / "target.toml"
    spec.write_text(
        spec_toml("target-1", datasets)
        + '\n[target]\ncolumn = "delay_minutes"\nthreshold = 15.0\n'
    )
    code, out, _ = run_cli(
        capsys,
        "job",
        "validate",
        str(spec),
        "--network",
        str(network),
        "--format",
        "json",
    )
    assert code == 1
    problems = json.loads(out)["problems"]
    assert (
        "target column 'delay_minutes' missing in dataset 'EWR:flights-ewr'" in problems
    )


# approve ---------------------------------------------------------------------------


def test_approve_asks_for_confirmation(
    capsys, network: Path, datasets: dict[str, str], specs: Path
) -> None:
    spec = write_spec(specs, "confirm-1", datasets)
    home = network / "nodes" / "EWR"
    code, out, err = run_cli(
        capsys, "job", "approve", str(spec), "--home", str(home), stdin="n\n"
    )
    assert code == 130
    assert "code sha256:" in out
    assert "dataset at EWR: EWR:flights-ewr" in out
    assert Approvals(approvals_path(home)).get("confirm-1") is None
    assert usage_events(network, "EWR", "confirm-1") == []

    code, out, _ = run_cli(
        capsys,
        "job",
        "approve",
        str(spec),
        "--home",
        str(home),
        "--operator",
        "ewr-office",
        stdin="y\n",
    )
    assert code == 0
    assert "approved job 'confirm-1' at EWR" in out
    approval = Approvals(approvals_path(home)).get("confirm-1")
    assert approval is not None
    assert approval.operator == "ewr-office"
    assert usage_events(network, "EWR", "confirm-1") == ["approval"]


def test_approve_refuse_logs_refusal(
    capsys, network: Path, datasets: dict[str, str], specs: Path
) -> None:
    spec = write_spec(specs, "refuse-1", datasets)
    home = network / "nodes" / "JFK"
    decide_job(home, JobSpec.from_toml(spec), approve=True, operator="jfk-office")
    code, out, _ = run_cli(
        capsys,
        "job",
        "approve",
        str(spec),
        "--home",
        str(home),
        "--refuse",
        "--reason",
        "purpose unclear",
        "--format",
        "json",
    )
    assert code == 0
    assert json.loads(out)["decision"] == "refusal"
    assert Approvals(approvals_path(home)).get("refuse-1") is None
    assert usage_events(network, "JFK", "refuse-1") == ["approval", "refusal"]
    with UsageLog(load_settings(home).usage_path) as log:
        last = log.entries()[-1].event
    assert last.detail["reason"] == "purpose unclear"
    assert last.dataset_id == "JFK:flights-jfk"


def test_approve_rejects_core_dataset(
    capsys, network: Path, datasets: dict[str, str], specs: Path
) -> None:
    store = CatalogStore(load_settings(network / "nodes" / "LGA").database)
    try:
        store.get("LGA:flights-core")
    except LookupError:
        add_entry_copy(
            network,
            "LGA",
            datasets["LGA"],
            id="LGA:flights-core",
            name="flights-core",
            grade="core",
        )
    finally:
        store.close()
    spec = write_spec(specs, "core-1", {**datasets, "LGA": "LGA:flights-core"})
    code, _, err = run_cli(
        capsys,
        "job",
        "approve",
        str(spec),
        "--home",
        str(network / "nodes" / "LGA"),
        "--yes",
    )
    assert code == 1
    assert "cannot be approved at 'LGA'" in err
    assert "graded core" in err


def test_approve_job_without_city_dataset(
    capsys, network: Path, datasets: dict[str, str], specs: Path
) -> None:
    spec = write_spec(specs, "other-1", {"EWR": datasets["EWR"]}, min_nodes=1)
    code, _, err = run_cli(
        capsys,
        "job",
        "approve",
        str(spec),
        "--home",
        str(network / "nodes" / "LGA"),
        "--yes",
    )
    assert code == 1
    assert "names no dataset of city 'LGA'" in err


# run: a job the nodes did not approve ------------------------------------------------


def test_run_rejects_unapproved_job(
    capsys, network: Path, datasets: dict[str, str], specs: Path
) -> None:
    spec = write_spec(specs, "unapproved-1", datasets)
    decide_job(
        network / "nodes" / "EWR",
        JobSpec.from_toml(spec),
        approve=True,
        operator="ewr-office",
    )
    code, _, err = run_cli(capsys, "job", "run", str(spec), "--network", str(network))
    assert code == 1
    assert "job 'unapproved-1' is not approved at JFK, LGA" in err
    status = JobFolder.find(network, "unapproved-1").status()
    assert status["state"] == "failed"
    assert "is not approved at JFK, LGA" in status["error"]
    for city in CITIES:
        assert "train_round" not in usage_events(network, city, "unapproved-1")

    code, _, err = run_cli(
        capsys, "job", "result", "unapproved-1", "--network", str(network)
    )
    assert code == 1
    assert "has state 'failed'" in err


def test_status_of_unknown_job(capsys, network: Path) -> None:
    code, _, err = run_cli(capsys, "job", "status", "nope", "--network", str(network))
    assert code == 1
    assert "job 'nope' not found" in err


# run: an approved job ----------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_job(
    network: Path, datasets: dict[str, str], specs: Path
) -> tuple[str, JobFolder]:
    """A job approved by every city and run by a `citymesh job run` process."""
    spec_path = write_spec(specs, "run-1", datasets)
    spec = JobSpec.from_toml(spec_path)
    for city in CITIES:
        decide_job(
            network / "nodes" / city, spec, approve=True, operator=f"{city}-office"
        )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "citymesh.cli",
            "job",
            "run",
            str(spec_path),
            "--network",
            str(network),
            "--epoch",
            "7",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, JobFolder.find(network, "run-1")


def test_run_writes_job_files(finished_job) -> None:
    out, folder = finished_job
    assert "job 'run-1': AUC" in out
    status = folder.status()
    assert status["state"] == "succeeded"
    assert status["round"] == ROUNDS
    assert status["mode"] == "inprocess"
    for name in (
        "spec.toml",
        "job.log",
        "metrics.json",
        "privacy.json",
        "contributions.json",
        "model.pt",
        "encoding.json",
        "settlement.json",
        "result.json",
    ):
        assert folder.file(name).is_file(), name
    assert JobSpec.from_toml(folder.file("spec.toml")).id == "run-1"
    # Atomic writes leave no temporary files behind.
    assert [p.name for p in folder.path.iterdir() if p.name.startswith(".")] == []


def test_run_metrics_per_round_and_city(finished_job) -> None:
    _, folder = finished_job
    rounds = folder.read_json("metrics.json")["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for record in rounds:
        assert sorted(record["per_city"]) == CITIES
        assert 0.5 < record["auc"] < 1.0
    result = folder.read_json("result.json")
    assert result["final_auc"] == rounds[-1]["auc"]
    privacy = folder.read_json("privacy.json")
    assert privacy["mode"] == "none"
    assert privacy["epsilon"] is None
    assert sorted(privacy["per_dataset"]) == [
        f"{c}:flights-{c.lower()}" for c in CITIES
    ]


def test_run_contributions_from_gtg(finished_job) -> None:
    _, folder = finished_job
    contributions = folder.read_json("contributions.json")
    assert contributions["method"] == "gtg"
    per_city = contributions["per_city"]
    assert sorted(per_city) == CITIES
    assert sum(c["size_share"] for c in per_city.values()) == pytest.approx(1.0)
    gtg = contributions["gtg"]
    for city in CITIES:
        assert per_city[city]["shapley"] == gtg["shapley"][city]
        assert per_city[city]["loo"] is None
    assert len(gtg["rounds"]) == ROUNDS


def test_run_model_export_matches_state_dict(finished_job) -> None:
    _, folder = finished_job
    state = torch.load(folder.file("model.pt"), weights_only=True)
    assert set(state) == {"linear.weight", "linear.bias"}
    result = folder.read_json("result.json")
    width = result["model"]["inputs"]
    assert state["linear.weight"].shape == (1, width)
    features = np.random.default_rng(0).normal(size=(5, width)).astype(np.float32)
    expected = (torch.from_numpy(features) @ state["linear.weight"].T).squeeze(-1)
    expected = (expected + state["linear.bias"]).numpy()
    if result["model"]["format"] == "onnx":
        onnx = pytest.importorskip("onnx")
        from onnx.reference import ReferenceEvaluator

        model = onnx.load(str(folder.file("model.onnx")))
        onnx.checker.check_model(model)
        logits = ReferenceEvaluator(model).run(None, {"features": features})[0]
    else:
        module = torch.jit.load(str(folder.file("model.ts")))
        logits = module(torch.from_numpy(features)).detach().numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_run_logs_usage_at_each_node(network: Path, finished_job) -> None:
    _, folder = finished_job
    anchors = folder.read_json("result.json")["anchors"]
    for city in CITIES:
        kinds = usage_events(network, city, "run-1")
        assert kinds == ["approval"] + ["train_round"] * ROUNDS
        with UsageLog(load_settings(network / "nodes" / city).usage_path) as log:
            assert anchors[city]["head"] == log.head()
        assert anchors[city]["roots"]


def test_run_settles_budget_with_memo(finished_job) -> None:
    _, folder = finished_job
    settlement = folder.read_json("settlement.json")
    assert settlement["total"] == BUDGET
    assert settlement["epoch"] == 7
    assert settlement["gain"] == "shapley"
    model_hash = folder.read_json("result.json")["model"]["sha256"]
    assert settlement["model_hash"] == model_hash
    payouts = [
        Payout(city, settlement["scores"][city], settlement["amounts"][city])
        for city in sorted(settlement["amounts"])
    ]
    assert payout_memo("run-1", model_hash, payouts).hex() == settlement["memo"]


def test_status_result_and_logs_commands(capsys, network: Path, finished_job) -> None:
    _, folder = finished_job
    code, out, _ = run_cli(capsys, "job", "status", "run-1", "--network", str(network))
    assert code == 0
    assert out.startswith("job 'run-1': succeeded, round 3/3, AUC ")

    code, out, _ = run_cli(
        capsys, "job", "result", "run-1", "--network", str(network), "--format", "json"
    )
    assert code == 0
    assert json.loads(out) == folder.read_json("result.json")

    code, out, _ = run_cli(capsys, "job", "result", "run-1", "--network", str(network))
    assert code == 0
    assert "contributions (gtg)" in out

    code, out, _ = run_cli(
        capsys, "job", "logs", "run-1", "--network", str(network), "--follow"
    )
    assert code == 0
    assert "round 3/3: pooled AUC" in out
    assert "job run-1 succeeded: AUC" in out


def test_rerun_of_succeeded_job_rejected(
    capsys, network: Path, finished_job, specs: Path
) -> None:
    code, _, err = run_cli(
        capsys, "job", "run", str(specs / "run-1.toml"), "--network", str(network)
    )
    assert code == 1
    assert "job 'run-1' already exists with state 'succeeded'" in err


@pytest.mark.slow
def test_run_in_deployment_mode(
    network: Path, datasets: dict[str, str], specs: Path
) -> None:
    spec_path = write_spec(specs, "deploy-1", datasets, rounds=1, round_timeout_s=240.0)
    spec = JobSpec.from_toml(spec_path)
    for city in CITIES:
        decide_job(
            network / "nodes" / city, spec, approve=True, operator=f"{city}-office"
        )

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "citymesh.cli",
            "job",
            "run",
            str(spec_path),
            "--network",
            str(network),
            "--mode",
            "deployment",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    folder = JobFolder.find(network, "deploy-1")
    assert folder.status()["mode"] == "deployment"
    contributions = folder.read_json("contributions.json")
    assert contributions["method"] == "gtg"
    assert sorted(contributions["gtg"]["shapley"]) == CITIES
    assert folder.read_json("settlement.json")["gain"] == "shapley"
    for city in CITIES:
        assert usage_events(network, city, "deploy-1") == ["approval", "train_round"]
