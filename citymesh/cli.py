"""The ``citymesh`` command line: one typer app that mounts each component."""

from __future__ import annotations

import logging
import sys

import click
import typer
from rich.console import Console
from rich.markup import escape

from citymesh import __version__
from citymesh.errors import CitymeshError

app = typer.Typer(
    name="citymesh",
    help="Cross-city data exchange: catalogs, federated jobs, an audited ledger.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"citymesh {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # Per-request and per-round chatter of the libraries drowns the progress lines.
        for name in ("httpx", "flwr", "uvicorn.access", "web3"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _mount() -> None:
    from citymesh.commands import audit, catalog, demo, exchange, job, ledger, node, sim

    app.add_typer(
        ledger.app, name="ledger", help="Run the embedded chain and deploy contracts."
    )
    app.add_typer(node.app, name="node", help="Create and run a city node.")
    app.add_typer(catalog.app, name="catalog", help="Search and inspect city catalogs.")
    app.add_typer(exchange.app, name="exchange", help="Approve and request extracts.")
    app.add_typer(job.app, name="job", help="Validate and run federated training jobs.")
    app.add_typer(
        audit.app, name="audit", help="Verify the usage ledger as a regulator."
    )
    app.add_typer(
        sim.app, name="sim", help="Simulate the city hub and district edge nodes."
    )
    app.command("demo")(demo.demo)


_mount()


def main() -> None:
    """Run the CLI; a CitymeshError exits 1 with one line and no traceback."""
    try:
        # Without standalone mode click returns the code of typer.Exit instead of
        # exiting, so it is passed on here.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except CitymeshError as error:
        # The message is plain text: brackets in it, such as a TOML "[datasets]",
        # must not be read as rich markup, and a long line must stay one line.
        err_console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
        sys.exit(1)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
