"""``citymesh job``: validate, approve, run and inspect federated training jobs.

A data scientist validates a job spec against the network's catalogs and runs
it on a network folder made by ``citymesh demo --workdir DIR``. Before that,
each city's operator approves the job at the city's node. The run's files are in
``DIR/jobs/<job_id>/``.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from citymesh.errors import InvalidInput

app = typer.Typer(no_args_is_help=True)

FOLLOW_POLL_S = 0.5
MAX_LISTED_IDS = 20


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


class RunMode(StrEnum):
    inprocess = "inprocess"
    deployment = "deployment"


class ContributionMethod(StrEnum):
    none = "none"
    size = "size"
    loo = "loo"
    shapley = "shapley"
    gtg = "gtg"
    loo_gtg = "loo+gtg"


# NOTE: typer 0.20.1 sets TyperArgument.help before calling click's
# Argument.__init__, which since click 8.5.0 takes help itself and resets it to
# None, so `--help` drops argument help. Each command's docstring describes its
# arguments instead.
SpecArgument = Annotated[Path, typer.Argument(show_default=False)]
NetworkOption = Annotated[
    Path,
    typer.Option(
        "--network",
        help="Network folder made by `citymesh demo --workdir DIR`.",
        show_default=False,
    ),
]
JobIdArgument = Annotated[str, typer.Argument(show_default=False)]
FormatOption = Annotated[
    OutputFormat, typer.Option("--format", help="Output as text or json.")
]


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _load_spec(path: Path) -> Any:
    from citymesh.federation import JobSpec

    return JobSpec.from_toml(path)


@app.command()
def resolve(
    spec_path: SpecArgument,
    network: NetworkOption,
    out: Annotated[
        Path | None,
        typer.Option(help="Write the resolved spec here instead of printing it."),
    ] = None,
) -> None:
    """Resolve the [match] section of the job spec SPEC_PATH (TOML) to one catalog
    id per city.

    The resolved spec names its datasets, so each city's operator approves exactly
    what will run (`citymesh job approve RESOLVED --home NODE_HOME`).
    """
    from citymesh.job_files import atomic_write_bytes
    from citymesh.job_run import resolve_datasets, resolved_spec_text
    from citymesh.network import Network

    spec = resolve_datasets(Network.open(network), _load_spec(spec_path))
    text = resolved_spec_text(spec_path.read_text(), spec)
    if out is None:
        typer.echo(text, nl=False)
        return
    atomic_write_bytes(out, text.encode())
    typer.echo(f"resolved spec written to {out}: {sorted(spec.datasets.items())!r}")


@app.command()
def validate(
    spec_path: SpecArgument,
    network: NetworkOption,
    output: FormatOption = OutputFormat.text,
) -> None:
    """Check the job spec SPEC_PATH (TOML) against the catalogs of its cities.

    Imports the module of a 'package.module:ClassName' model kind. Lists unknown
    datasets with the ids each catalog has, missing feature or target columns,
    column types that differ between cities, grades that forbid training and
    privacy budgets the job would exceed. Exits 1 when the job is invalid.
    """
    from citymesh.federation.spec import check_model_class
    from citymesh.job_run import require_valid, validate_network_job

    spec = _load_spec(spec_path)
    check_model_class(spec.model.kind)
    validation = validate_network_job(spec, network)
    _list_catalog_ids(validation, network)
    if output == OutputFormat.json:
        _echo_json(validation.to_dict())
        if not validation.ok:
            raise typer.Exit(1)
        return
    require_valid(validation)
    typer.echo(f"job {validation.job_id!r} is valid:")
    for city, dataset in validation.datasets.items():
        typer.echo(
            f"  {city}: {dataset['id']} ({dataset['rows']:,} rows, "
            f"grade {dataset['grade']})"
        )


def _list_catalog_ids(validation: Any, network_dir: Path) -> None:
    """Add after each dataset-not-found problem the ids that the city's catalog has."""
    from citymesh.catalog.store import CatalogStore
    from citymesh.network import Network
    from citymesh.node.settings import load_settings

    network = Network.open(network_dir)
    for city, dataset in validation.datasets.items():
        if dataset["found"] or city not in network.cities:
            continue
        store = CatalogStore(load_settings(network.home(city)).database)
        try:
            ids = sorted(entry.id for entry in store.all())
        finally:
            store.close()
        listed = ", ".join(repr(i) for i in ids[:MAX_LISTED_IDS]) or "no datasets"
        if len(ids) > MAX_LISTED_IDS:
            listed += f" and {len(ids) - MAX_LISTED_IDS} more"
        missing = f"dataset {dataset['id']!r} of city {city!r} not found"
        if missing in validation.problems:
            position = validation.problems.index(missing) + 1
            validation.problems.insert(
                position, f"the catalog of {city!r} has {listed}"
            )


