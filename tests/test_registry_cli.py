"""Foundation: bases, ingest, list/show/rm/export/gc through the CLI, on real files and real SQLite."""

import json
import shutil
import struct

import pytest
import torch

from tests.helpers import blob_files, one_line_error, run_cli
from tests.tiny import make_lora, make_tiny_llama


def test_base_add_list_show_json(capsys, registered):
    rows = run_cli(capsys, "list", "bases", "--json").json()
    assert [r["name"] for r in rows] == ["tiny@v1"]
    assert rows[0]["architecture"] == "llama" and rows[0]["layers"] == 2
    shown = run_cli(capsys, "show", "tiny", "--json").json()
    assert shown["name"] == "tiny@v1"
    table = run_cli(capsys, "base")
    assert "tiny@v1" in table.out and "1 base version(s)" in table.out


def test_a_bases_chat_template_is_kept_and_loads(capsys, tiny_base, tmp_path, isolated_home):
    # transformers writes the chat template to chat_template.jinja (extra ones under additional_chat_templates/);
    # a version registered without it renders no chat format (bench/evolve_base.py's instruction rung hit this).
    from loragen.cli.context import state
    from loragen.workflows import load_base

    folder = tmp_path / "with-template"
    shutil.copytree(tiny_base, folder)
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    (folder / "chat_template.jinja").write_text(template)
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "tool_use.jinja").write_text(template + "!")
    assert run_cli(capsys, "base", "add", "tiny", "--from", folder).code == 0
    _, tokenizer, _ = load_base(state.registry, "tiny@v1")
    assert tokenizer.chat_template == {"default": template, "tool_use": template + "!"}
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<user>hi"


def test_base_add_twice_refused(capsys, registered, tiny_base):
    again = run_cli(capsys, "base", "add", "tiny", "--from", tiny_base)
    assert again.code == 1 and "already exists" in again.err and "base update" in again.err


def test_base_update_lineage_and_architecture_check(capsys, registered, tiny_base_v2, tmp_path):
    result = run_cli(capsys, "base", "update", "tiny", "--from", tiny_base_v2, "--note", "continued pretraining")
    assert result.code == 0, result.err
    rows = run_cli(capsys, "list", "bases", "--json").json()
    v2 = [r for r in rows if r["name"] == "tiny@v2"][0]
    assert v2["parent"] == "tiny@v1" and v2["note"] == "continued pretraining"
    assert v2["weights_digest"] != rows[0]["weights_digest"]
    bigger = make_tiny_llama(tmp_path / "bigger", hidden=48, heads=4, kv_heads=2)
    refused = run_cli(capsys, "base", "update", "tiny", "--from", bigger)
    assert refused.code == 1 and "architecture differs" in refused.err
    assert len(refused.err.strip().splitlines()) == 2  # "reading …" then the one-line error
    same = run_cli(capsys, "base", "update", "tiny", "--from", tiny_base_v2)
    assert same.code == 1 and "already registered as tiny@v2" in same.err


def test_base_update_parent_names_an_earlier_release(capsys, registered, tiny_base_v2, tmp_path):
    """A version evolved from an earlier release than the newest: numbered after the newest, lineage to its parent."""
    assert run_cli(capsys, "base", "update", "tiny", "--from", tiny_base_v2).code == 0
    branch = make_tiny_llama(tmp_path / "branch", seed=5)
    for parent, message in (("other@v1", "the parent must be a version of 'tiny'"), ("tiny", "as tiny@vN"),
                            ("tiny@v9", "v9")):
        refused = run_cli(capsys, "base", "update", "tiny", "--from", branch, "--parent", parent)
        assert refused.code == 1 and message in one_line_error(refused)
    result = run_cli(capsys, "base", "update", "tiny", "--from", branch, "--parent", "tiny@v1", "--json")
    assert result.code == 0, result.err
    v3 = [r for r in run_cli(capsys, "list", "bases", "--json").json() if r["name"] == "tiny@v3"][0]
    assert v3["parent"] == "tiny@v1"


