"""Inputs that escaped or lied (issue 19, D1, D2, D6, D7, D9, D10, D14): task folders, descriptions, task lists,
and a bundled task that lm-eval's own CLI could not run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from loragen.errors import LoragenError
from loragen.tasks.suite import DATA_DIR, get_task, load_task_dir, materialize_yaml
from tests.helpers import one_line_error, registry_with_adapters, run_cli

NOT_UTF8 = b"\xff".decode("utf-8", "surrogateescape")  # what Python makes of the argument $'\xff'


def _task_folder(tmp_path: Path, *, name: str | None = None, eval_name: str | None = None,
                 descriptions: list[str] | None = None, folder: str = "my_task") -> Path:
    """A copy of the bundled antonyms task as a user's task folder, with meta.json and task.yaml edited."""
    user_dir = tmp_path / folder
    shutil.copytree(DATA_DIR / "antonyms", user_dir)
    meta = json.loads((user_dir / "meta.json").read_text())
    meta["name"] = name
    if descriptions is not None:
        meta["descriptions"] = descriptions
    (user_dir / "meta.json").write_text(json.dumps(meta))
    if eval_name is not None:
        yaml_path = user_dir / "task.yaml"
        yaml_path.write_text(yaml_path.read_text().replace("task: loragen_antonyms", f"task: {eval_name}"))
    return user_dir


# ---------------------------------------------------------------- D1: a task folder's name is a path


def test_a_task_name_that_climbs_out_is_refused_before_finetune_builds_a_folder(capsys, registered, tmp_path,
                                                                                 isolated_home):
    # The run folder is <home>/runs/<name>__…: this name would put it in tmp_path/elsewhere, outside the home.
    folder = _task_folder(tmp_path, name="../../elsewhere/x")
    result = run_cli(capsys, "finetune", "--task", folder, "--base", "tiny", "--steps", "1")
    assert not (tmp_path / "elsewhere").exists() and not (isolated_home / "runs").exists()
    line = one_line_error(result)
    assert "invalid task name '../../elsewhere/x'" in line and "meta.json" in line


@pytest.mark.parametrize("name", ["../x", "a/b", "x y", "evil\x1b[2J", ".hidden", "x" * 201, NOT_UTF8, 5])
def test_load_task_dir_refuses_a_name_that_is_not_a_registry_name(tmp_path, name):
    with pytest.raises(LoragenError, match="task name"):
        load_task_dir(_task_folder(tmp_path, name=name))


def test_a_folder_name_that_is_not_a_registry_name_is_refused_without_a_name_in_meta_json(tmp_path):
    with pytest.raises(LoragenError, match="bad name: invalid task name 'bad name'"):
        load_task_dir(_task_folder(tmp_path, folder="bad name"))


def test_a_folder_without_a_name_in_meta_json_is_named_after_the_folder_when_that_is_a_valid_name(tmp_path):
    assert load_task_dir(_task_folder(tmp_path, folder="mine.v2")).name == "mine.v2"


# ---------------------------------------------------------------- D2: a task.yaml's `task:` is a path


def test_a_yaml_task_name_that_climbs_out_is_refused_by_eval_and_nothing_is_overwritten(capsys, registered,
                                                                                         tmp_path, monkeypatch):
    # eval writes its runnable YAMLs into <tempdir>/loragen-eval-XXX/: with the temporary folder two levels below
    # tmp_path, "../../../victim" would land on tmp_path/victim.yaml.
    temporary = tmp_path / "t" / "u"
    temporary.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    victim = tmp_path / "victim.yaml"
    victim.write_text("precious\n")
    folder = _task_folder(tmp_path, name="my_task", eval_name="../../../victim")
    result = run_cli(capsys, "eval", "--base", "tiny", "--tasks", folder, "--limit", "1")
    assert victim.read_text() == "precious\n"
    line = one_line_error(result)
    assert "invalid lm-eval task name '../../../victim'" in line and "task.yaml" in line


def test_materialize_yaml_never_writes_outside_its_folder(tmp_path):
    victim = tmp_path / "victim.yaml"
    victim.write_text("precious\n")
    task = get_task("antonyms")
    folder = _task_folder(tmp_path, name="my_task")
    # A Task whose YAML was changed after it was loaded: the YAML is read again, and checked again, when written.
    (folder / "task.yaml").write_text((folder / "task.yaml").read_text().replace(
        "task: loragen_antonyms", "task: ../../victim"))
    from dataclasses import replace

    with pytest.raises(LoragenError, match="invalid lm-eval task name"):
        materialize_yaml(replace(task, dir=folder), tmp_path / "a" / "b")
    assert victim.read_text() == "precious\n"