@app.command()
def approve(
    spec_path: SpecArgument,
    home: Annotated[
        Path,
        typer.Option(help="Home folder of this city's node.", show_default=False),
    ],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Approve without asking.")
    ] = False,
    refuse: Annotated[
        bool, typer.Option("--refuse", help="Record a refusal instead.")
    ] = False,
    operator: Annotated[
        str, typer.Option(help="Name of the operator who decides, for the record.")
    ] = "operator",
    reason: Annotated[str, typer.Option(help="Why, recorded with the decision.")] = "",
    output: FormatOption = OutputFormat.text,
) -> None:
    """Approve or refuse the job spec SPEC_PATH (TOML) at this city's node.

    Shows the spec, this node's dataset that the job names and the digest of
    the code that will run, then prompts for confirmation unless --yes or
    --refuse is given. The node runs the job only after an approval of this exact spec
    and code. Either decision is appended to the node's usage log.
    """
    from citymesh.job_approval import decide_job, review_job

    spec = _load_spec(spec_path)
    review = review_job(home, spec)
    if output == OutputFormat.text:
        _show_review(review)
    if not refuse and not yes:
        typer.confirm(f"Approve job {spec.id!r} at {review.city}?", abort=True)
    outcome = decide_job(
        home, spec, approve=not refuse, operator=operator, reason=reason
    )
    if output == OutputFormat.json:
        _echo_json(outcome)
        return
    verb = "refused" if refuse else "approved"
    typer.echo(
        f"{verb} job {spec.id!r} at {review.city}; usage event {outcome['seq']} "
        "records the decision"
    )


def _show_review(review: Any) -> None:
    spec = review.spec
    dataset = review.dataset
    typer.echo(f"job {spec.id!r} ({spec.name}) for {spec.consumer or 'no consumer'}")
    typer.echo(f"  purpose:  {spec.purpose}")
    typer.echo(
        f"  model:    {spec.model.kind}, {spec.rounds} rounds, "
        f"{spec.model.local_epochs} local epoch(s)"
    )
    features = ", ".join(spec.features.categorical + spec.features.numeric)
    typer.echo(f"  features: {features}")
    typer.echo(f"  target:   {spec.target.column} > {spec.target.threshold}")
    typer.echo(f"  privacy:  {spec.privacy.mode}")
    typer.echo(f"  budget:   {spec.budget:,} credits")
    typer.echo(
        f"dataset at {review.city}: {dataset['id']} ({dataset['rows']:,} rows, "
        f"grade {dataset['grade']}, code {dataset['code']})"
    )
    typer.echo(f"spec sha256: {review.spec_sha256}")
    typer.echo(f"code sha256: {review.code_sha256}")
    if review.approved_before:
        typer.echo("this node approved the job before; a new decision replaces it")
    for problem in review.problems:
        typer.echo(f"problem: {problem}")


@app.command()
def run(
    spec_path: SpecArgument,
    network: NetworkOption,
    mode: Annotated[
        RunMode,
        typer.Option(
            help="inprocess: all ClientApps in this process; deployment: a Flower "
            "SuperLink and one SuperNode per city as subprocesses."
        ),
    ] = RunMode.inprocess,
    contributions: Annotated[
        ContributionMethod,
        typer.Option(
            help="Contribution scores: size, loo, shapley (both retrain), gtg "
            "(GTG-Shapley from the rounds' updates) or loo+gtg."
        ),
    ] = ContributionMethod.gtg,
    epoch: Annotated[
        int | None,
        typer.Option(help="Settlement epoch. Default: days since 1970-01-01 UTC."),
    ] = None,
    output: FormatOption = OutputFormat.text,
) -> None:
    """Run the job spec SPEC_PATH (TOML) on the network: train, anchor usage and
    settle credits.

    Restarts the network's chain and city nodes, checks the job against their
    catalogs and approvals, and writes everything to DIR/jobs/<job_id>/.
    """
    from citymesh.job_run import run_network_job

    summary = run_network_job(
        spec_path,
        network,
        mode=mode.value,
        contributions=contributions.value,
        epoch=epoch,
    )
    if output == OutputFormat.json:
        _echo_json(summary)
        return
    _show_result(summary)


