"""Issue 19's bad inputs (D3-D6, D8, D11-D13): each is refused in one line, or served, and none escapes the home.

Inputs here are real files: a registry.db edited with sqlite3, adapter folders with edited configs, safetensors
files with hand-written headers, homes that cannot be written.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sqlite3
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import run_cli

ON_POSTGRES = bool(os.environ.get("LORAGEN_TEST_POSTGRES_URL"))
sqlite_only = pytest.mark.skipif(ON_POSTGRES, reason="edits a SQLite registry file")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def registered(capsys, tiny_base, tiny_adapter):
    """The tiny base and one adapter on it; returns the adapter's id."""
    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0
    result = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "echo", "--json")
    assert result.code == 0, result.err
    return result.json()["id"]


def one_line_error(result, *expected: str) -> None:
    assert result.code == 1, (result.code, result.err)
    last = result.err.strip().splitlines()[-1]  # a command may say what it reads first ("reading … ")
    assert last.startswith("loragen: error: ") and "Traceback" not in result.err, result.err
    for text in expected:
        assert text in last, result.err


def edit_db(home: Path, *statements: str) -> None:
    with sqlite3.connect(home / "registry.db") as connection:
        for statement in statements:
            connection.execute(statement)
    connection.close()


# ---------------------------------------------------------------- D3: paths read from the database


@sqlite_only
def test_a_base_file_path_that_leaves_the_home_is_refused_by_export_and_named_by_doctor(
        capsys, registered, isolated_home, tmp_path):
    victim = tmp_path / "victim"  # snapshots/<digest>/../../../victim
    victim.write_text("precious")
    edit_db(isolated_home, "UPDATE base_version_files SET path = '../../../victim' WHERE path = 'config.json'")
    one_line_error(run_cli(capsys, "export", registered, tmp_path / "out"), "'../../../victim'", "a path that leaves")
    assert not victim.is_symlink() and victim.read_text() == "precious"
    assert not (tmp_path / "out").exists()
    report = run_cli(capsys, "doctor", "--json")
    assert report.code == 1
    [problem] = report.json()["problems"]
    assert problem["problem"] == "bad path"
    assert problem["referenced_by"] == [{"kind": "base", "id": "tiny@v1", "file": "../../../victim"}]
    human = run_cli(capsys, "doctor")
    assert human.code == 1 and "bad path" in human.out and "all present and whole" not in human.err


@sqlite_only
@pytest.mark.parametrize("column, value", [("path", "<absolute>"), ("path", "a/./b"), ("gguf_file", "../x.gguf")])
def test_other_stored_paths_outside_their_folder_are_refused(capsys, registered, isolated_home, tmp_path, column,
                                                             value):
    # An absolute path names a file of the test's own (never a system file: on code without the check, export
    # replaces the file it names with a link into the blob store).
    victim = tmp_path / "absolute-victim"
    victim.write_text("precious")
    value = str(victim) if value == "<absolute>" else value
    table = "base_version_files" if column == "path" else "base_versions"
    where = " WHERE path = 'config.json'" if column == "path" else ""
    edit_db(isolated_home, f"UPDATE {table} SET {column} = '{value}'{where}")
    named = "an absolute path" if value == str(victim) else repr(value)  # a long path is shortened in the message
    one_line_error(run_cli(capsys, "export", registered, tmp_path / "out"), named, "damaged or was edited")
    assert not victim.is_symlink() and victim.read_text() == "precious"
    assert run_cli(capsys, "doctor", "--json").json()["problems"][0]["problem"] == "bad path"


@sqlite_only
def test_gc_never_deletes_a_file_a_planted_blob_row_names(capsys, registered, isolated_home, tmp_path):
    victim = tmp_path / "victim"  # blobs/sha256/ + '..' + 'sha256/../../../victim'
    victim.write_text("precious")
    os.utime(victim, (1, 1))  # older than any grace period
    edit_db(isolated_home, "INSERT INTO blobs (sha256, size, media_type, created_at) "
                           "VALUES ('..sha256/../../../victim', 8, 'text/plain', '2020-01-01 00:00:00')")
    result = run_cli(capsys, "gc", "--grace", "0", "--json")
    assert result.code == 0, result.err
    assert victim.read_text() == "precious"
    with sqlite3.connect(isolated_home / "registry.db") as connection:  # the row itself is gone: nothing uses it
        assert connection.execute("SELECT count(*) FROM blobs WHERE sha256 LIKE '..%'").fetchone() == (0,)
    connection.close()