def test_generate_validate_on_refuses_the_same_yaml_name(capsys, tmp_path):
    folder = _task_folder(tmp_path, name="my_task", eval_name="../../../x")
    line = one_line_error(run_cli(capsys, "generate", "--task", "antonyms", "--base", "tiny", "--samples", "2",
                             "--validate-on", folder))
    assert "invalid lm-eval task name '../../../x'" in line


# ---------------------------------------------------------------- D6: text that is not UTF-8


def test_ingest_of_a_description_that_is_not_utf8_isone_line_error(capsys, registered, tiny_adapter):
    line = one_line_error(run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "t1", "-d", NOT_UTF8))
    assert line == r"loragen: error: description '\udcff' is not valid UTF-8"
    assert run_cli(capsys, "list", "--json").json() == []


def test_generate_of_a_task_that_is_not_utf8_is_refused_before_anything_is_loaded(capsys):
    line = one_line_error(run_cli(capsys, "generate", "--task", f"words {NOT_UTF8}", "--base", "tiny"))
    assert line == r"loragen: error: task 'words \udcff' is not valid UTF-8"


@pytest.mark.parametrize("note", [NOT_UTF8, "ring\x07"])
def test_a_base_note_that_is_not_plain_text_isone_line_error(capsys, tiny_base, note):
    line = one_line_error(run_cli(capsys, "base", "add", "tiny", "--from", tiny_base, "--note", note))
    assert line.startswith("loragen: error: note ")
    assert run_cli(capsys, "list", "bases", "--json").json() == []


def test_task_files_that_are_not_utf8_areone_line_error(tmp_path):
    folder = _task_folder(tmp_path, name="my_task")
    (folder / "meta.json").write_bytes(b'{"name": "\xff"}')
    with pytest.raises(LoragenError, match="meta.json is not valid UTF-8"):
        load_task_dir(folder)
    folder = _task_folder(tmp_path, name="my_task", folder="other")
    (folder / "task.yaml").write_bytes(b"task: \xff\n")
    with pytest.raises(LoragenError, match="task.yaml is not valid UTF-8"):
        load_task_dir(folder)
    folder = _task_folder(tmp_path, name="my_task", folder="third")
    (folder / "train.jsonl").write_bytes(b'{"prompt": "\xff", "target": " x"}\n')
    with pytest.raises(LoragenError, match="train.jsonl is not valid UTF-8"):
        load_task_dir(folder).records("train")


# ---------------------------------------------------------------- D7: control characters and long cells


def test_ingest_refuses_a_control_character_in_a_description(capsys, registered, tiny_adapter):
    line = one_line_error(run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "t1",
                             "-d", "evil\x1b[2J"))
    assert r"holds the control character '\x1b'" in line
    assert run_cli(capsys, "list", "tasks", "--json").json() == []


def test_a_description_over_several_lines_is_still_accepted(capsys, registered, tiny_adapter):
    assert run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "t1", "-d", "two\nlines\tand tab").code == 0
    assert run_cli(capsys, "list", "tasks", "--json").json()[0]["descriptions"] == ["two lines and tab"]


def test_generate_refuses_a_control_character_in_the_task(capsys):
    line = one_line_error(run_cli(capsys, "generate", "--task", "ring\x07the bell", "--base", "tiny"))
    assert r"holds the control character '\x07'" in line


def test_a_task_folder_with_a_control_character_in_a_description_is_refused(tmp_path):
    folder = _task_folder(tmp_path, name="my_task", descriptions=["fine", "clear the screen\x1b[2J"])
    with pytest.raises(LoragenError, match=r"description .* holds the control character"):
        load_task_dir(folder)


def _stored_by_an_older_loragen(tiny_adapter, description: str) -> None:
    """A description the library now refuses, stored as earlier versions let it be: registered clean, then the
    row's text rewritten in the database file."""
    import sqlite3

    from loragen.config import load_settings
    from loragen.registry.store import Registry

    registry = Registry(load_settings().registry)
    try:
        registry.ingest(tiny_adapter, "tiny", "t1", ["placeholder"])
    finally:
        registry.engine.dispose()
    if os.environ.get("LORAGEN_TEST_POSTGRES_URL"):
        pytest.skip("rewrites the SQLite file")
    with sqlite3.connect(os.environ["LORAGEN_HOME"] + "/registry.db") as db:
        assert db.execute("UPDATE task_descriptions SET text = ? WHERE text = 'placeholder'", (description,)).rowcount == 1


