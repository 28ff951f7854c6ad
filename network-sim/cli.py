"""Command line: ``run`` one architecture or ``compare`` all three on a scenario.

Mounted by the citymesh CLI as ``citymesh sim``. Tables and JSON go to stdout;
the progress bar and errors go to stderr, so ``--format json`` can be piped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from citymesh.errors import InvalidInput

from .compare import compare
from .engine import Simulation, check_hours, resolve_architecture
from .policies import ARCHITECTURE_NAMES
from .report import print_comparison, print_run
from .scenario import load_scenario, shipped_scenarios
from .specs import Scenario

app = typer.Typer(
    help="Simulate a city's compute hub and district edge nodes (SimPy).",
    no_args_is_help=True,
)


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


ScenarioArgument = Annotated[
    str,
    typer.Argument(
        help="Scenario TOML file, or the name of a shipped scenario "
        f"({', '.join(shipped_scenarios())}).",
        show_default=False,
    ),
]
SeedOption = Annotated[
    int | None,
    typer.Option(
        help="Random seed for arrivals and work sizes (default: the scenario's)."
    ),
]
HoursOption = Annotated[
    float | None,
    typer.Option(help="Simulated hours (default: the scenario's)."),
]
FormatOption = Annotated[
    OutputFormat, typer.Option("--format", help="Output as tables or as JSON.")
]
OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Folder for PNG plots (utilization.png, latency.png).",
        file_okay=False,
    ),
]


def _fail(error: Exception) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(1)


def _load(source: str) -> Scenario:
    try:
        return load_scenario(source)
    except InvalidInput as error:
        raise _fail(error) from None


@contextmanager
def _progress_bar() -> Iterator[Callable[[str, float, float], None]]:
    """Yield ``update(label, now_s, horizon_s)`` that drives a bar per label."""
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[simulated]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        tasks: dict[str, int] = {}

        def update(label: str, now: float, horizon: float) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=horizon, simulated="")
            simulated = f"{now / 3600:5.1f} / {horizon / 3600:g} h"
            progress.update(tasks[label], completed=now, simulated=simulated)

        yield update


@app.command()
def run(
    scenario: ScenarioArgument,
    architecture: Annotated[
        str,
        typer.Option(
            "--architecture",
            "-a",
            help=f"Architecture to run: {', '.join(ARCHITECTURE_NAMES)}.",
        ),
    ] = "hub_edge",
    seed: SeedOption = None,
    hours: HoursOption = None,
    output: FormatOption = OutputFormat.table,
    out: OutOption = None,
) -> None:
    """Run one architecture on a scenario and print a summary.

    SCENARIO is a TOML file or the name of a shipped scenario.
    """
    spec = _load(scenario)
    try:
        chosen = resolve_architecture(spec, architecture)
        simulation = Simulation(spec, chosen, seed=seed, hours=hours)
    except InvalidInput as error:
        raise _fail(error) from None
    with _progress_bar() as update:
        result = simulation.run(lambda now, horizon: update(chosen.name, now, horizon))

    if output is OutputFormat.json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        print_run(result)
    if out is not None:
        from .plots import write_plots

        for path in write_plots([result], out, spec.start_hour):
            typer.echo(f"wrote {path}", err=True)


@app.command("compare")
def compare_command(
    scenario: ScenarioArgument,
    seed: SeedOption = None,
    hours: HoursOption = None,
    output: FormatOption = OutputFormat.table,
    out: OutOption = None,
) -> None:
    """Run isolated departments, hub only and hub plus edge on the same workload.

    SCENARIO is a TOML file or the name of a shipped scenario. The claims table
    checks hub plus edge against isolated departments.
    """
    spec = _load(scenario)
    try:
        check_hours(hours)
        with _progress_bar() as update:
            comparison = compare(spec, seed=seed, hours=hours, on_progress=update)
    except InvalidInput as error:
        raise _fail(error) from None

    if output is OutputFormat.json:
        typer.echo(json.dumps(comparison.to_dict(), indent=2))
    else:
        print_comparison(comparison)
    if out is not None:
        from .plots import write_plots

        for path in write_plots(comparison.results, out, spec.start_hour):
            typer.echo(f"wrote {path}", err=True)


if __name__ == "__main__":
    app()