# ---------------------------------------------------------------- D4, D5, D6: adapter configs and headers


def _adapter_with(tiny_adapter: Path, folder: Path, config_text: str | None = None, **config_changes) -> Path:
    shutil.copytree(tiny_adapter, folder)
    if config_text is None:
        config = json.loads((folder / "adapter_config.json").read_text())
        config.update(config_changes)
        config_text = json.dumps(config)  # NaN and Infinity as Python's json writes them, as peft would read them
    (folder / "adapter_config.json").write_text(config_text)
    return folder


@pytest.mark.parametrize("changes, expected", [
    ({"lora_alpha": float("nan")}, "'lora_alpha' must be a number above 0"),
    ({"lora_alpha": float("inf")}, "'lora_alpha' must be a number above 0"),
    ({"lora_alpha": -1e308}, "'lora_alpha' must be a number above 0"),
    ({"lora_alpha": 0}, "'lora_alpha' must be a number above 0"),
    ({"lora_alpha": 1e300}, "'lora_alpha' must be a number above 0"),
    ({"lora_alpha": "sixteen"}, "'lora_alpha' must be a number above 0"),
    ({"lora_alpha": True}, "'lora_alpha' must be a number above 0"),
    ({"r": 10**30}, "'r' must be an integer from 1 to"),
    ({"lora_dropout": float("nan")}, "'lora_dropout' must be a number in [0, 1)"),
    ({"lora_dropout": 1.5}, "'lora_dropout' must be a number in [0, 1)"),
    ({"target_modules": "(["}, "is not a valid regular expression"),
])
def test_adapter_config_numbers_and_patterns_are_refused_before_anything_is_written(
        capsys, registered, tiny_adapter, tmp_path, changes, expected):
    folder = _adapter_with(tiny_adapter, tmp_path / "bad", **changes)
    one_line_error(run_cli(capsys, "ingest", folder, "--base", "tiny", "--task", "other"), expected)
    assert [row["task"] for row in run_cli(capsys, "list", "--json").json()] == ["echo"]
    assert [row["name"] for row in run_cli(capsys, "list", "tasks", "--json").json()] == ["echo"]


def test_an_adapter_config_nested_past_the_recursion_limit_is_one_line(capsys, registered, tiny_adapter, tmp_path):
    deep = '{"r": 4, "nested": ' + "[" * 100_000 + "]" * 100_000 + "}"
    folder = _adapter_with(tiny_adapter, tmp_path / "deep", config_text=deep)
    one_line_error(run_cli(capsys, "ingest", folder, "--base", "tiny", "--task", "other"), "nested too deeply")


def test_a_safetensors_header_with_a_5000_digit_number_is_one_line(capsys, registered, tiny_adapter, tmp_path):
    folder = _adapter_with(tiny_adapter, tmp_path / "digits")
    header = ('{"base_model.model.x.lora_A.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, '
              + "9" * 5000 + "]}}").encode()
    (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    one_line_error(run_cli(capsys, "ingest", folder, "--base", "tiny", "--task", "other"),
                   "corrupt safetensors header")


@sqlite_only
def test_a_row_the_database_refuses_is_not_reported_as_already_registered(capsys, registered, tiny_adapter,
                                                                          monkeypatch):
    """SQLite keeps NaN as NULL, so a NOT NULL column refuses it with an IntegrityError; that is no duplicate."""
    from loragen import adapters

    monkeypatch.setattr(adapters.AdapterFolder, "alpha", property(lambda self: float("nan")))
    other = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "other")
    one_line_error(other, "the registry refused adapter")
    assert "already registered" not in other.err + other.out
    assert [row["task"] for row in run_cli(capsys, "list", "--json").json()] == ["echo"]


# ---------------------------------------------------------------- D6, D11: bases


