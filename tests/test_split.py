"""The committed seen/held-out split: its promises, its checks, and that the script drew it."""

from __future__ import annotations

import collections
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from loragen.errors import LoragenError
from loragen.tasks.split import SPLIT_PATH, load_split
from loragen.tasks.suite import list_tasks

TASKS = list_tasks()
BY_NAME = {t.name: t for t in TASKS}
get_task = BY_NAME.__getitem__
SPLIT = load_split()


def _make_split_module():
    path = Path(__file__).resolve().parent.parent / "scripts" / "make_split.py"
    spec = importlib.util.spec_from_file_location("make_split", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_split"] = module
    spec.loader.exec_module(module)
    return module


def test_every_task_is_seen_or_held_out_and_about_a_fifth_is_held_out():
    names = {t.name for t in TASKS}
    assert set(SPLIT.held_out_tasks) | set(SPLIT.seen_tasks) == names
    assert not set(SPLIT.held_out_tasks) & set(SPLIT.seen_tasks)
    assert 0.15 <= len(SPLIT.held_out_tasks) / len(names) <= 0.25


def test_whole_families_are_held_out():
    families = collections.defaultdict(set)
    for t in TASKS:
        families[t.family].add(t.name)
    assert len(SPLIT.held_out_families) >= 2
    for family in SPLIT.held_out_families:
        assert families[family] <= set(SPLIT.held_out_tasks)
    # and held-out siblings inside seen families, along each axis the corpus varies on
    axis = _make_split_module().AXIS
    sibling_axes = {axis[get_task(n).family] for n in SPLIT.held_out_tasks if get_task(n).family not in SPLIT.held_out_families}
    assert {"language", "inflection", "table"} <= sibling_axes
    for name in SPLIT.held_out_tasks:
        family = get_task(name).family
        assert family in SPLIT.held_out_families or families[family] - set(SPLIT.held_out_tasks)


def test_seen_sample_is_seen_only_and_large_enough():
    assert len(SPLIT.seen_eval_sample) >= 24
    assert not set(SPLIT.seen_eval_sample) & set(SPLIT.held_out_tasks)
    assert set(SPLIT.seen_eval_sample) <= set(SPLIT.seen_tasks)


def test_each_seen_task_keeps_one_description_back():
    for name in SPLIT.seen_tasks:
        task = get_task(name)
        kept_back = SPLIT.held_out_description(task)
        training = SPLIT.training_descriptions(task)
        assert kept_back in task.descriptions and kept_back not in training
        assert len(training) == len(task.descriptions) - 1 >= 4
    assert set(SPLIT.held_out_descriptions) == set(SPLIT.seen_tasks)


def test_nothing_of_a_held_out_task_is_offered_for_training():
    held = get_task(SPLIT.held_out_tasks[0])
    assert SPLIT.is_held_out(held) and SPLIT.is_held_out(held.name)
    assert not SPLIT.is_held_out(SPLIT.seen_tasks[0])
    with pytest.raises(LoragenError, match="is held out"):
        SPLIT.training_descriptions(held)
    with pytest.raises(LoragenError, match="no held-out description"):
        SPLIT.held_out_description(held)


def test_inverse_pairs_are_held_out_together():
    for a, b in _make_split_module().INVERSES:
        assert SPLIT.is_held_out(a) == SPLIT.is_held_out(b), (a, b)


def test_the_committed_file_is_what_the_script_draws():
    assert _make_split_module().draw() == json.loads(SPLIT_PATH.read_text(encoding="utf-8"))


def _write(tmp_path, **changes) -> Path:
    raw = json.loads(SPLIT_PATH.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            del raw[key]
        else:
            raw[key] = value
    path = tmp_path / "split.json"
    path.write_text(json.dumps(raw))
    return path


def _bad(tmp_path, match, **changes):
    with pytest.raises(LoragenError, match=match) as err:
        load_split(_write(tmp_path, **changes), TASKS)
    assert "\n" not in str(err.value)


def test_bad_split_files_are_refused_in_one_line(tmp_path):
    raw = json.loads(SPLIT_PATH.read_text(encoding="utf-8"))
    seen, held = SPLIT.seen_tasks, list(SPLIT.held_out_tasks)
    family_task = next(n for n in held if get_task(n).family == SPLIT.held_out_families[0])
    sibling = next(n for n in held if get_task(n).family not in SPLIT.held_out_families)

    with pytest.raises(LoragenError, match="does not exist"):
        load_split(tmp_path / "nowhere.json", TASKS)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(LoragenError, match="is not JSON"):
        load_split(tmp_path / "broken.json", TASKS)
    _bad(tmp_path, "seed", seed=None)
    _bad(tmp_path, "not in the suite", held_out_tasks=held + ["klingon"])
    _bad(tmp_path, "not in the suite", seen_eval_sample=list(SPLIT.seen_eval_sample) + ["klingon"])
    _bad(tmp_path, "no task belongs to", held_out_families=list(SPLIT.held_out_families) + ["poetry"])
    _bad(tmp_path, "at least 2 whole families", held_out_families=[SPLIT.held_out_families[0]])
    _bad(tmp_path, f"but {family_task!r} is not",
         held_out_tasks=[n for n in held if n != family_task],
         held_out_descriptions=dict(raw["held_out_descriptions"], **{family_task: get_task(family_task).descriptions[0]}))
    _bad(tmp_path, "in the seen evaluation sample", seen_eval_sample=list(SPLIT.seen_eval_sample) + [sibling])
    _bad(tmp_path, "at least 24", seen_eval_sample=list(SPLIT.seen_eval_sample[:23]))
    _bad(tmp_path, "names something twice", held_out_tasks=held + held[:1])
    missing = dict(raw["held_out_descriptions"])
    del missing[seen[0]]
    _bad(tmp_path, "has no held-out description", held_out_descriptions=missing)
    _bad(tmp_path, "is not one of its descriptions",
         held_out_descriptions=dict(raw["held_out_descriptions"], **{seen[0]: "Do something else entirely."}))
    _bad(tmp_path, "must not have a held-out description",
         held_out_descriptions=dict(raw["held_out_descriptions"], **{sibling: get_task(sibling).descriptions[0]}))
