"""`loragen base …`: register base models and their evolved versions."""

from __future__ import annotations

from typing import Optional

import typer

from loragen.cli.context import state
from loragen.cli.render import Column, human_count, render, say

app = typer.Typer(help="Register base models and their evolved versions.", invoke_without_command=True)

BASE_COLUMNS = [
    Column("NAME", lambda r: r["name"]),
    Column("ARCH", lambda r: r["architecture"]),
    Column("PARAMS", lambda r: human_count(r["parameters"]), "right"),
    Column("PARENT", lambda r: r["parent"]),
    Column("ADAPTERS", lambda r: r["adapters"], "right"),
    Column("DIGEST", lambda r: r["weights_digest"][:12]),
    Column("NOTE", lambda r: r["note"]),
]


@app.callback()
def default(ctx: typer.Context,
            as_json: bool = typer.Option(False, "--json", help="JSON output."),
            quiet: bool = typer.Option(False, "-q", "--quiet", help="Names only.")) -> None:
    """With no subcommand: list the bases."""
    if ctx.invoked_subcommand is None:
        list_bases(as_json=as_json, quiet=quiet)


@app.command("add")
def add(name: str = typer.Argument(..., help="Name for the base, e.g. smollm2-135m."),
        source: str = typer.Option(..., "--from", help="Hugging Face model folder, a .gguf file, or bundled:smollm2."),
        note: str = typer.Option("", "--note", help="Free text kept with the version."),
        as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
    """Register a new base model (its version 1)."""
    result = state.registry.add_base(name, source, note, reading=_say_reading)
    _report(result.id, "registered", as_json)


@app.command("update")
def update(name: str = typer.Argument(..., help="An existing base."),
           source: str = typer.Option(..., "--from", help="Folder or .gguf of the evolved weights."),
           note: str = typer.Option("", "--note", help='How it evolved, e.g. "continued pretraining on GCIDE".'),
           parent: Optional[str] = typer.Option(
               None, "--parent", help="NAME@vN it evolved from, when not the newest version (a branch)."),
           as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
    """Register an evolved version of a base: same architecture, new weights, numbered after the newest."""
    result = state.registry.update_base(name, source, note, reading=_say_reading, parent=parent)
    _report(result.id, "registered", as_json)


@app.command("list")
def list_bases(as_json: bool = typer.Option(False, "--json", help="JSON output."),
               quiet: bool = typer.Option(False, "-q", "--quiet", help="Names only.")) -> None:
    """List base models and their versions."""
    rows = state.views.bases()
    render(rows, as_json=as_json, quiet=quiet, columns=BASE_COLUMNS, key="name",
           summary=f"{len(rows)} base version(s)")


def _say_reading(source: str) -> None:
    say(f"reading {source} …")


def _report(label: str, verb: str, as_json: bool) -> None:
    if as_json:
        render({"name": label, "status": verb}, as_json=True)
    else:
        typer.echo(f"{verb} {label}")


def show_base(ref: str, as_json: bool) -> bool:
    """Show NAME (its newest version) or NAME@vN; False when no such base."""
    from loragen.cli.render import render_fields

    rows = [r for r in state.views.bases() if ref in (r["name"], r["base"])]
    if not rows:
        return False
    render_fields(rows[-1], as_json=as_json)
    return True