def test_a_config_whose_heads_do_not_divide_the_width_is_one_line(capsys, tiny_base, tmp_path):
    folder = tmp_path / "odd"
    shutil.copytree(tiny_base, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_size=33, num_attention_heads=4)
    (folder / "config.json").write_text(json.dumps(config))
    one_line_error(run_cli(capsys, "base", "add", "odd", "--from", folder),
                   "cannot read the model's architecture", "not a multiple of the number of attention heads")


def test_a_pickle_only_base_is_refused_at_base_add(capsys, tiny_base, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in os.listdir(tiny_base):
        if not name.endswith(".safetensors"):
            shutil.copy(tiny_base / name, folder / name)
    torch.save(load_file(str(tiny_base / "model.safetensors")), folder / "pytorch_model.bin")
    one_line_error(run_cli(capsys, "base", "add", "pickled", "--from", folder), "only pickle files", "safetensors")
    assert run_cli(capsys, "list", "bases", "--json").json() == []


def test_loading_a_base_whose_bin_pickles_python_objects_is_one_line(tiny_base, tmp_path):
    """A base registered before pickle-only bases were refused: eval loads it, and gets one line."""
    import torch
    from transformers import AutoModelForCausalLM

    from loragen.bases import load_model
    from loragen.errors import LoragenError

    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in os.listdir(tiny_base):
        if not name.endswith(".safetensors"):
            shutil.copy(tiny_base / name, folder / name)
    torch.save(AutoModelForCausalLM.from_pretrained(tiny_base), folder / "pytorch_model.bin")  # a whole nn.Module
    with pytest.raises(LoragenError, match="a pickle of Python objects"):
        load_model(folder, None)


# ---------------------------------------------------------------- D6: settings files and damaged databases


def test_a_loragen_toml_that_is_not_utf8_is_one_line(capsys, tmp_path):
    (tmp_path / "loragen.toml").write_bytes(b"[registry]\nhome = '\xff\xfe'\n")
    one_line_error(run_cli(capsys, "list"), "loragen.toml: not valid TOML (not UTF-8")


def test_a_loragen_toml_whose_registry_is_not_a_table_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("LORAGEN_HOME")  # so the project file is where the home is looked up
    (tmp_path / "loragen.toml").write_text("registry = 5\n")
    one_line_error(run_cli(capsys, "list"), "[registry] must be a table")


@sqlite_only
def test_a_registry_db_of_random_bytes_is_one_line(capsys, isolated_home):
    isolated_home.mkdir()
    (isolated_home / "registry.db").write_bytes(os.urandom(8192))
    for command in (["list"], ["list", "bases"], ["doctor"], ["gc"]):
        one_line_error(run_cli(capsys, *command), "the registry database", "not a database")


@sqlite_only
def test_a_registry_db_with_damaged_pages_is_one_line(capsys, registered, isolated_home, tmp_path):
    path = isolated_home / "registry.db"
    with sqlite3.connect(path) as connection:
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        pages = [page for page, in connection.execute(
            "SELECT rootpage FROM sqlite_master WHERE tbl_name IN ('adapters', 'tasks', 'base_version_files') "
            "AND rootpage > 0")]  # the tables and their indexes (list tasks reads only an index)
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    with open(path, "r+b") as fh:  # the tables' pages, not the schema or the revision stamp
        for page in pages:
            fh.seek((page - 1) * page_size)
            fh.write(b"\xa5" * page_size)
    for command in (["list"], ["list", "tasks"], ["show", registered], ["doctor"],
                    ["export", registered, tmp_path / "out"]):
        result = run_cli(capsys, *command)
        one_line_error(result)
        assert "internal error" not in result.err and ("malformed" in result.err or "not a database" in result.err)


@sqlite_only
def test_a_registry_written_by_a_newer_loragen_says_so(capsys, registered, isolated_home):
    edit_db(isolated_home, "UPDATE alembic_version SET version_num = 'f00dfeed9999'")
    for command in (["list"], ["show", registered], ["doctor"]):
        one_line_error(run_cli(capsys, *command),
                       "this registry was written by a newer loragen (revision f00dfeed9999); upgrade loragen")


# ---------------------------------------------------------------- D12, D13: export targets and modes


def test_export_into_a_file_says_it_is_a_file(capsys, registered, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("x")
    one_line_error(run_cli(capsys, "export", registered, target), "is a file, not a folder")
    assert target.read_text() == "x"


def test_writing_an_adapter_folder_over_a_file_says_it_is_a_file(tiny_adapter, tmp_path):
    from loragen.adapters import load_weights, lora_config_dict, write_adapter_folder
    from loragen.errors import InvalidAdapter

    target = tmp_path / "a-file"
    target.write_text("x")
    with pytest.raises(InvalidAdapter, match="is a file, not a folder"):
        write_adapter_folder(target, load_weights(tiny_adapter / "adapter_model.safetensors"),
                             lora_config_dict(4, 8, ["q_proj", "v_proj"]))
    assert target.read_text() == "x"


def test_a_home_that_is_a_file_says_so(capsys, tmp_path, monkeypatch):
    home = tmp_path / "home-file"
    home.write_text("x")
    monkeypatch.setenv("LORAGEN_HOME", str(home))
    one_line_error(run_cli(capsys, "list", "bases"), f"the registry home {home}", "is a file, not a folder")


def test_exports_get_the_users_umask(capsys, registered, tmp_path):
    previous = os.umask(0o022)
    try:
        result = run_cli(capsys, "export", registered, tmp_path / "out")
    finally:
        os.umask(previous)
    assert result.code == 0, result.err
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}


# ---------------------------------------------------------------- D8, D12: homes and targets this user cannot write


def _without_permission_override() -> None:
    """In the child, before exec: root keeps its uid but loses the capabilities that ignore file modes
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so a chmod'ed home is as read-only to it as to any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _run_restricted(home: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LORAGEN_HOME=str(home), XDG_CACHE_HOME=str(cache), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "loragen", *map(str, args)], env=env, capture_output=True,
                          text=True, cwd=cache, preexec_fn=_without_permission_override if os.geteuid() == 0 else None,
                          timeout=300)


def _read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)


@pytest.fixture
def scratch():
    """A folder outside pytest's tmp tree, removed afterwards whatever its modes."""
    folder = Path(tempfile.mkdtemp(prefix="loragen-defects-"))
    yield folder
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o700)
    shutil.rmtree(folder)


