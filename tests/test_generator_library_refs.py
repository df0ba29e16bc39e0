"""A generator's library is a registry fact (issue 20): stored in order with each adapter's weights digest,
refused when it names no adapter, kept by rm (unless --force, which says what breaks), kept by gc while
registered, checked by doctor, and refused in one line by generator_library when anything is off."""

import os

import pytest

from loragen.errors import LoragenError
from tests.helpers import one_line_error, registry_with_adapters, run_cli

TASKS = ["upper", "lower", "title", "spare"]


@pytest.fixture
def registry():
    """A Registry on the test's home, beside the CLI (as another process would be)."""
    from loragen.config import load_settings
    from loragen.registry.store import Registry

    opened = []

    def open_registry():
        opened.append(Registry(load_settings().registry))
        return opened[-1]

    yield open_registry
    for each in opened:
        each.engine.dispose()


@pytest.fixture
def adapters(capsys, tiny_base, tmp_path, isolated_home):
    """The tiny base and one tiny LoRA per task of TASKS; their ids in that order."""
    return registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, TASKS)


def _generator_files(folder, tag="a"):
    """Two small files standing for a checkpoint (the store does not read them)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights.safetensors").write_bytes(b"generator weights " + tag.encode())
    (folder / "meta.json").write_text('{"tag": "%s"}' % tag)
    return folder / "weights.safetensors", folder / "meta.json"


def _register(registry, tmp_path, library, tag="a"):
    weights, meta = _generator_files(tmp_path / f"gen-{tag}", tag)
    return registry.register_generator(weights, meta, step=10, seed=0, tasks=["upper", "lower", "title"],
                                       bases=["tiny@v1"], held_out=[], num_adapters=3, final_loss=0.5,
                                       library=library)


def _blob(home, sha):
    return home / "blobs" / "sha256" / sha[:2] / sha[2:]


def _library_generator(registry, tmp_path, ids):
    """A generator whose library is title, upper, lower (in that order, named by prefix, id and full uid)."""
    store = registry()
    full_lower = store.get_adapter(ids[1])["uid"]
    generator = _register(store, tmp_path, [ids[2][:6], ids[0], full_lower])
    assert generator.created
    return store, generator.id


def test_the_library_is_stored_in_order_and_listed(capsys, adapters, registry, tmp_path, isolated_home):
    from loragen.registry.blobs import file_sha256

    store, generator = _library_generator(registry, tmp_path, adapters)
    library = store.generator_library(generator)
    assert [entry["id"] for entry in library] == [adapters[2], adapters[0], adapters[1]]
    assert [entry["task"] for entry in library] == ["title", "upper", "lower"]
    for entry in library:
        view = store.get_adapter(entry["id"])
        assert set(entry) == {"uid", "id", "task", "base", "weights_sha256", "weights_path"}
        assert (entry["uid"], entry["base"], entry["weights_sha256"]) == (view["uid"], "tiny@v1", view["weights_sha256"])
        assert file_sha256(entry["weights_path"]) == entry["weights_sha256"]
    # Registering the same checkpoint with the same library again is a no-op; with another library it is refused.
    assert not _register(store, tmp_path, [adapters[2], adapters[0], adapters[1]]).created
    with pytest.raises(LoragenError, match="already registered with another library"):
        _register(store, tmp_path, [adapters[0]])

    listed = run_cli(capsys, "list", "generators", "--json").json()
    assert [(g["id"], g["library"]) for g in listed] == [(generator, [
        {"id": adapters[2], "task": "title"}, {"id": adapters[0], "task": "upper"},
        {"id": adapters[1], "task": "lower"}])]
    table = run_cli(capsys, "list", "generators")
    assert "LIBRARY" in table.out.splitlines()[0] and generator in table.out
    shown = run_cli(capsys, "show", generator, "--json").json()
    assert shown["library"] == listed[0]["library"]
    assert "3 adapter(s)" in run_cli(capsys, "show", generator[:6]).out


def test_a_generator_without_a_library_has_an_empty_one(capsys, adapters, registry, tmp_path):
    store = registry()
    generator = _register(store, tmp_path, []).id
    assert store.generator_library(generator) == []
    assert run_cli(capsys, "list", "generators", "--json").json()[0]["library"] == []
    assert "none (a raw-weights generator)" in run_cli(capsys, "show", generator).out


def test_a_library_naming_an_unregistered_adapter_registers_nothing(capsys, adapters, registry, tmp_path,
                                                                    isolated_home):
    from tests.helpers import blob_files

    store = registry()
    blobs_before = blob_files(isolated_home)
    with pytest.raises(LoragenError) as refused:
        _register(store, tmp_path, [adapters[0], "ffff0000"])
    message = str(refused.value)
    assert "\n" not in message and "'ffff0000'" in message and "library" in message
    with pytest.raises(LoragenError, match=f"names adapter {adapters[0]} twice"):
        _register(store, tmp_path, [adapters[0], adapters[1], adapters[0][:8]])
    assert store.list_generators() == []
    assert blob_files(isolated_home) == blobs_before  # refused before the checkpoint's files were copied


def test_rm_of_a_library_adapter_is_refused_and_force_says_what_breaks(capsys, adapters, registry, tmp_path,
                                                                       isolated_home):
    store, generator = _library_generator(registry, tmp_path, adapters)
    weights_blob = _blob(isolated_home, store.get_adapter(adapters[0])["weights_sha256"])

    refused = one_line_error(run_cli(capsys, "rm", adapters[3], adapters[0]))
    assert adapters[0] in refused and "(upper)" in refused and generator in refused and "--force" in refused
    assert [a["id"] for a in run_cli(capsys, "list", "--json").json()] == adapters  # all or none: the spare stays

    forced = run_cli(capsys, "rm", adapters[0], "--force")
    assert forced.code == 0 and forced.out.startswith(f"removed {adapters[0]}") and generator in forced.out
    as_json = run_cli(capsys, "rm", adapters[1], adapters[3], "--force", "--json").json()
    assert as_json == {"removed": [adapters[1], adapters[3]], "broken_generators": {adapters[1]: [generator]}}

    with pytest.raises(LoragenError) as broken:
        store.generator_library(generator)
    message = str(broken.value)
    assert "\n" not in message and generator in message and adapters[0] in message and "(upper on tiny@v1)" in message
    assert "no longer registered" in message and "1 more" in message  # lower is gone too

    # Nothing keeps a removed adapter's file: gc frees it, and the generator stays refused.
    assert run_cli(capsys, "gc", "--grace", "0").code == 0
    assert not weights_blob.exists()
    with pytest.raises(LoragenError, match=adapters[0]):
        store.generator_library(generator)

    # Registering the same adapters again (same files, task and base: the same uids) mends the generator.
    for index in (0, 1):
        again = run_cli(capsys, "ingest", tmp_path / f"l{index}", "--base", "tiny", "--task", TASKS[index], "--json")
        assert again.json()["id"] == adapters[index]
    assert [entry["id"] for entry in store.generator_library(generator)] == [adapters[2], adapters[0], adapters[1]]


def test_gc_keeps_library_adapters_blobs_while_they_are_registered(capsys, adapters, registry, tmp_path,
                                                                   isolated_home):
    store, generator = _library_generator(registry, tmp_path, adapters)
    library = store.generator_library(generator)
    spare = _blob(isolated_home, store.get_adapter(adapters[3])["weights_sha256"])
    assert run_cli(capsys, "rm", adapters[3]).code == 0  # an adapter outside the library: its weights go
    assert run_cli(capsys, "gc", "--grace", "0", "--json").json()["blobs_removed"] >= 1
    assert not spare.exists()
    assert all(_blob(isolated_home, entry["weights_sha256"]).is_file() for entry in library)
    assert store.generator_library(generator) == library


def test_changed_or_missing_weights_break_the_generator_and_doctor_says_so(capsys, adapters, registry, tmp_path,
                                                                          isolated_home):
    store, generator = _library_generator(registry, tmp_path, adapters)
    assert run_cli(capsys, "doctor", "--json").json()["broken_libraries"] == []
    upper = _blob(isolated_home, store.get_adapter(adapters[0])["weights_sha256"])
    os.chmod(upper, 0o644)
    data = bytearray(upper.read_bytes())
    data[-1] ^= 0xFF
    upper.write_bytes(bytes(data))

    with pytest.raises(LoragenError) as broken:
        store.generator_library(generator)
    message = str(broken.value)
    assert "\n" not in message and generator in message and adapters[0] in message and "upper" in message
    assert "differ from the ones it was trained on" in message

    report = run_cli(capsys, "doctor", "--json")
    assert report.code == 1
    body = report.json()
    assert body["ok"] is False
    assert [(e["generator"], e["id"], e["task"], e["problem"]) for e in body["broken_libraries"]] == [
        (generator, adapters[0], "upper", "changed")]
    assert [p["problem"] for p in body["problems"]] == ["damaged"]  # the blob itself, as before

    _blob(isolated_home, store.get_adapter(adapters[1])["weights_sha256"]).unlink()
    human = run_cli(capsys, "doctor")
    assert human.code == 1
    lines = [line for line in human.out.splitlines() if f"generator {generator}" in line]
    assert [line.split()[0] for line in lines] == ["changed", "missing"]
    assert adapters[0] in lines[0] and adapters[1] in lines[1] and "(lower on tiny@v1)" in lines[1]
    assert "1 generator(s) with a broken library" in " ".join(human.err.split())
    with pytest.raises(LoragenError, match="1 more of its library adapters"):
        store.generator_library(generator)


def test_doctor_reports_a_force_removed_library_adapter(capsys, adapters, registry, tmp_path):
    _, generator = _library_generator(registry, tmp_path, adapters)
    assert run_cli(capsys, "rm", adapters[2], "--force").code == 0
    body = run_cli(capsys, "doctor", "--json").json()
    assert body["ok"] is False and body["problems"] == []
    [entry] = body["broken_libraries"]
    assert (entry["generator"], entry["id"], entry["position"], entry["problem"]) == (generator, adapters[2], 0,
                                                                                      "removed")


def test_a_generator_registered_before_libraries_upgrades_to_an_empty_one(capsys, registry, isolated_home):
    from sqlalchemy import text

    from loragen.config import load_settings
    from loragen.registry import db

    isolated_home.mkdir(parents=True)
    engine = db.make_engine(load_settings().registry.database_url)  # SQLite, or the PostgreSQL test database
    db.upgrade(engine, "0003")
    sha = "ab" * 32
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO blobs (sha256, size, media_type, created_at) "
                                "VALUES (:sha, 1, 'application/json', '2026-01-01')"), {"sha": sha})
        connection.execute(text(
            "INSERT INTO generator_checkpoints (uid, weights_sha256, meta_sha256, step, seed, tasks, bases, held_out, "
            "num_adapters, final_loss, created_at) VALUES (:sha, :sha, :sha, 5, 0, '[\"t\"]', '[\"tiny@v1\"]', '[]', "
            "1, 0.25, '2026-01-01')"), {"sha": sha})
    engine.dispose()
    store = registry()  # upgrades the schema to head
    assert db.current_revision(store.engine) == db.head_revision()
    [old] = store.list_generators()
    assert (old["id"], old["step"], old["library"]) == (sha[:12], 5, [])
    assert store.generator_library(sha[:8]) == []
    assert run_cli(capsys, "rm", "ffff0000").code == 1  # rm still resolves (and refuses) as before
