"""Adapter commands: ingest, list, show, rm, export; the store's upkeep: gc, doctor."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from loragen.cli.context import state
from loragen.cli.render import Column, human_count, human_size, render, render_fields, render_json_rows, say

ADAPTER_COLUMNS = [
    Column("ID", lambda r: r["id"]),
    Column("TASK", lambda r: r["task"]),
    Column("BASE", lambda r: r["base"]),
    Column("ORIGIN", lambda r: r["origin"]),
    Column("RANK", lambda r: r["rank"], "right"),
    Column("PARAMS", lambda r: human_count(r["parameters"]), "right"),
    Column("CREATED", lambda r: r["created_at"][:19].replace("T", " ")),
]
TASK_COLUMNS = [
    Column("TASK", lambda r: r["name"]),
    Column("ADAPTERS", lambda r: r["adapters"], "right"),
    Column("DESCRIPTIONS", lambda r: len(r["descriptions"]), "right"),
    Column("FIRST DESCRIPTION", lambda r: r["descriptions"][0] if r["descriptions"] else None),
]
JSON = typer.Option(False, "--json", help="JSON output.")
QUIET = typer.Option(False, "-q", "--quiet", help="Ids only.")


def ingest(path: Path = typer.Argument(..., help="A PEFT adapter folder (adapter_config.json + adapter_model.safetensors)."),
           base: str = typer.Option(..., "--base", help="Base it was trained on: NAME or NAME@vN (default newest)."),
           task: str = typer.Option(..., "--task", help="Task name, e.g. sentiment."),
           description: list[str] = typer.Option([], "--description", "-d", help="Task description (repeatable)."),
           as_json: bool = JSON) -> None:
    """Validate a trained PEFT LoRA against its base and register it."""
    result = state.registry.ingest(path, base, task, description)
    if as_json:
        render({"id": result.id, "created": result.created}, as_json=True)
    elif result.created:
        typer.echo(f"ingested {result.id} ({task} on {base})")
    else:
        typer.echo(f"already registered as {result.id}")


SUITE_COLUMNS = [
    Column("TASK", lambda r: r["name"]),
    Column("FAMILY", lambda r: r["family"]),
    Column("KIND", lambda r: r["kind"]),
    Column("TRAIN", lambda r: r["counts"].get("train"), "right"),
    Column("VAL", lambda r: r["counts"].get("validation"), "right"),
    Column("TEST", lambda r: r["counts"].get("test"), "right"),
    Column("SOURCE", lambda r: r["source"].split(";")[0][:60]),
]


TABLE_ROWS = 50  # a terminal's worth; --all, --json and -q give every row


def list_cmd(what: str = typer.Argument("adapters", help="adapters, bases, tasks, suite or generators."),
             task: Optional[str] = typer.Option(None, "--task", help="Only this task's adapters."),
             base: Optional[str] = typer.Option(None, "--base", help="Only adapters of this base version."),
             origin: Optional[str] = typer.Option(None, "--origin", help="trained, ingested, generated or carried_over."),
             show_all: bool = typer.Option(False, "--all", help="Every adapter in the table, not only the newest."),
             limit: int = typer.Option(TABLE_ROWS, "--limit",
                                       help="Adapters in the table (the newest); --json and -q list them all."),
             as_json: bool = JSON, quiet: bool = QUIET) -> None:
    """List adapters (default), bases, tasks in the registry, the bundled task suite, or generators."""
    if what in ("bases", "base"):
        from loragen.cli.base import list_bases

        list_bases(as_json=as_json, quiet=quiet)
    elif what in ("tasks", "task"):
        rows = state.views.tasks()
        render(rows, as_json=as_json, quiet=quiet, columns=TASK_COLUMNS, key="name", summary=f"{len(rows)} task(s)")
    elif what in ("adapters", "adapter"):
        from loragen.registry.views import ORIGINS

        if origin and origin not in ORIGINS:
            raise typer.BadParameter(f"--origin must be one of {', '.join(ORIGINS)}")
        if limit < 1:  # checked here, not with min=1: a bounded int costs a pydantic import (see loragen/cli)
            raise typer.BadParameter("--limit must be at least 1")
        _list_adapters(task, base, origin, None if show_all else limit, as_json, quiet)
    elif what == "suite":
        from loragen.tasks.suite import list_tasks

        rows = [{"name": t.name, "family": t.family, "kind": t.kind, "counts": t.counts, "source": t.source,
                 "descriptions": t.descriptions, "folder": str(t.dir)} for t in list_tasks()]
        render(rows, as_json=as_json, quiet=quiet, columns=SUITE_COLUMNS, key="name",
               summary=f"{len(rows)} bundled task(s); use them with --task NAME")
    elif what in ("generators", "generator"):
        from loragen.cli.generator import generators

        generators(as_json=as_json, quiet=quiet)
    else:
        raise typer.BadParameter(f"'{what}': expected adapters, bases, tasks, suite or generators")


def _list_adapters(task: Optional[str], base: Optional[str], origin: Optional[str], table_rows: Optional[int],
                   as_json: bool, quiet: bool) -> None:
    """--json and -q stream every adapter; the table shows the newest `table_rows` and says how many more there are."""
    views = state.views
    if as_json:
        render_json_rows(views.adapters(task=task, base=base, origin=origin))
        return
    if quiet:
        sys.stdout.writelines(f"{uid}\n" for uid in views.adapter_ids(task=task, base=base, origin=origin))
        return
    total, parameters = views.adapter_totals(task=task, base=base, origin=origin)
    rows = list(views.adapters(task=task, base=base, origin=origin, newest=table_rows))
    notes = ([f"… {total - len(rows):,} older adapter(s) not shown: --all lists every one, --json or -q for scripts"]
             if total > len(rows) else [])
    render(rows, as_json=False, columns=ADAPTER_COLUMNS, notes=notes,
           summary=f"{total:,} adapter(s), {human_count(parameters)} parameters")


def show(ref: str = typer.Argument(..., help="Adapter id (a prefix is enough), base NAME[@vN], task name or "
                                            "generator id."),
         as_json: bool = JSON) -> None:
    """Show one adapter, base version, task or generator in detail."""
    from loragen.cli.base import show_base
    from loragen.errors import NotFound, quoted

    try:
        render_fields(state.views.adapter(ref), as_json=as_json)
        return
    except NotFound as adapter_error:
        if show_base(ref, as_json):
            return
        tasks = state.views.tasks(name=ref)
        if tasks:
            render_fields(tasks[0], as_json=as_json)
            return
        if _show_generator(ref, as_json):
            return
        raise NotFound(f"no adapter, base, task or generator matches {quoted(ref)} ({adapter_error})") from None


def _show_generator(ref: str, as_json: bool) -> bool:
    """Show the generator an id prefix names; False when none does."""
    from loragen.errors import NotFound
    from loragen.registry.refs import MIN_ID_PREFIX

    if len(ref.strip()) < MIN_ID_PREFIX:
        return False
    try:
        generator = state.registry.get_generator(ref)
    except NotFound:
        return False
    if not as_json:  # a library may hold hundreds of adapters: the table gives their count, --json the list
        size = len(generator["library"])
        generator = dict(generator, library=f"{size} adapter(s)" if size else "none (a raw-weights generator)")
    render_fields(generator, as_json=as_json)
    return True


def rm(refs: list[str] = typer.Argument(..., help="Adapter ids."),
       force: bool = typer.Option(False, "--force", help="Remove adapters that generators' libraries use, "
                                  "breaking those generators (they fail in one line until it is registered again)."),
       as_json: bool = JSON) -> None:
    """Unregister adapters (files are freed by `loragen gc`); all or none."""
    removed = state.registry.remove_all(refs, force=force)
    if as_json:
        render({"removed": [r.id for r in removed],
                "broken_generators": {r.id: r.broken_generators for r in removed if r.broken_generators}},
               as_json=True)
        return
    for r in removed:
        breaks = (f" (breaks generator(s) {', '.join(r.broken_generators)}: their library used it)"
                  if r.broken_generators else "")
        typer.echo(f"removed {r.id}{breaks}")


def export(ref: str = typer.Argument(..., help="Adapter id."),
           out_dir: Path = typer.Argument(..., help="Folder to write (must not exist or be empty)."),
           as_json: bool = JSON) -> None:
    """Write an adapter as a PEFT folder; peft.AutoPeftModelForCausalLM.from_pretrained(DIR) loads it with its base."""
    path = state.registry.export(ref, out_dir)
    if as_json:
        render({"id": ref, "path": str(path)}, as_json=True)
    else:
        typer.echo(f"exported {ref} to {path}")


def gc(grace: Optional[float] = typer.Option(
           None, "--grace", min=0, metavar="SECONDS",
           help="Keep unreferenced blobs written less than this long ago (default: registry.gc_grace_seconds "
                "in loragen.toml, 3600). 0 removes every unreferenced blob; safe beside running commands either way."),
       as_json: bool = JSON) -> None:
    """Delete stored files that nothing in the registry references."""
    result = state.registry.gc(grace_seconds=grace)
    if as_json:
        render(result, as_json=True)
    else:
        kept = result["blobs_kept_in_grace"]
        say(f"removed {result['blobs_removed']} blob(s), freed {human_size(result['bytes_freed'])}, "
            f"cleaned {result['temp_files_removed']} temporary file(s)"
            + (f"; kept {kept} unreferenced blob(s) younger than the grace period (--grace 0 removes them)"
               if kept else ""))


def doctor(as_json: bool = JSON) -> None:
    """Re-hash every stored file the registry references; exit 1 if any is missing or damaged, or if a generator's
    library lost an adapter or its exact weights."""
    from loragen.cli.render import StepProgress

    with StepProgress("checking blobs", 1) as bar:
        report = state.registry.verify_store(progress=bar.update)
    if as_json:
        render(report, as_json=True)
    else:
        for problem in report["problems"]:
            users = ", ".join(f"{r['kind']} {r['id']} {r['file']}" for r in problem["referenced_by"])
            typer.echo(f"{problem['problem']:8} {problem['sha256'][:12]}  {users}")
        for entry in report["broken_libraries"]:
            typer.echo(f"{entry['problem']:8} {entry['weights_sha256'][:12]}  {entry['message']}")
        broken = len({entry["generator"] for entry in report["broken_libraries"]})
        verdict = "; ".join(
            ([f"{len(report['problems'])} missing or damaged: the store is damaged"] if report["problems"] else [])
            + ([f"{broken} generator(s) with a broken library"] if broken else [])) or "all present and whole"
        say(f"checked {report['blobs_checked']} referenced blob(s), {human_size(report['bytes_checked'])}: {verdict}"
            + (f"; {report['unreferenced_blobs']} unreferenced blob(s) (gc removes them)"
               if report["unreferenced_blobs"] else ""))
    if not report["ok"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.command("list")(list_cmd)
    app.command("show")(show)
    app.command("rm")(rm)
    app.command("export")(export)
    app.command("gc")(gc)
    app.command("doctor")(doctor)
