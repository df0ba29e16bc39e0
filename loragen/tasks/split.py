"""The committed seen/held-out split of the bundled tasks (loragen/tasks/split.json).

The split was drawn once by scripts/make_split.py before any training. It
names the held-out families (never seen at all), the held-out tasks (those
families' tasks plus held-out siblings inside seen families), one held-out
description per seen task (kept in meta.json but never shown to the
generator), and a fixed sample of seen tasks to evaluate. Nothing of a held-out
task may reach the generator: use `training_descriptions` and `is_held_out`
when choosing what to train on.

No torch here; reading the split is as cheap as listing the suite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loragen.errors import LoragenError
from loragen.tasks.suite import Task, list_tasks

SPLIT_PATH = Path(__file__).resolve().parent / "split.json"
MIN_HELD_OUT_FAMILIES = 2
MIN_SEEN_EVAL_SAMPLE = 24


@dataclass(frozen=True)
class TaskSplit:
    seed: int
    rationale: str
    held_out_families: tuple[str, ...]
    held_out_tasks: tuple[str, ...]
    held_out_descriptions: dict[str, str]  # seen task -> its description the generator never sees
    seen_eval_sample: tuple[str, ...]
    seen_tasks: tuple[str, ...]  # every bundled task that is not held out, sorted

    def is_held_out(self, task: Task | str) -> bool:
        return _name(task) in self.held_out_tasks

    def held_out_description(self, task: Task | str) -> str:
        """The seen task's description kept from the generator (for evaluating unseen wording)."""
        name = _name(task)
        if name not in self.held_out_descriptions:
            raise LoragenError(f"task {name!r} has no held-out description: it is held out or unknown")
        return self.held_out_descriptions[name]

    def training_descriptions(self, task: Task) -> list[str]:
        """The descriptions the generator may train on: a seen task's own, less its held-out one."""
        if self.is_held_out(task):
            raise LoragenError(f"task {task.name!r} is held out: none of its descriptions may reach the generator")
        kept = self.held_out_description(task)
        return [d for d in task.descriptions if d != kept]


def _name(task: Task | str) -> str:
    return task if isinstance(task, str) else task.name


def _string_list(raw: dict[str, Any], key: str, path: Path) -> tuple[str, ...]:
    value = raw.get(key)
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise LoragenError(f"{path}: {key} must be a list of task or family names")
    if len(set(value)) != len(value):
        raise LoragenError(f"{path}: {key} names something twice")
    return tuple(value)


def load_split(path: str | Path | None = None, tasks: list[Task] | None = None) -> TaskSplit:
    """Read and check a split file (default: the committed one) against the tasks (default: the bundled suite).

    Raises LoragenError, in one line, when the file is missing or malformed, names
    a task or family that does not exist, leaves part of a held-out family seen,
    puts a held-out task in the seen sample, or lacks a valid held-out
    description for a seen task.
    """
    path = Path(path) if path is not None else SPLIT_PATH
    tasks = list_tasks() if tasks is None else tasks
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoragenError(f"split file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise LoragenError(f"split file {path} is not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict):
        raise LoragenError(f"split file {path} must hold a JSON object")
    if not isinstance(raw.get("seed"), int) or not isinstance(raw.get("rationale"), str):
        raise LoragenError(f"{path}: seed (an integer) and rationale (a string) are required")

    by_name = {t.name: t for t in tasks}
    families: dict[str, set[str]] = {}
    for t in tasks:
        families.setdefault(t.family, set()).add(t.name)
    held_out_families = _string_list(raw, "held_out_families", path)
    held_out = _string_list(raw, "held_out_tasks", path)
    sample = _string_list(raw, "seen_eval_sample", path)
    descriptions = raw.get("held_out_descriptions")
    if not isinstance(descriptions, dict) or not all(isinstance(v, str) for v in descriptions.values()):
        raise LoragenError(f"{path}: held_out_descriptions must map task names to descriptions")

    for name in (*held_out, *sample, *descriptions):
        if name not in by_name:
            raise LoragenError(f"{path} names task {name!r}, which is not in the suite")
    if len(held_out_families) < MIN_HELD_OUT_FAMILIES:
        raise LoragenError(f"{path}: at least {MIN_HELD_OUT_FAMILIES} whole families must be held out")
    for family in held_out_families:
        if family not in families:
            raise LoragenError(f"{path} holds out family {family!r}, which no task belongs to")
        seen_part = sorted(families[family] - set(held_out))
        if seen_part:
            raise LoragenError(f"{path}: family {family!r} is held out but {seen_part[0]!r} is not")
    overlap = sorted(set(sample) & set(held_out))
    if overlap:
        raise LoragenError(f"{path}: held-out task {overlap[0]!r} is in the seen evaluation sample")
    if len(sample) < MIN_SEEN_EVAL_SAMPLE:
        raise LoragenError(f"{path}: the seen evaluation sample needs at least {MIN_SEEN_EVAL_SAMPLE} tasks")

    seen = sorted(set(by_name) - set(held_out))
    for name in seen:
        if name not in descriptions:
            raise LoragenError(f"{path}: seen task {name!r} has no held-out description")
        if descriptions[name] not in by_name[name].descriptions:
            raise LoragenError(f"{path}: the held-out description of {name!r} is not one of its descriptions")
        if len(by_name[name].descriptions) < 2:
            raise LoragenError(f"{path}: seen task {name!r} would keep no description to train on")
    leaked = sorted(set(descriptions) & set(held_out))
    if leaked:
        raise LoragenError(f"{path}: held-out task {leaked[0]!r} must not have a held-out description entry")

    return TaskSplit(
        seed=raw["seed"],
        rationale=raw["rationale"],
        held_out_families=held_out_families,
        held_out_tasks=tuple(sorted(held_out)),
        held_out_descriptions=dict(descriptions),
        seen_eval_sample=sample,
        seen_tasks=tuple(seen),
    )