@sqlite_only
def test_a_read_only_home_serves_the_read_commands(capsys, registered, isolated_home, scratch):
    home = scratch / "home"
    shutil.copytree(isolated_home, home, symlinks=True)
    cache, out = scratch / "cache", scratch / "out"
    cache.mkdir()
    _read_only(home)
    # The home really is read-only to the commands below (root included).
    probe = subprocess.run([sys.executable, "-c", f"open({str(home / 'probe')!r}, 'w')"], capture_output=True,
                           preexec_fn=_without_permission_override if os.geteuid() == 0 else None)
    assert probe.returncode != 0 and b"PermissionError" in probe.stderr
    for command in (["list"], ["list", "--json"], ["list", "bases"], ["list", "tasks"], ["show", registered],
                    ["show", "tiny"], ["doctor"], ["export", registered, out]):
        done = _run_restricted(home, cache, *command)
        assert done.returncode == 0, (command, done.stderr)
    assert json.loads(_run_restricted(home, cache, "list", "--json").stdout)[0]["id"] == registered
    config = json.loads((out / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_relative_to(cache)  # the snapshot could not go in the home
    assert (Path(config["base_model_name_or_path"]) / "config.json").is_file()
    # A write says why in one line.
    refused = _run_restricted(home, cache, "rm", registered)
    assert refused.returncode == 1
    assert refused.stderr.startswith("loragen: error: the registry database is read-only"), refused.stderr


@sqlite_only
def test_an_unwritable_export_target_is_named_not_its_temporary_sibling(capsys, registered, scratch):
    home_copy = scratch / "home"
    shutil.copytree(os.environ["LORAGEN_HOME"], home_copy, symlinks=True)
    locked = scratch / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    target = locked / "out"
    done = _run_restricted(home_copy, scratch, "export", registered, target)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"loragen: error: cannot write {target}: Permission denied"), done.stderr
    assert ".out-" not in done.stderr