def test_ingest_export_roundtrip_gives_same_outputs(capsys, registered, tiny_base, tiny_adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ingested = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "echo", "-d", "Repeat the word")
    assert ingested.code == 0, ingested.err
    adapter_id = run_cli(capsys, "list", "-q").out.split()[0]
    out_dir = tmp_path / "exported"
    assert run_cli(capsys, "export", adapter_id, out_dir).code == 0
    tokens = torch.tensor([[1, 10, 11, 12, 13, 14]])
    outputs = []
    for folder in (tiny_adapter, out_dir):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), folder)
        with torch.no_grad():
            outputs.append(model(tokens).logits)
    plain = AutoModelForCausalLM.from_pretrained(tiny_base)
    with torch.no_grad():
        base_logits = plain(tokens).logits
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], base_logits)  # the adapter really changes the model
    shown = run_cli(capsys, "show", adapter_id, "--json").json()
    assert shown["task"] == "echo" and shown["origin"] == "ingested" and shown["rank"] == 4
    assert shown["target_modules"] == ["q_proj", "v_proj"]
    tasks = run_cli(capsys, "list", "tasks", "--json").json()
    assert tasks == [{"name": "echo", "descriptions": ["Repeat the word"], "adapters": 1}]


def test_duplicate_ingest_stores_one_blob(capsys, registered, tiny_adapter, isolated_home):
    before = len(blob_files(isolated_home))
    first = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "echo", "--json").json()
    second = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "echo", "--json").json()
    assert first["created"] and not second["created"] and first["id"] == second["id"]
    other_task = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "copy", "--json").json()
    assert other_task["created"] and other_task["id"] != first["id"]
    assert len(blob_files(isolated_home)) == before + 2  # one weights file, one config
    assert len(run_cli(capsys, "list", "--json").json()) == 2


def _corrupt(folder, tmp_path, name):
    bad = tmp_path / name
    shutil.copytree(folder, bad)
    return bad


def _rewrite_tensors(folder, change):
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def _bad_adapters(tiny_adapter, tmp_path):
    """(name, folder, expected message part) for every kind of bad input."""
    cases = []

    def case(name, expected, mutate):
        folder = _corrupt(tiny_adapter, tmp_path, name)
        mutate(folder)
        cases.append((name, folder, expected))

    weights = "adapter_model.safetensors"
    case("no-config", "missing adapter_config.json", lambda f: (f / "adapter_config.json").unlink())
    case("no-weights", "missing adapter_model.safetensors", lambda f: (f / weights).unlink())
    case("truncated", "truncated or corrupt", lambda f: (f / weights).write_bytes((f / weights).read_bytes()[:-100]))
    case("tiny-file", "truncated safetensors", lambda f: (f / weights).write_bytes(b"abc"))
    case("header-garbage", "corrupt safetensors header",
         lambda f: (f / weights).write_bytes(struct.pack("<Q", 20) + b"{not json at all!!!}" + b"\0" * 64))
    case("header-too-long", "corrupt safetensors header",
         lambda f: (f / weights).write_bytes(struct.pack("<Q", 10**12) + b"{}"))
    case("config-not-json", "not valid JSON", lambda f: (f / "adapter_config.json").write_text("{r: 8"))
    case("nan", "NaN or Inf", lambda f: _rewrite_tensors(f, lambda t: next(iter(t.values())).__setitem__((0, 0), float("nan"))))
    case("int-dtype", "dtype", lambda f: _rewrite_tensors(f, lambda t: t.update({k: v.to(torch.int32) for k, v in t.items()})))
    case("wrong-shape", "do not fit", lambda f: _rewrite_tensors(
        f, lambda t: t.update({k: torch.zeros(v.shape[0], v.shape[1] + 1) if "lora_A" in k else v for k, v in t.items()})))
    case("unknown-module", "does not exist", lambda f: _rewrite_tensors(
        f, lambda t: t.update({k.replace("q_proj", "zz_proj"): t.pop(k) for k in list(t) if "q_proj" in k})))
    case("missing-module", "has no LoRA weights", lambda f: _rewrite_tensors(
        f, lambda t: [t.pop(k) for k in list(t) if "layers.1.self_attn.v_proj" in k]))
    case("half-pair", "not both lora_A and lora_B", lambda f: _rewrite_tensors(
        f, lambda t: [t.pop(k) for k in list(t) if "layers.0.self_attn.q_proj.lora_B" in k]))

    def rank_mismatch(f):
        config = json.loads((f / "adapter_config.json").read_text())
        config["r"] = 8
        (f / "adapter_config.json").write_text(json.dumps(config))
    case("rank-mismatch", "at rank 8", rank_mismatch)

    def no_targets(f):
        config = json.loads((f / "adapter_config.json").read_text())
        config["target_modules"] = ["nonexistent_proj"]
        (f / "adapter_config.json").write_text(json.dumps(config))
    case("targets-match-nothing", "match no linear module", no_targets)
    return cases


