"""The task suite: find tasks, read their records, write runnable lm-eval YAMLs.

No torch, transformers or lm_eval here: listing tasks must stay cheap for the
CLI. PyYAML (a dependency of lm-eval and datasets) is imported lazily.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from loragen.errors import LoragenError, NotFound, quoted
from loragen.inputs import check_name, check_text

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = ("train", "validation", "test")
KINDS = ("exact_match", "multiple_choice")


@dataclass(frozen=True)
class Task:
    """One task folder: metadata plus access to its records and lm-eval YAML."""

    name: str
    kind: str  # one of KINDS
    descriptions: list[str]
    source: str
    dir: Path
    license: str = ""
    counts: dict[str, int] = field(default_factory=dict, compare=False)
    eval_name: str = ""  # the `task:` name lm-eval knows it by, e.g. loragen_antonyms
    family: str = ""  # tasks of one family differ in one parameter (a language, an inflection, a table)
    data_limited: bool = False  # the source gave fewer than 200 test records

    def records(self, split: str = "train") -> list[dict[str, Any]]:
        """All records of one split, in file order."""
        if split not in SPLITS:
            raise LoragenError(f"unknown split {split!r} for task {self.name!r}; use one of {', '.join(SPLITS)}")
        path = self.dir / f"{split}.jsonl"
        if not path.is_file():
            raise LoragenError(f"task {self.name!r}: data file {path} does not exist")
        out = []
        with open(path, encoding="utf-8") as f:
            try:
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise LoragenError(f"task {self.name!r}: {path}:{line_no} is not JSON ({e.msg})") from None
            except UnicodeDecodeError:
                raise LoragenError(f"task {self.name!r}: {path} is not valid UTF-8") from None
        return out

    def examples(self, split: str = "train") -> list[tuple[str, str]]:
        """(prompt, answer) pairs; the training text is prompt + answer."""
        return [prompt_and_answer(r) for r in self.records(split)]

    def yaml_path(self) -> Path:
        """The task's own task.yaml (relative data_files; see materialize_yaml)."""
        return self.dir / "task.yaml"

    def declares_split(self, split: str) -> bool:
        """Whether task.yaml gives lm-eval a data file for `split` (as it must, to score on it)."""
        data_files = (_read_yaml(self.yaml_path()).get("dataset_kwargs") or {}).get("data_files")
        return isinstance(data_files, dict) and split in data_files


def prompt_and_answer(record: dict[str, Any]) -> tuple[str, str]:
    """Split a record into its prompt and the answer text that follows it."""
    if "target" in record:
        return record["prompt"], record["target"]
    return record["prompt"], record["choices"][record["label"]]


