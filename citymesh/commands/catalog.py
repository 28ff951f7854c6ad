"""``citymesh catalog``: ingest, show and export a local catalog, and search nodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from citymesh.errors import InvalidInput, NotFound

app = typer.Typer(no_args_is_help=True)

# NOTE: typer 0.20.1 with click 8.5 drops typer.Argument(help=...) from --help
# (click's Argument.__init__ now resets the help that TyperArgument set), so the
# command docstrings describe the arguments.


# The grades of the shared code list (catalog/data); a test checks this list.
GRADES = (
    "general",
    "general.1",
    "general.2",
    "general.3",
    "general.4",
    "important",
    "core",
)
# The dataset tiers of citymesh.catalog.codes; a test checks this list too.
TIERS = ("raw", "thematic", "topic")


@app.command()
def search(
    node: Annotated[list[str], typer.Option(help="Base URL of a node; repeatable.")],
    keys: Annotated[
        Path, typer.Option(help="keys/ folder of the identity that signs.")
    ],
    code: Annotated[
        str | None, typer.Option(help="Classification code prefix, e.g. 04.5.")
    ] = None,
    keyword: Annotated[
        str | None, typer.Option(help="Word in title, description or keywords.")
    ] = None,
    city: Annotated[str | None, typer.Option(help="City id.")] = None,
    grade: Annotated[
        str | None,
        typer.Option(help=f"Sensitivity grade: {', '.join(GRADES)}."),
    ] = None,
    tier: Annotated[
        str | None, typer.Option(help=f"Dataset tier: {', '.join(TIERS)}.")
    ] = None,
    limit: Annotated[
        int, typer.Option(help="Results per node, 1 to 1000.", min=1, max=1000)
    ] = 50,
    offset: Annotated[
        int,
        typer.Option(help="Results to skip on each node, for the next page.", min=0),
    ] = 0,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Search one or more nodes' catalogs.

    Each node returns its matches in id order, a page of --limit from
    --offset; stderr shows how many each node has in all. A node that cannot
    be reached is reported on stderr, the other nodes' results are still
    printed, and the command then exits 1.
    """
    from citymesh.commands.remote import NodeUnreachable, check_node_url
    from citymesh.node.identity import NodeIdentity

    _check_format(output)
    _check_grade(grade)
    if tier is not None and tier not in TIERS:
        raise InvalidInput(f"--tier {tier!r} is unknown; use one of {', '.join(TIERS)}")
    for url in node:
        check_node_url(url)
    signer = NodeIdentity.load(keys)
    items = []
    unreachable: list[str] = []
    for url in node:
        try:
            page = _search_node(
                url, signer, code, keyword, city, grade, tier, limit, offset
            )
        except NodeUnreachable as error:
            if len(node) == 1:
                raise
            typer.echo(f"error: {error}", err=True)
            unreachable.append(url)
            continue
        items.extend(page["items"])
        returned = len(page["items"])
        total = page.get("total", returned)
        more = "" if page.get("total_exact", True) else " or more"
        typer.echo(
            f"{url}: {returned} of {total}{more} matches from offset {offset}", err=True
        )
    _print_items(items, output)
    if len(unreachable) == len(node):
        raise NodeUnreachable(
            f"none of the {len(node)} nodes could be searched "
            f"({', '.join(unreachable)})"
        )
    if unreachable:
        raise NodeUnreachable(
            f"{len(unreachable)} of {len(node)} nodes could not be searched "
            f"({', '.join(unreachable)}); the results above are from the others"
        )