def test_bad_adapters_refused_with_nothing_registered(capsys, registered, tiny_adapter, tmp_path, isolated_home):
    blobs_before = blob_files(isolated_home)
    for name, folder, expected in _bad_adapters(tiny_adapter, tmp_path):
        result = run_cli(capsys, "ingest", folder, "--base", "tiny", "--task", f"t-{name}")
        assert result.code == 1, name
        assert expected in result.err, (name, result.err)
        assert len(result.err.strip().splitlines()) == 1, (name, result.err)
        assert "Traceback" not in result.err
    assert run_cli(capsys, "list", "--json").json() == []
    assert run_cli(capsys, "list", "tasks", "--json").json() == []
    assert blob_files(isolated_home) == blobs_before


def test_adapter_for_other_base_refused(capsys, registered, tmp_path):
    wide = make_tiny_llama(tmp_path / "wide", hidden=48)
    adapter = make_lora(wide, tmp_path / "wide-lora")
    result = run_cli(capsys, "ingest", adapter, "--base", "tiny", "--task", "t")
    assert result.code == 1 and "do not fit" in result.err


def test_unknown_base_and_bad_names(capsys, registered, tiny_adapter):
    missing = run_cli(capsys, "ingest", tiny_adapter, "--base", "nope", "--task", "t")
    assert missing.code == 1 and "no base model named 'nope'" in missing.err and "tiny" in missing.err
    bad_version = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny@v9", "--task", "t")
    assert bad_version.code == 1 and "no version v9" in bad_version.err
    bad_task = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "has space")
    assert bad_task.code == 1 and "invalid task name" in bad_task.err
    usage = run_cli(capsys, "ingest", tiny_adapter)
    assert usage.code == 2


def test_crash_mid_ingest_leaves_nothing_registered(capsys, registered, tiny_adapter, isolated_home, monkeypatch):
    from loragen.registry.store import Registry

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash after the blobs were written")

    with monkeypatch.context() as patch:
        patch.setattr(Registry, "ensure_task", crash)
        result = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "echo")
    assert result.code == 3 and "simulated crash" in result.err and "Traceback" not in result.err
    assert run_cli(capsys, "list", "--json").json() == []
    assert list((isolated_home / "blobs" / "tmp").iterdir()) == []  # no partial file visible
    # The orphaned (complete) blobs are exactly what gc is for (--grace 0: they were written just now).
    gc = run_cli(capsys, "gc", "--grace", "0", "--json").json()
    assert gc["blobs_removed"] == 2