def test_list_escapes_control_characters_already_stored(capsys, registered, tiny_adapter):
    _stored_by_an_older_loragen(tiny_adapter, "evil\x1b[2J\x9b and more")
    listed = run_cli(capsys, "list", "tasks")
    assert listed.code == 0 and "\x1b" not in listed.out and "\x9b" not in listed.out
    assert r"evil\x1b[2J\x9b and more" in listed.out
    assert run_cli(capsys, "list", "tasks", "--json").json()[0]["descriptions"] == ["evil\x1b[2J\x9b and more"]


def test_show_escapes_control_characters_in_plain_values(capsys):
    from loragen.cli.render import render_fields

    capsys.readouterr()
    render_fields({"note": "bell\x07 and erase\x1b[2J", "list": ["\x1b"]}, as_json=False)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert r"bell\x07 and erase\x1b[2J" in out and r'["\u001b"]' in out


def test_a_long_description_does_not_widen_the_table(capsys, registered, tiny_adapter):
    from loragen.cli.render import MAX_CELL_WIDTH

    description = "word " * 2000  # 10,000 characters
    assert run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "t1", "-d", description).code == 0
    listed = run_cli(capsys, "list", "tasks")
    widest = max(len(line) for line in listed.out.splitlines())
    assert widest < MAX_CELL_WIDTH + 40, widest  # TASK, ADAPTERS and DESCRIPTIONS take the 40
    assert "…" in listed.out
    stored = run_cli(capsys, "list", "tasks", "--json").json()[0]["descriptions"][0]
    assert len(stored) == len(description.strip())  # --json keeps it whole


def test_cells_are_cut_by_terminal_columns():
    from loragen.cli.render import _cut, _width

    assert _cut("short", 10) == "short"
    cut = _cut("漢字" * 50, 11)
    assert _width(cut) <= 11 and cut.endswith("…")


# ---------------------------------------------------------------- D9: unknown held-out tasks


def test_train_refuses_an_unknown_held_out_task_before_training(capsys, tiny_base, tmp_path, isolated_home):
    registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, ["upper", "lower"])
    line = one_line_error(run_cli(capsys, "train", "--held-out", "uper", "--steps", "2"))
    assert "unknown held-out task 'uper'" in line and "did you mean upper" in line
    assert run_cli(capsys, "list", "generators", "--json").json() == []


def test_known_task_names_are_registered_or_bundled_names():
    from loragen.tasks.suite import check_known_tasks

    check_known_tasks(["mine", "antonyms"], registered=["mine"], what="held-out task")
    with pytest.raises(LoragenError, match="lm-eval's name for bundled task antonyms: use antonyms"):
        check_known_tasks(["loragen_antonyms"], registered=[], what="held-out task")
    with pytest.raises(LoragenError, match="unknown held-out task 'antonym'.*did you mean antonyms"):
        check_known_tasks(["antonym"], registered=[], what="held-out task")


# ---------------------------------------------------------------- D10: task lists that name nothing


def test_eval_refuses_a_task_list_that_names_nothing(capsys):
    result = run_cli(capsys, "eval", "--base", "tiny", "--tasks", ",,,")
    assert result.code == 2 and "--tasks names nothing" in result.err, result.err


@pytest.mark.parametrize("command, option", [("train", "--tasks"), ("train", "--bases"), ("train", "--held-out"),
                                             ("refresh", "--tasks")])
def test_train_and_refresh_refuse_a_list_that_names_nothing(capsys, command, option):
    result = run_cli(capsys, command, option, " , ,", *(["--dry-run"] if command == "refresh" else []))
    assert result.code == 2 and f"{option} names nothing" in result.err, result.err


# ---------------------------------------------------------------- D14: a bundled task for lm-eval's own CLI


