"""The layering rules, checked on the source: only loragen/registry/ touches sessions and ORM rows."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = ROOT / "loragen" / "registry"
# Plain values that may leave the registry package; every other name in models.py is an ORM class.
PLAIN_MODEL_NAMES = {"Origin"}
# The scale benchmark bulk-inserts 100k synthetic rows straight through the models (N `ingest` calls would take
# hours); it reads nothing back through them.
ALLOWED = {"bench/bench_registry_scale.py"}


def _sources_outside_registry():
    for folder in ("loragen", "bench", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if REGISTRY not in path.parents and str(path.relative_to(ROOT)) not in ALLOWED:
                yield path, ast.parse(path.read_text(), filename=str(path))


def test_no_session_or_orm_row_outside_the_registry():
    offences = []
    for path, tree in _sources_outside_registry():
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "session", "resolve_version"):
                offences.append(f"{where}:{node.lineno} calls .{node.func.attr}()")
            if isinstance(node, ast.ImportFrom) and node.module == "loragen.registry.models":
                orm = sorted({alias.name for alias in node.names} - PLAIN_MODEL_NAMES)
                if orm:
                    offences.append(f"{where}:{node.lineno} imports ORM classes {orm}")
    assert offences == []


def test_the_store_is_persistence_only():
    """No model loading, no reports, no generator file names in the store."""
    tree = ast.parse((REGISTRY / "store.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(module.startswith(("loragen.generator", "loragen.evaluation", "loragen.workflows"))
                   for module in imported if module)
    names = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert not names & {"load_base", "comparison", "list_tasks"}
    assert "load_model" not in (REGISTRY / "store.py").read_text()


def test_the_read_sides_copy_of_the_origins_matches_the_model():
    # views.py keeps its own copy so that `list` and `show` start without importing SQLAlchemy.
    from loragen.registry.models import Origin
    from loragen.registry.views import ORIGINS

    assert ORIGINS == tuple(origin.value for origin in Origin)


# The workflows' rooms, each importing only the rooms before it (so the package has no cycle, and a reader can
# take them in this order).
WORKFLOW_ROOMS = ("bases", "evaluate", "finetune", "training", "generation", "refreshing")


def test_each_workflow_room_imports_only_the_rooms_before_it():
    folder = ROOT / "loragen" / "workflows"
    assert {path.stem for path in folder.glob("*.py")} == {"__init__", *WORKFLOW_ROOMS}
    for index, room in enumerate(WORKFLOW_ROOMS):
        tree = ast.parse((folder / f"{room}.py").read_text())
        imported = {node.module.removeprefix("loragen.workflows.") for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("loragen.workflows")}
        assert imported <= set(WORKFLOW_ROOMS[:index]), (room, sorted(imported - set(WORKFLOW_ROOMS[:index])))


def test_the_workflows_export_every_rooms_public_names_and_import_without_torch():
    """`from loragen.workflows import X` for any public X of a room (the CLI, bench/ and scripts/ rely on it), and
    importing the package (every CLI command does) loads no torch until a workflow runs."""
    import subprocess
    import sys

    probe = ("import importlib, sys\nimport loragen.workflows as w\n"
             "assert 'torch' not in sys.modules, 'torch'\n"
             f"for room in {WORKFLOW_ROOMS!r}:\n"
             "    module = importlib.import_module('loragen.workflows.' + room)\n"
             "    for name, value in vars(module).items():\n"
             "        if not name.startswith('_') and getattr(value, '__module__', None) == module.__name__:\n"
             "            assert getattr(w, name) is value and name in w.__all__, name\n"
             "for name in ('join_process_group', 'distributed_rank', 'ranks_weight_digests'):\n"
             "    assert getattr(w, name).__module__ == 'loragen.generator.training', name\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_registry_modules_import_each_other_without_a_cycle():
    """store (writes) and views (reads) share refs.py; neither imports the other, even for type hints only."""
    modules = {path.stem: ast.parse(path.read_text()) for path in REGISTRY.glob("*.py")}
    imports = {name: {node.module.rsplit(".", 1)[-1] for node in ast.walk(tree)
                      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("loragen.registry.")}
               | {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                  and node.module == "loragen.registry" for alias in node.names}
               for name, tree in modules.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(step == goal or (step not in seen and reaches(step, goal, seen | {step}))
                   for step in imports.get(start, ()))

    assert "store" not in imports["views"]
    assert [name for name in sorted(imports) if reaches(name, name, {name})] == []


def test_no_import_cycle_in_the_package():
    """No module of loragen/ reaches itself through imports, lazy and type-checking ones included: a cycle hidden
    in a function body still means two rooms that cannot be read, or changed, one before the other."""
    modules = {}
    for path in (ROOT / "loragen").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    imports = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("loragen"):
                found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        imports[name] = {other for other in found if other in modules and other != name}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for other in imports[module]:
                if other == start:
                    return path + [start]
                if other not in seen:
                    seen.add(other)
                    stack.append((other, path + [other]))
        return None

    cycles = [cycle for cycle in map(cycle_from, sorted(modules)) if cycle]
    assert cycles == []