def test_rm_then_gc_frees_adapter_blobs_only(capsys, registered, tiny_adapter, isolated_home):
    base_blobs = len(blob_files(isolated_home))
    adapter_id = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "echo", "--json").json()["id"]
    assert run_cli(capsys, "rm", adapter_id).code == 0
    assert run_cli(capsys, "list", "--json").json() == []
    gc = run_cli(capsys, "gc", "--grace", "0", "--json").json()
    assert gc["blobs_removed"] == 2 and gc["bytes_freed"] > 0
    assert len(blob_files(isolated_home)) == base_blobs
    again = run_cli(capsys, "rm", adapter_id)
    assert again.code == 1 and "no adapter" in again.err


def test_gc_removes_work_folders_of_killed_commands_but_not_running_ones(capsys, registered, isolated_home):
    import os
    import time

    stale = isolated_home / "loragen-generated-killed"
    (stale / "adapter").mkdir(parents=True)
    (stale / "adapter" / "adapter_model.safetensors").write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    running = isolated_home / "loragen-generated-running"
    running.mkdir()
    # A GGUF conversion killed while staging, one still staging, and a finished converted copy (a cache gc keeps).
    converted = isolated_home / "snapshots" / "converted"
    killed_conversion, converting, copy = converted / ".0123456789abcdef-x1", converted / ".0123456789abcdef-x2", \
        converted / "0123456789abcdef"
    for folder in (killed_conversion, converting, copy):
        folder.mkdir(parents=True)
    for old in (killed_conversion, copy):
        os.utime(old, (time.time() - 7200, time.time() - 7200))
    gc = run_cli(capsys, "gc", "--json").json()
    assert gc["temp_files_removed"] == 2
    assert not stale.exists() and running.is_dir()
    assert not killed_conversion.exists() and converting.is_dir() and copy.is_dir()


def test_export_refuses_non_empty_target(capsys, registered, tiny_adapter, tmp_path):
    adapter_id = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "echo", "--json").json()["id"]
    target = tmp_path / "taken"
    target.mkdir()
    (target / "file").write_text("x")
    result = run_cli(capsys, "export", adapter_id, target)
    assert result.code == 1 and "not empty" in result.err


def test_version_and_help_are_fast_paths(capsys):
    assert run_cli(capsys, "--version").out.startswith("loragen ")
    assert "ingest" in run_cli(capsys, "--help").out


def test_list_suite_shows_the_bundled_tasks(capsys):
    rows = run_cli(capsys, "list", "suite", "--json").json()
    names = {r["name"] for r in rows}
    assert {"antonyms", "element_symbol", "hypernym_choice"} <= names and len(rows) >= 8
    assert all(len(r["descriptions"]) >= 5 and r["counts"]["test"] > 0 for r in rows)
    assert "bundled task(s)" in run_cli(capsys, "list", "suite").out
    assert run_cli(capsys, "list", "nonsense").code == 2


# ---------------------------------------------------------------- the registry at scale (list and show)

def _copies_of_an_adapter(uids, created_from="2026-01-01"):
    """Adapter rows with the given uids, each a copy of the one registered adapter (its blobs, task and
    base), created a second apart in order: what a big registry looks like to list and show, made fast."""
    from datetime import datetime, timedelta

    from sqlalchemy import insert, select

    from loragen.config import load_settings
    from loragen.registry.models import Adapter
    from loragen.registry.store import Registry

    registry = Registry(load_settings().registry)
    try:
        with registry.engine.begin() as connection:
            template = dict(connection.execute(select(Adapter.__table__)).mappings().first())
            start = datetime.fromisoformat(created_from)
            rows = [dict(template, id=None, uid=uid, created_at=start + timedelta(seconds=i)) for i, uid in enumerate(uids)]
            connection.execute(insert(Adapter.__table__), [{k: v for k, v in r.items() if k != "id"} for r in rows])
    finally:
        registry.engine.dispose()


