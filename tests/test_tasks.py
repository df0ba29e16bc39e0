"""The bundled task suite: data invariants, the suite API, and lm-eval running offline."""

from __future__ import annotations

import filecmp
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loragen.errors import LoragenError, NotFound
from loragen.tasks import (
    KINDS,
    SPLITS,
    get_task,
    list_tasks,
    load_task_dir,
    materialize_yaml,
    prompt_and_answer,
)
from loragen.tasks.suite import DATA_DIR

TASKS = list_tasks()


def test_suite_has_at_least_eight_tasks_of_both_kinds():
    assert len(TASKS) >= 8
    assert {t.kind for t in TASKS} == set(KINDS)
    assert len({t.name for t in TASKS}) == len(TASKS)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_task_metadata(task):
    assert len(task.descriptions) >= 5
    assert len(set(task.descriptions)) == len(task.descriptions)
    assert task.source and task.license
    assert task.eval_name == f"loragen_{task.name}"
    assert task.yaml_path().is_file()
    for split in SPLITS:
        assert task.counts[split] == len(task.records(split)) > 0


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_records_follow_the_answer_convention(task):
    for split in SPLITS:
        for record in task.records(split):
            prompt, answer = prompt_and_answer(record)
            assert prompt and not prompt[-1].isspace()
            answers = [record["target"]] if task.kind == "exact_match" else record["choices"]
            if task.kind == "multiple_choice":
                assert 0 <= record["label"] < len(record["choices"]) and len(record["choices"]) >= 2
                assert len(set(record["choices"])) == len(record["choices"])
            for a in answers:
                assert a.startswith(" ") and not a.startswith("  ") and a == a.rstrip() and len(a) > 1
            assert answer in answers


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_splits_are_disjoint(task):
    prompts = {split: {r["prompt"] for r in task.records(split)} for split in SPLITS}
    assert not prompts["test"] & prompts["train"]
    assert not prompts["test"] & prompts["validation"]
    assert not prompts["validation"] & prompts["train"]
    for split in SPLITS:  # no duplicate prompts within a split either
        assert len(prompts[split]) == len(task.records(split))


def test_bundled_data_stays_small():
    size = sum(p.stat().st_size for p in DATA_DIR.rglob("*") if p.is_file())
    assert size < 3_000_000


def test_get_task_by_either_name_and_unknown_names():
    assert get_task("antonyms").name == "antonyms"
    assert get_task("loragen_antonyms").name == "antonyms"
    with pytest.raises(NotFound) as err:
        get_task("klingon")
    message = str(err.value)
    assert "\n" not in message and "klingon" in message and "antonyms" in message


def test_records_rejects_unknown_split():
    with pytest.raises(LoragenError, match="unknown split"):
        get_task("antonyms").records("dev")


def test_materialize_writes_absolute_existing_paths(tmp_path):
    import yaml

    include = materialize_yaml(TASKS, tmp_path / "inc")
    written = sorted(p.name for p in include.glob("*.yaml"))
    assert written == sorted(f"{t.eval_name}.yaml" for t in TASKS)
    config = yaml.safe_load((include / "loragen_antonyms.yaml").read_text())
    for split, path in config["dataset_kwargs"]["data_files"].items():
        assert path.startswith("/") and path.endswith(f"{split}.jsonl")
        assert (DATA_DIR / "antonyms" / f"{split}.jsonl").samefile(path)


def _copy_task(tmp_path, name="element_symbol"):
    user_dir = tmp_path / "my_task"
    shutil.copytree(DATA_DIR / name, user_dir)
    return user_dir


def test_user_task_dir_loads_and_materializes(tmp_path):
    user_dir = _copy_task(tmp_path)
    meta = json.loads((user_dir / "meta.json").read_text())
    meta["name"] = "my_elements"
    (user_dir / "meta.json").write_text(json.dumps(meta))
    task = load_task_dir(user_dir)
    assert task.name == "my_elements" and task.dir == user_dir.resolve()
    include = materialize_yaml([task], tmp_path / "inc")
    assert (include / "loragen_element_symbol.yaml").is_file()


def test_missing_data_file_is_one_clear_line(tmp_path):
    user_dir = _copy_task(tmp_path)
    (user_dir / "validation.jsonl").unlink()
    task = load_task_dir(user_dir)
    with pytest.raises(LoragenError) as err:
        materialize_yaml([task], tmp_path / "inc")
    message = str(err.value)
    assert "\n" not in message and "validation.jsonl" in message and "not found" in message


def test_broken_task_dirs_raise_loragen_errors(tmp_path):
    with pytest.raises(LoragenError, match="does not exist"):
        load_task_dir(tmp_path / "nowhere")
    user_dir = _copy_task(tmp_path)
    (user_dir / "meta.json").write_text(json.dumps({"kind": "essay", "descriptions": ["x"]}))
    with pytest.raises(LoragenError, match="kind must be one of"):
        load_task_dir(user_dir)
    (user_dir / "meta.json").unlink()
    with pytest.raises(LoragenError, match="no meta.json"):
        load_task_dir(user_dir)


@pytest.mark.slow
def test_lm_eval_runs_offline_on_a_tiny_model(tiny_base, tmp_path):
    """One exact-match and one multiple-choice task through lm-eval's own pipeline."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    chosen = [get_task("antonyms"), get_task("country_region")]
    include = materialize_yaml(chosen, tmp_path / "inc")
    results = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, max_length=256),
        tasks=[t.eval_name for t in chosen],
        task_manager=TaskManager(include_path=str(include)),
        limit=5,
        log_samples=False,
    )
    scores = results["results"]
    exact = scores["loragen_antonyms"]["exact_match,strip"]
    acc = scores["loragen_country_region"]["acc,none"]
    for value in (exact, acc):
        assert not math.isnan(value) and 0.0 <= value <= 1.0


def _builder_inputs_installed() -> bool:
    import importlib.util

    needed = [Path("/usr/share/wordnet/data.adj"), Path("/usr/share/dictd/freedict-eng-deu.index")]
    return all(p.exists() for p in needed) and all(
        importlib.util.find_spec(m) for m in ("periodictable", "countryinfo")
    )


@pytest.mark.slow
@pytest.mark.skipif(not _builder_inputs_installed(), reason="build_tasks.py's Debian/PyPI data packages not installed")
def test_build_script_reproduces_the_bundled_data(tmp_path):
    script = Path(__file__).resolve().parent.parent / "scripts" / "build_tasks.py"
    out = tmp_path / "data"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, capture_output=True)
    built = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    bundled = sorted(p.relative_to(DATA_DIR) for p in DATA_DIR.rglob("*") if p.is_file())
    assert built == bundled
    _match, mismatch, errors = filecmp.cmpfiles(out, DATA_DIR, [str(p) for p in built], shallow=False)
    assert not mismatch and not errors