def test_export_task_writes_a_folder_whose_yaml_names_absolute_copies(capsys, tmp_path):
    import yaml

    result = run_cli(capsys, "export-task", "antonyms", tmp_path / "out", "--json")
    assert result.code == 0, result.err
    record = result.json()
    out = tmp_path / "out"
    assert record["lm_eval_task"] == "loragen_antonyms" and record["path"] == str(out)
    assert "--include_path" in record["command"] and "--tasks loragen_antonyms" in record["command"]
    config = yaml.safe_load((out / "loragen_antonyms.yaml").read_text())
    files = config["dataset_kwargs"]["data_files"]
    assert set(files) == {"train", "validation", "test"}
    for split, path in files.items():
        assert Path(path) == out / "data" / f"{split}.jsonl"
        assert Path(path).read_bytes() == (DATA_DIR / "antonyms" / f"{split}.jsonl").read_bytes()
    assert json.loads((out / "meta.json").read_text())["license"] == get_task("antonyms").license
    # The rest of the task is the bundled one's.
    bundled = yaml.safe_load((DATA_DIR / "antonyms" / "task.yaml").read_text())
    assert {k: v for k, v in config.items() if k != "dataset_kwargs"} == {
        k: v for k, v in bundled.items() if k != "dataset_kwargs"}


def test_export_task_refuses_a_folder_in_use_and_unknown_tasks(capsys, tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    line = one_line_error(run_cli(capsys, "export-task", "antonyms", used))
    assert "already exists and is not an empty folder" in line
    assert sorted(p.name for p in used.iterdir()) == ["keep.txt"]
    assert "unknown task 'antonym'" in one_line_error(run_cli(capsys, "export-task", "antonym", tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_export_task_takes_a_task_folder_too(capsys, tmp_path):
    folder = _task_folder(tmp_path, name="my_task", eval_name="my_lm_eval_task")
    record = run_cli(capsys, "export-task", folder, tmp_path / "out", "--json").json()
    assert record["task"] == "my_task" and record["lm_eval_task"] == "my_lm_eval_task"
    assert (tmp_path / "out" / "my_lm_eval_task.yaml").is_file()


@pytest.mark.slow
def test_lm_evals_own_cli_runs_exported_tasks_from_another_directory(capsys, tiny_base, tmp_path):
    """The README's command, as a user runs it: two exported tasks (exact match and multiple choice) under one
    include path, lm_eval started in an unrelated working directory, offline."""
    exported = tmp_path / "exported"
    for name in ("antonyms", "country_region"):
        assert run_cli(capsys, "export-task", name, exported / name).code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lm_eval = Path(sys.executable).with_name("lm_eval")
    command = [str(lm_eval)] if lm_eval.exists() else [sys.executable, "-m", "lm_eval"]
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "cache"))
    run = subprocess.run(
        [*command, "--model", "hf", "--model_args", f"pretrained={tiny_base}", "--device", "cpu",
         "--include_path", str(exported), "--tasks", "loragen_antonyms,loragen_country_region", "--limit", "2",
         "--output_path", str(tmp_path / "results")],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    [results_file] = (tmp_path / "results").rglob("results*.json")
    results = json.loads(results_file.read_text())
    assert results["n-samples"]["loragen_antonyms"]["effective"] == 2
    assert results["n-samples"]["loragen_country_region"]["effective"] == 2
    assert 0 <= results["results"]["loragen_antonyms"]["exact_match,strip"] <= 1
    assert 0 <= results["results"]["loragen_country_region"]["acc,none"] <= 1
    assert re.search(r"loragen_antonyms", run.stdout)


def test_the_library_refuses_what_the_cli_refuses(registered, tiny_adapter):
    """The checks live below the CLI too: a caller of the library (a benchmark, a script) gets the same refusals."""
    from loragen import workflows
    from loragen.config import GeneratorSettings, load_settings
    from loragen.registry.store import Registry

    registry = Registry(load_settings().registry)
    try:
        with pytest.raises(LoragenError, match="control character"):
            registry.ingest(tiny_adapter, "tiny", "t1", ["evil\x1b[2J"])
        with pytest.raises(LoragenError, match="not valid UTF-8"):
            workflows.draw(registry, GeneratorSettings(), task="caf\udcff", base_ref="tiny", seed=0, samples=1)
        with pytest.raises(LoragenError, match="unknown held-out task"):
            workflows.train(registry, GeneratorSettings(), held_out=["nope_task"])
        with pytest.raises(LoragenError, match="task list is empty"):
            workflows.evaluate_targets(registry, [workflows.EvalTarget(base="tiny", tasks=[])])
    finally:
        registry.engine.dispose()