def test_list_caps_the_table_and_json_and_quiet_stay_complete(capsys, registered, tiny_adapter):
    for task in ("t1", "t2", "t3", "t4", "t5"):
        assert run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", task).code == 0
    every = run_cli(capsys, "list", "--json").json()
    assert [r["task"] for r in every] == ["t1", "t2", "t3", "t4", "t5"]  # oldest first
    assert run_cli(capsys, "list", "-q").out.split() == [r["id"] for r in every]

    capped = run_cli(capsys, "list", "--limit", "2")
    assert capped.code == 0, capped.err
    lines = capped.out.splitlines()
    assert lines[0].split()[:3] == ["ID", "TASK", "BASE"]
    assert [line.split()[0] for line in lines[1:3]] == [every[3]["id"], every[4]["id"]]  # the newest two, in order
    assert "3 older adapter(s) not shown" in lines[3] and "--all" in lines[3]
    assert lines[4].startswith("5 adapter(s)")

    whole = run_cli(capsys, "list", "--all", "--limit", "2").out
    assert all(r["id"] in whole for r in every) and "not shown" not in whole
    assert "not shown" not in run_cli(capsys, "list").out  # 5 rows fit the default table

    task = run_cli(capsys, "list", "--task", "t2", "--json").json()
    assert [r["id"] for r in task] == [every[1]["id"]]
    assert run_cli(capsys, "list", "--task", "nope", "--json").json() == []
    assert run_cli(capsys, "list", "--origin", "ingested", "-q").out.split() == [r["id"] for r in every]
    assert run_cli(capsys, "list", "--base", "tiny@v1", "-q").out.split() == [r["id"] for r in every]
    missing_base = run_cli(capsys, "list", "--base", "nope", "--json")
    assert missing_base.code == 1 and missing_base.out == "" and "no base model named 'nope'" in missing_base.err
    for bad in (["--limit", "0"], ["--limit", "many"], ["--origin", "bought"]):
        assert run_cli(capsys, "list", *bad).code == 2, bad