def _search_node(
    url: str,
    signer: Any,
    code: str | None,
    keyword: str | None,
    city: str | None,
    grade: str | None,
    tier: str | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    from citymesh.commands.remote import reaching_node
    from citymesh.node.client import NodeClient

    with reaching_node(url), NodeClient(url, signer=signer) as client:
        return client.search(
            code=code,
            keyword=keyword,
            city=city,
            grade=grade,
            tier=tier,
            limit=limit,
            offset=offset,
        )


def _print_items(items: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        typer.echo(json.dumps(items, indent=2))
        return
    table = Table()
    for column in ("id", "city", "code", "grade", "rows", "title"):
        table.add_column(column)
    for item in items:
        table.add_row(
            *(
                str(item.get(c, ""))
                for c in ("id", "city", "code", "grade", "rows", "title")
            )
        )
    Console().print(table)


def _check_grade(grade: str | None) -> None:
    if grade is not None and grade not in GRADES:
        raise InvalidInput(
            f"--grade {grade!r} is unknown; use one of {', '.join(GRADES)}"
        )


def _check_format(output: str) -> None:
    if output not in ("table", "json"):
        raise InvalidInput(f"--format must be 'table' or 'json', got {output!r}")


def _open_node(home: Path):  # noqa: ANN202
    """Open the node at ``home`` for local commands, without its HTTP service."""
    from citymesh.node.context import NodeContext
    from citymesh.node.settings import load_settings
    from citymesh.node.signing import reject_all_resolver

    _require_home(home)
    # Local commands verify no signed requests, so no registry is needed.
    return NodeContext(load_settings(home), resolve_signer=reject_all_resolver)


def _print_suggestions(suggestions: list, console: Console) -> None:
    table = Table(title="suggested codes")
    for column in ("code", "name", "score", "matched words"):
        table.add_column(column)
    for item in suggestions:
        table.add_row(
            item.code, item.name, f"{item.score:.1f}", ", ".join(item.matched)
        )
    console.print(table)


@app.command()
def ingest(
    source: Annotated[Path, typer.Argument()],
    home: Annotated[Path, typer.Option(help="The node home made by `node init`.")],
    name: Annotated[
        str, typer.Option(help="Dataset name, unique in this node's catalog.")
    ],
    code: Annotated[
        str | None,
        typer.Option(
            help="Shared (e.g. 04.5.4) or mapped local classification code; "
            "omit it to list suggestions."
        ),
    ] = None,
    grade: Annotated[
        str, typer.Option(help=f"Sensitivity grade: {', '.join(GRADES)}.")
    ] = "general",
    tier: Annotated[str, typer.Option(help="raw, thematic or topic.")] = "raw",
    title: Annotated[str, typer.Option(help="Title; default: the name.")] = "",
    description: Annotated[str, typer.Option(help="Free-text description.")] = "",
    keyword: Annotated[
        list[str] | None, typer.Option(help="Search keyword; repeatable.")
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option(
            help="Arrow type of every column as JSON, e.g. "
            '\'{"station": "string", "count": "float64"}\'; default: inferred.'
        ),
    ] = None,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Ingest SOURCE, a CSV, Parquet or JSON lines file, into the node's catalog
    and log an ingest event.

    Without --code, prints the suggested codes for the file's title,
    description and columns and exits 1.
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from citymesh.catalog.readers import detect_format, open_source
    from citymesh.catalog.suggest import suggest_codes

    _check_format(output)
    schema_types = _parse_schema(schema)
    if code is None:
        if not source.is_file():
            raise NotFound(f"source file {str(source)!r} does not exist")
        columns = open_source(source, detect_format(source, None), None).schema.names
        suggestions = suggest_codes(title or name, description, columns)
        console = Console(stderr=True)
        if suggestions:
            _print_suggestions(suggestions, console)
            hint = f"e.g. --code {suggestions[0].code}"
        else:
            hint = "no code matched the title, description or columns"
        raise InvalidInput(
            f"--code is missing: pick a shared classification code ({hint})"
        )
    context = _open_node(home)
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("ingesting {task.description}"),
            TextColumn("{task.completed:,.0f} rows written"),
            console=Console(stderr=True),
            transient=True,
        ) as progress:
            task = progress.add_task(source.name, total=None)
            entry = context.ingest(
                source,
                name=name,
                code=code,
                grade=grade,
                tier=tier,
                title=title,
                description=description,
                keywords=keyword or [],
                schema=schema_types,
                progress=lambda rows: progress.update(task, completed=rows),
            )
    finally:
        context.close()
    if output == "json":
        typer.echo(json.dumps(entry.public(), indent=2))
        return
    typer.echo(
        f"ingested {entry.id}: {entry.rows} rows, {entry.bytes} bytes, code "
        f"{entry.code}, grade {entry.grade}"
    )


def _parse_schema(text: str | None) -> dict[str, str] | None:
    if text is None:
        return None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(
            f"--schema must be a JSON object of column types, got {text!r}: {error}"
        ) from None
    if not isinstance(schema, dict):
        raise InvalidInput(
            f'--schema must be a JSON object such as \'{{"a": "int64"}}\', got {text!r}'
        )
    return schema


@app.command()
def show(
    dataset_id: Annotated[str, typer.Argument()],
    home: Annotated[Path, typer.Option(help="The node home made by `node init`.")],
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Show the catalog entry DATASET_ID (e.g. ewr:flights) and its stored quality
    report."""
    from citymesh.catalog.store import CatalogStore
    from citymesh.node.settings import load_settings

    _check_format(output)
    _require_home(home)
    store = CatalogStore(load_settings(home).database)
    try:
        entry = store.get(dataset_id)
    finally:
        store.close()
    if output == "json":
        typer.echo(json.dumps(entry.public(), indent=2))
        return
    console = Console()
    summary = Table(title=entry.id, show_header=False)
    for field in ("title", "code", "local_code", "grade", "tier", "rows", "bytes"):
        summary.add_row(field, str(getattr(entry, field)))
    summary.add_row("keywords", ", ".join(entry.keywords))
    summary.add_row("completeness", _percent(entry.quality.get("completeness")))
    summary.add_row("parents", ", ".join(entry.parents))
    console.print(summary)
    quality = Table(title="quality per column")
    headings = ("column", "type", "completeness", "uniqueness", "validity")
    for heading in (*headings, "outliers", "personal data"):
        quality.add_column(heading)
    pii = {finding["column"]: finding["category"] for finding in entry.pii}
    for column, stats in entry.quality.get("columns", {}).items():
        quality.add_row(
            column,
            stats.get("type", ""),
            _percent(stats.get("completeness")),
            _percent(stats.get("uniqueness")),
            _percent(stats.get("validity")),
            str(stats.get("outliers", "")),
            pii.get(column, ""),
        )
    console.print(quality)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _require_home(home: Path) -> None:
    from citymesh.node.settings import CONFIG_FILE

    if not (home / CONFIG_FILE).is_file():
        raise NotFound(
            f"{str(home / CONFIG_FILE)!r} not found: give the node home made by "
            "`citymesh node init` as --home"
        )


@app.command("lineage")
def show_lineage(
    dataset_id: Annotated[str, typer.Argument()],
    home: Annotated[Path, typer.Option(help="The node home made by `node init`.")],
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Show the parents and children of dataset DATASET_ID (e.g. ewr:flights) with
    their transforms."""
    from citymesh.catalog.lineage import lineage, render_lineage
    from citymesh.catalog.store import CatalogStore
    from citymesh.node.settings import load_settings

    _check_format(output)
    _require_home(home)
    store = CatalogStore(load_settings(home).database)
    try:
        graph = lineage(store, dataset_id)
    finally:
        store.close()
    if output == "json":
        typer.echo(json.dumps(graph.to_json(), indent=2))
        return
    typer.echo(render_lineage(graph))


@app.command("map")
def check_map(
    mapping: Annotated[Path, typer.Argument()],
) -> None:
    """Validate MAPPING, a local code mapping file (JSON).

    Lists every problem and exits 1 on any.
    """
    from citymesh.catalog.mapping import InvalidMapping, load_mapping

    if not mapping.is_file():
        raise NotFound(f"mapping file {str(mapping)!r} not found")
    try:
        result = load_mapping(mapping)
    except InvalidMapping as error:
        for problem in error.problems:
            typer.echo(f"invalid: {problem}", err=True)
        raise InvalidInput(
            f"{str(mapping)!r} has {len(error.problems)} problem(s): fix them and "
            "run `citymesh catalog map` again"
        ) from None
    typer.echo(
        f"{str(mapping)!r} is valid: {len(result.resolved)} local codes map onto "
        "shared codes"
    )
    for local, shared in sorted(result.resolved.items()):
        typer.echo(f"  {local} -> {shared}")


@app.command()
def dcat(
    home: Annotated[Path, typer.Option(help="The node home made by `node init`.")],
    out: Annotated[
        Path | None, typer.Option(help="Write the JSON-LD here; default: stdout.")
    ] = None,
) -> None:
    """Export the node's catalog as DCAT-AP 3 JSON-LD after checking it."""
    from citymesh.catalog.dcat import check_dcat, export_dcat
    from citymesh.catalog.store import CatalogStore
    from citymesh.node.settings import load_settings

    _require_home(home)
    settings = load_settings(home)
    store = CatalogStore(settings.database)
    try:
        document = export_dcat(
            store.all(),
            city=settings.city,
            base_url=settings.endpoint or f"http://{settings.host}:{settings.port}",
        )
    finally:
        store.close()
    problems = check_dcat(document)
    if problems:
        raise InvalidInput(
            "the DCAT-AP export lacks mandatory properties: " + "; ".join(problems)
        )
    text = json.dumps(document, indent=2, ensure_ascii=False)
    if out is None:
        typer.echo(text)
        return
    if out.is_dir() or not out.parent.is_dir():
        raise InvalidInput(
            f"--out {str(out)!r} is a folder or its folder does not exist: give a "
            "file name in an existing folder"
        )
    temporary = out.with_name(f".{out.name}.tmp")
    temporary.write_text(text + "\n", encoding="utf-8")
    temporary.replace(out)
    typer.echo(f"wrote {len(document['dcat:dataset'])} datasets to {out}", err=True)


@app.command()
def suggest(
    title: Annotated[str, typer.Option(help="Dataset title.")] = "",
    description: Annotated[str, typer.Option(help="Dataset description.")] = "",
    column: Annotated[
        list[str] | None, typer.Option(help="Column name; repeatable.")
    ] = None,
    top: Annotated[int, typer.Option(help="Number of suggestions.")] = 5,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Suggest shared classification codes from a title, description and columns."""
    from citymesh.catalog.suggest import suggest_codes

    _check_format(output)
    if not (title or description or column):
        raise InvalidInput("nothing to match: give --title, --description or --column")
    suggestions = suggest_codes(title, description, column or [], top=top)
    if output == "json":
        typer.echo(json.dumps([item.as_dict() for item in suggestions], indent=2))
        return
    if not suggestions:
        typer.echo("no code matched: pick one from the shared code list")
        return
    _print_suggestions(suggestions, Console())
