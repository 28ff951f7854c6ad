"""``citymesh demo``: the whole network on real data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    rows: Annotated[
        int | None,
        typer.Option(
            help="Random sample of N flights for a quick run, at least 30; "
            "default all 336,776.",
            show_default=False,
        ),
    ] = None,
    rounds: Annotated[int, typer.Option(help="Federated training rounds.")] = 5,
    model: Annotated[
        str,
        typer.Option(
            help="Model kind: logreg, mlp or package.module:ClassName of a "
            "torch.nn.Module subclass."
        ),
    ] = "logreg",
    budget: Annotated[
        int, typer.Option(help="Credit units the job pays out.")
    ] = 1_000_000,
    seed: Annotated[
        int, typer.Option(help="Seed of the sample and the train/test split.")
    ] = 7,
    contributions: Annotated[
        str | None,
        typer.Option(
            help="Contribution scores: size, loo, gtg, loo+gtg or shapley; default "
            "loo+gtg in process, gtg in deployment. none is rejected because the "
            "demo pays credits by contribution.",
            show_default=False,
        ),
    ] = None,
    federation: Annotated[
        str,
        typer.Option(
            help="inprocess: Flower apps in this process; deployment: a SuperLink "
            "and one SuperNode process per city."
        ),
    ] = "inprocess",
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Empty folder for state and logs; default runs/demo-<time>.",
            show_default=False,
        ),
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write the summary as JSON here.")
    ] = None,
) -> None:
    """Run a chain, three city nodes, a federated job, settlement and audit."""
    from citymesh.demo import DemoOptions, run_demo

    result = run_demo(
        DemoOptions(
            rows=rows,
            rounds=rounds,
            model=model,
            budget=budget,
            seed=seed,
            workdir=workdir,
            report=report,
            contributions=contributions,
            federation=federation,
        )
    )
    if not result["audit"]["ok"]:
        raise typer.Exit(1)