def test_list_json_is_the_library_view_and_a_closed_pipe_stops_it_quietly(capsys, registered, tiny_adapter, isolated_home):
    import os
    import subprocess
    import sys

    assert run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "echo", "-d", "Say it again").code == 0
    _copies_of_an_adapter([f"{i:064x}" for i in range(1, 600)])  # ~250 KB of JSON: more than a pipe holds
    listed = run_cli(capsys, "list", "--json").json()
    from loragen.config import load_settings
    from loragen.registry.store import Registry

    registry = Registry(load_settings().registry)
    assert listed == registry.list_adapters() and len(listed) == 600
    shown = run_cli(capsys, "show", listed[-1]["id"], "--json").json()
    assert shown == registry.get_adapter(listed[-1]["id"]) and shown["task"] == "echo" and shown["evaluations"] == []
    assert run_cli(capsys, "list", "tasks", "--json").json() == [
        {"name": "echo", "descriptions": ["Say it again"], "adapters": 600}]
    assert run_cli(capsys, "list", "bases", "--json").json()[0]["adapters"] == 600
    registry.engine.dispose()

    env = dict(os.environ, LORAGEN_HOME=str(isolated_home))
    producer = subprocess.Popen([sys.executable, "-m", "loragen", "list", "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert producer.stdout.readline() == b"[\n" and json.loads(producer.stdout.readline().rstrip(b",\n"))["id"]
    producer.stdout.close()  # `| head -2`: the command stops there (click exits 1 on EPIPE), with no message
    assert producer.wait(timeout=60) == 1 and producer.stderr.read() == b""


def test_adapter_id_prefixes_unique_ambiguous_and_at_a_range_edge(capsys, registered, tiny_adapter):
    assert run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "echo").code == 0
    _copies_of_an_adapter(["abcd1" + "0" * 59, "abcd2" + "0" * 59, "abcf" + "0" * 60, "abd0" + "0" * 60,
                           "abc9" + "0" * 60, "abca" + "0" * 60, "ffff" + "0" * 60])
    ambiguous = run_cli(capsys, "show", "abcd")
    assert ambiguous.code == 1 and "ambiguous" in ambiguous.err
    assert run_cli(capsys, "show", "ABCD2", "--json").json()["uid"] == "abcd2" + "0" * 59  # case and spaces forgiven
    # Each range ends at the next hex string: abcf… stops before abd, abc9… before abca; ffff… has no end.
    for prefix in ("abcf", "abc9", "abca", "ffff"):
        assert run_cli(capsys, "show", prefix, "--json").json()["uid"] == prefix + "0" * 60, prefix
    assert run_cli(capsys, "show", "abc8").code == 1
    too_short = run_cli(capsys, "show", "abc")
    assert too_short.code == 1 and "at least 4 hex characters" in too_short.err
    # The writers find adapters the same way (the ORM path): rm refuses the ambiguous prefix, takes the unique one.
    assert run_cli(capsys, "rm", "abcd").code == 1
    assert run_cli(capsys, "rm", "abcd1").out == "removed abcd10000000\n"
    assert run_cli(capsys, "show", "abcd", "--json").json()["uid"] == "abcd2" + "0" * 59


@pytest.mark.skipif(bool(__import__("os").environ.get("LORAGEN_TEST_POSTGRES_URL")),
                    reason="the stdlib sqlite3 path is SQLite's; PostgreSQL reads through SQLAlchemy")
def test_read_commands_on_an_up_to_date_sqlite_registry_skip_the_heavy_imports(capsys, registered, tiny_adapter,
                                                                              isolated_home):
    """list and show read the file with sqlite3: no SQLAlchemy, Alembic, pydantic (typer's coercion) or rich."""
    import os
    import subprocess
    import sys

    adapter_id = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "echo", "--json").json()["id"]
    probe = ("import sys\nfrom loragen.cli import main\nsys.argv = ['loragen'] + sys.argv[1:]\n"
             "try:\n    main()\nexcept SystemExit as stop:\n    assert stop.code == 0, stop.code\n"
             "heavy = ('sqlalchemy', 'alembic', 'pydantic', 'rich', 'filelock', 'torch')\n"
             "sys.stderr.write(repr(sorted(m for m in heavy if m in sys.modules)))\n")
    env = dict(os.environ, LORAGEN_HOME=str(isolated_home))
    for args in (["list"], ["list", "-q"], ["list", "--json"], ["list", "--task", "echo"], ["show", adapter_id],
                 ["list", "bases"], ["list", "tasks"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0 and done.stderr == "[]", (args, done.stderr)


@pytest.mark.skipif(bool(__import__("os").environ.get("LORAGEN_TEST_POSTGRES_URL")), reason="a SQLite file")
def test_list_on_a_registry_of_an_older_schema_upgrades_it_first(capsys, isolated_home):
    from loragen.registry import db

    isolated_home.mkdir(parents=True)
    engine = db.make_engine(f"sqlite:///{isolated_home / 'registry.db'}")
    db.upgrade(engine, "0002")
    engine.dispose()
    assert run_cli(capsys, "list", "--json").json() == []
    assert db.current_revision(db.make_engine(f"sqlite:///{isolated_home / 'registry.db'}")) == db.head_revision()


def test_the_schema_head_read_from_the_files_is_alembics(tmp_path):
    from loragen.registry import db
    from loragen.registry.revisions import head_revision_fast

    assert head_revision_fast() == db.head_revision()
    versions = tmp_path / "versions"
    versions.mkdir()
    (versions / "a.py").write_text("revision = 'a'\ndown_revision = None\n")
    (versions / "b.py").write_text("revision: str = 'b'\ndown_revision: Union[str, None] = 'a'\n")
    assert head_revision_fast(versions) == "b"
    (versions / "c.py").write_text("revision = 'c'\ndown_revision = 'a'\n")  # two heads: Alembic must decide
    assert head_revision_fast(versions) is None
    (versions / "c.py").write_text("revision = 'c'\ndown_revision = ('a', 'b')\n")  # a merge: likewise
    assert head_revision_fast(versions) is None