@app.command()
def status(
    job_id: JobIdArgument,
    network: NetworkOption,
    output: FormatOption = OutputFormat.text,
) -> None:
    """Show the state of job JOB_ID: queued, running, succeeded or failed."""
    from citymesh.job_files import JobFolder

    current = JobFolder.find(network, job_id).status()
    if output == OutputFormat.json:
        _echo_json(current)
        return
    line = f"job {job_id!r}: {current['state']}"
    if current.get("round") is not None:
        line += f", round {current['round']}/{current.get('rounds', '?')}"
    if current.get("auc") is not None:
        line += f", AUC {current['auc']:.4f}"
    typer.echo(line)
    if current.get("error"):
        typer.echo(f"error: {current['error']}")


@app.command()
def logs(
    job_id: JobIdArgument,
    network: NetworkOption,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep printing new lines until the job ends."
        ),
    ] = False,
) -> None:
    """Print the log of job JOB_ID."""
    from citymesh.job_files import FINAL_STATES, JobFolder

    folder = JobFolder.find(network, job_id)
    position = 0
    while True:
        # The state is read before the log, so lines written just before the
        # job ended are still printed once.
        finished = folder.status().get("state") in FINAL_STATES
        if folder.log_path.is_file():
            with folder.log_path.open("rb") as handle:
                handle.seek(position)
                chunk = handle.read()
            position += len(chunk)
            if chunk:
                typer.echo(chunk.decode("utf-8", errors="replace"), nl=False)
        if not follow or finished:
            return
        time.sleep(FOLLOW_POLL_S)


@app.command()
def result(
    job_id: JobIdArgument,
    network: NetworkOption,
    output: FormatOption = OutputFormat.text,
) -> None:
    """Show the metrics, privacy spent, contributions and model files of the
    finished job JOB_ID."""
    from citymesh.job_files import JobFolder

    folder = JobFolder.find(network, job_id)
    state = folder.status()
    if state["state"] != "succeeded":
        detail = f": {state['error']}" if state.get("error") else ""
        raise InvalidInput(
            f"job {job_id!r} has state {state['state']!r}{detail}; a result "
            f"exists only after it succeeds (see `citymesh job status {job_id}`)"
        )
    summary = folder.read_json("result.json")
    if output == OutputFormat.json:
        _echo_json(summary)
        return
    _show_result(summary)
    typer.echo(f"files in {folder.path}")


def _show_result(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    typer.echo(
        f"job {summary['job_id']!r}: AUC {summary['final_auc']:.4f}, accuracy "
        f"{summary['final_accuracy']:.4f} after {summary['rounds']} rounds "
        f"({summary['seconds']:.1f} s)"
    )
    privacy = summary["privacy"]
    if privacy["epsilon"] is None:
        typer.echo(f"privacy: mode {privacy['mode']}, no differential privacy spent")
    else:
        typer.echo(
            f"privacy: epsilon {privacy['epsilon']:.3f} at delta "
            f"{privacy['delta']:g} per dataset"
        )
    table = Table(title=f"contributions ({summary['contribution_method']})")
    for column in ("city", "rows", "size share", "leave-one-out", "Shapley"):
        table.add_column(column, justify="left" if column == "city" else "right")
    for city, scores in sorted(summary["contributions"].items()):
        table.add_row(
            city,
            f"{scores['rows']:,}",
            f"{scores['size_share']:.3f}",
            _number(scores["loo"]),
            _number(scores["shapley"]),
        )
    Console().print(table)
    model = summary["model"]
    typer.echo(
        f"model: {model['state_dict']} (sha256 {model['sha256'][:16]}...), "
        f"{model['format']} export {model['export']}"
    )
    settlement = summary.get("settlement") or {}
    if "tx" in settlement:
        amounts = ", ".join(f"{c} {a:,}" for c, a in settlement["amounts"].items())
        typer.echo(
            f"settled {settlement['total']:,} credits by {settlement['gain']} in "
            f"epoch {settlement['epoch']}: {amounts} (tx {settlement['tx']})"
        )
    elif settlement:
        typer.echo(f"settlement skipped: {settlement.get('skipped')}")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"