def _read_yaml(path: Path) -> dict[str, Any]:
    """A task YAML whose `task:` name is checked: lm-eval's name for the task becomes a file name (materialize_yaml)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except FileNotFoundError:
        raise LoragenError(f"task YAML {path} does not exist") from None
    except UnicodeDecodeError:
        raise LoragenError(f"task YAML {path} is not valid UTF-8") from None
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LoragenError(f"task YAML {path} cannot be read: {first}") from None
    if not isinstance(config, dict) or not isinstance(config.get("task"), str):
        raise LoragenError(f"task YAML {path} has no `task:` name")
    check_name("lm-eval task", config["task"], where=str(path))
    return config


def load_task_dir(path: str | Path) -> Task:
    """Load one task folder (bundled or the user's) laid out like loragen/tasks/data/<name>/."""
    d = Path(path).expanduser().resolve()
    if not d.is_dir():
        raise LoragenError(f"task folder {d} does not exist")
    meta_path = d / "meta.json"
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise LoragenError(f"task folder {d} has no meta.json") from None
    except UnicodeDecodeError:
        raise LoragenError(f"{meta_path} is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise LoragenError(f"{meta_path} is not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(meta, dict):
        raise LoragenError(f"{meta_path} must hold a JSON object")
    kind = meta.get("kind")
    if kind not in KINDS:
        raise LoragenError(f"{meta_path}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    descriptions = meta.get("descriptions")
    if (
        not isinstance(descriptions, list)
        or not descriptions
        or not all(isinstance(x, str) and x.strip() for x in descriptions)
    ):
        raise LoragenError(f"{meta_path}: descriptions must be a non-empty list of strings")
    for text in descriptions:
        check_text(f"{meta_path}: description", text)
    # The name becomes run folders and registry rows: checked here, before anything is built from it.
    name = meta.get("name") or d.name
    check_name("task", name, where=str(meta_path if meta.get("name") else d))
    config = _read_yaml(d / "task.yaml")
    return Task(
        name=name,
        kind=kind,
        descriptions=list(descriptions),
        source=str(meta.get("source", "")),
        dir=d,
        license=str(meta.get("license", "")),
        counts=dict(meta.get("counts") or {}),
        eval_name=config["task"],
        family=str(meta.get("family", "")),
        data_limited=bool(meta.get("data_limited", False)),
    )


def list_tasks() -> list[Task]:
    """The bundled tasks, sorted by name."""
    if not DATA_DIR.is_dir():
        return []
    return [load_task_dir(d) for d in sorted(DATA_DIR.iterdir()) if (d / "meta.json").is_file()]


def is_folder(path: str | Path) -> bool:
    """Whether `path` is a folder; False (not an error) for a name the file system refuses, e.g. too long."""
    try:
        return Path(path).expanduser().is_dir()
    except OSError:
        return False


def get_task(name: str) -> Task:
    """A bundled task by name (`antonyms`) or lm-eval name (`loragen_antonyms`)."""
    # The folder is named after the task: look there first rather than reading all ~120 folders.
    for candidate in (name, name.removeprefix("loragen_")):
        folder = DATA_DIR / candidate
        if candidate and "/" not in candidate and is_folder(folder) and (folder / "meta.json").is_file():
            task = load_task_dir(folder)
            if name in (task.name, task.eval_name):
                return task
    tasks = list_tasks()
    for task in tasks:
        if name in (task.name, task.eval_name):
            return task
    # ~120 names would make a screenful of one error line: name the likely ones, and where the rest are listed.
    import difflib

    close = difflib.get_close_matches(name, [t.name for t in tasks], n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise NotFound(f"unknown task {quoted(name)}; {hint}{len(tasks)} bundled tasks: `loragen list suite` lists them")


def check_known_tasks(names: Iterable[str], registered: Iterable[str], what: str = "task") -> None:
    """Refuse a name that is neither a task in the registry (`registered`) nor a bundled task, in one line.

    For options that select tasks by name and would otherwise match nothing without a word (train --held-out).
    A bundled task's lm-eval name (loragen_x) is refused too: adapters are registered under the task's name."""
    registered = set(registered)
    for name in names:
        if name in registered:
            continue
        try:
            task = get_task(name)
        except NotFound:
            import difflib

            bundled = {task.name for task in list_tasks()}
            close = difflib.get_close_matches(name, sorted(registered | bundled), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise NotFound(f"unknown {what} {quoted(name)}: neither a task in the registry (`loragen list tasks`) "
                           f"nor a bundled task (`loragen list suite`){hint}") from None
        if task.name != name:
            raise LoragenError(f"{what} {quoted(name)} is lm-eval's name for bundled task {task.name}: use {task.name}")


def _absolute_data_files(data_files: Any, base: Path, yaml_path: Path) -> Any:
    """data_files (str, list, or split -> str|list) with each path made absolute and checked."""
    if isinstance(data_files, dict):
        return {split: _absolute_data_files(v, base, yaml_path) for split, v in data_files.items()}
    if isinstance(data_files, list):
        return [_absolute_data_files(v, base, yaml_path) for v in data_files]
    if not isinstance(data_files, str):
        raise LoragenError(f"{yaml_path}: data_files entries must be paths, not {data_files!r}")
    path = (base / data_files).resolve()
    if not path.is_file():
        raise LoragenError(f"{yaml_path}: data file {data_files!r} not found (looked for {path})")
    return str(path)


def materialize_yaml(tasks: list[Task] | Task, out_dir: str | Path | None = None) -> Path:
    """Write runnable copies of the tasks' YAMLs, data_files made absolute.

    Returns the folder to pass as `lm_eval.tasks.TaskManager(include_path=...)`;
    lm-eval reads every YAML below it, so give a folder of its own (None makes
    a fresh temporary one). Raises LoragenError if a data file is missing.
    """
    import yaml

    if isinstance(tasks, Task):
        tasks = [tasks]
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="loragen-tasks-"))
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for task in tasks:
        source = task.yaml_path()
        config = _read_yaml(source)
        if config["task"] in written:
            raise LoragenError(f"{source} and {written[config['task']]} both define lm-eval task {config['task']!r}")
        written[config["task"]] = source
        kwargs = config.get("dataset_kwargs") or {}
        if "data_files" not in kwargs:
            raise LoragenError(f"{source}: dataset_kwargs.data_files is missing")
        kwargs = dict(kwargs, data_files=_absolute_data_files(kwargs["data_files"], source.parent, source))
        config["dataset_kwargs"] = kwargs
        with open(out / f"{config['task']}.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)
    return out


def find_task(spec: str | Task) -> Task:
    """A bundled task by name, or a task folder laid out like the bundled ones (a Task is returned as it is)."""
    if isinstance(spec, Task):
        return spec
    if "/" in spec or is_folder(spec):
        return load_task_dir(spec)
    return get_task(spec)


EXPORT_NOTE = ("# Written by `loragen export-task`. lm-eval reads data_files from the working directory, not from\n"
               "# beside this file, so they are absolute: export again after moving this folder.\n")


def export_task(task: Task, out_dir: str | Path) -> Path:
    """A folder lm-eval's own CLI runs the task from, from any working directory:
    `lm_eval --include_path OUT --tasks <task.eval_name> ...`.

    It holds the task's YAML (`<eval_name>.yaml`), its meta.json (source, license, descriptions) and its data
    files under data/; the YAML's data_files are absolute paths to those copies. `out_dir` must not exist or be
    empty; it is written whole or not at all. Returns the folder.
    """
    import shutil

    import yaml

    from loragen.atomic import staged_folder

    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LoragenError(f"{out}: already exists and is not an empty folder")
    source = task.yaml_path()
    config = _read_yaml(source)
    kwargs = config.get("dataset_kwargs") or {}
    if "data_files" not in kwargs:
        raise LoragenError(f"{source}: dataset_kwargs.data_files is missing")
    sources = _absolute_data_files(kwargs["data_files"], source.parent, source)
    copies: dict[str, str] = {}  # file name in `out` -> the file it copies

    def exported(path: Any) -> Any:
        """data_files with each path replaced by its copy's final absolute path."""
        if isinstance(path, dict):
            return {split: exported(v) for split, v in path.items()}
        if isinstance(path, list):
            return [exported(v) for v in path]
        name = Path(path).name
        if copies.setdefault(name, path) != path:
            raise LoragenError(f"{source}: data files {copies[name]} and {path} have the same name {name!r}")
        return str(out / "data" / name)

    config["dataset_kwargs"] = dict(kwargs, data_files=exported(sources))
    with staged_folder(out) as staging:
        (staging / "data").mkdir()
        for name, path in copies.items():
            shutil.copyfile(path, staging / "data" / name)
        if (task.dir / "meta.json").is_file():
            shutil.copyfile(task.dir / "meta.json", staging / "meta.json")
        (staging / f"{config['task']}.yaml").write_text(
            EXPORT_NOTE + yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out
