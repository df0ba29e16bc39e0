"""gc's grace period, its temp-file rule, and a writer whose staged file gc removed (issue 10)."""

import fcntl
import os
import time

from tests.helpers import blob_files, run_cli

HOUR = 3600


def _orphan_blobs(capsys, tiny_adapter, home):
    """Ingest then rm an adapter: its two blob files stay on disk, unreferenced."""
    before = set(blob_files(home))
    adapter_id = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "echo", "--json").json()["id"]
    assert run_cli(capsys, "rm", adapter_id).code == 0
    orphans = sorted(set(blob_files(home)) - before)
    assert len(orphans) == 2
    return orphans


def _age(path, seconds):
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_fresh_unreferenced_blobs_survive_gc_and_old_ones_go(capsys, registered, tiny_adapter, isolated_home):
    orphans = _orphan_blobs(capsys, tiny_adapter, isolated_home)
    base_blobs = set(blob_files(isolated_home)) - set(orphans)
    gc = run_cli(capsys, "gc", "--json").json()  # the default grace: an hour
    assert gc["blobs_removed"] == 0 and gc["blobs_kept_in_grace"] == 2
    assert all(path.is_file() for path in orphans)
    _age(orphans[0], 2 * HOUR)
    gc = run_cli(capsys, "gc", "--json").json()
    assert (gc["blobs_removed"], gc["blobs_kept_in_grace"]) == (1, 1) and gc["bytes_freed"] > 0
    assert not orphans[0].exists() and orphans[1].is_file()
    gc = run_cli(capsys, "gc", "--grace", "0", "--json").json()
    assert gc["blobs_removed"] == 1 and set(blob_files(isolated_home)) == base_blobs  # referenced ones stay
    human = run_cli(capsys, "gc")
    assert human.code == 0 and "removed 0 blob(s)" in human.err


def test_the_grace_period_comes_from_the_settings(capsys, registered, tiny_adapter, isolated_home):
    orphans = _orphan_blobs(capsys, tiny_adapter, isolated_home)
    for path in orphans:
        _age(path, 120)
    (isolated_home / "loragen.toml").write_text("[registry]\ngc_grace_seconds = 300\n")
    assert run_cli(capsys, "gc", "--json").json()["blobs_removed"] == 0
    (isolated_home / "loragen.toml").write_text("[registry]\ngc_grace_seconds = 60\n")
    assert run_cli(capsys, "gc", "--json").json()["blobs_removed"] == 2
    (isolated_home / "loragen.toml").write_text("[registry]\ngc_grace_seconds = -1\n")
    refused = run_cli(capsys, "gc")
    assert refused.code == 1 and "gc_grace_seconds must be >= 0" in refused.err
    (isolated_home / "loragen.toml").unlink()
    assert run_cli(capsys, "gc", "--grace", "-1").code == 2


def test_storing_bytes_again_restarts_their_grace_period(tmp_path):
    from loragen.registry.blobs import BlobStore

    store = BlobStore(tmp_path / "blobs")
    source = tmp_path / "file"
    source.write_bytes(b"the same bytes")
    sha, _ = store.put_file(source)
    _age(store.path(sha), 2 * HOUR)
    assert store.put_file(source)[0] == sha
    assert store.modified_at(sha) > time.time() - 60


def test_gc_removes_abandoned_temp_files_but_never_a_live_writers(capsys, registered, isolated_home):
    tmp = isolated_home / "blobs" / "tmp"
    abandoned = tmp / "incoming-killed"  # a killed writer's: nobody holds its lock, however fresh
    abandoned.write_bytes(b"half a blob")
    live = tmp / "incoming-live"
    live.write_bytes(b"being written")
    _age(live, 2 * HOUR)  # even an old-looking one is spared while its writer holds the lock
    with open(live, "rb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)
        gc = run_cli(capsys, "gc", "--grace", "0", "--json").json()
        assert gc["temp_files_removed"] == 1
        assert live.is_file() and not abandoned.exists()
    gc = run_cli(capsys, "gc", "--grace", "0", "--json").json()  # the writer died without cleaning up
    assert gc["temp_files_removed"] == 1 and not live.exists()


def test_a_writer_whose_staged_files_gc_removed_stores_them_again(capsys, registered, tiny_adapter, isolated_home,
                                                                  monkeypatch):
    """The window the race test aims at, made certain: gc runs between a writer's copy and its transaction."""
    from loragen.config import load_settings
    from loragen.registry.store import Registry

    record = Registry._record_blob
    collected = []

    def gc_first(self, session, staged):
        if not collected:  # another process's gc, before this writer takes the store's lock
            other = Registry(load_settings().registry)
            collected.append(other.gc(grace_seconds=0))
            other.engine.dispose()
            assert not self.blobs.path(staged.sha256).exists()
        return record(self, session, staged)

    with monkeypatch.context() as patch:
        patch.setattr(Registry, "_record_blob", gc_first)
        result = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "echo", "--json")
    assert result.code == 0, result.err
    assert collected[0]["blobs_removed"] == 2  # both staged files were really gone
    assert run_cli(capsys, "doctor").code == 0
    assert run_cli(capsys, "export", result.json()["id"], isolated_home.parent / "out").code == 0


def test_a_source_that_changed_before_it_could_be_stored_again_is_refused(capsys, registered, tiny_adapter, tmp_path,
                                                                          isolated_home, monkeypatch):
    import shutil

    from loragen.config import load_settings
    from loragen.registry.store import Registry

    folder = shutil.copytree(tiny_adapter, tmp_path / "changing")
    record = Registry._record_blob

    def gc_and_change_first(self, session, staged):
        if staged.source.name == "adapter_model.safetensors":
            other = Registry(load_settings().registry)
            other.gc(grace_seconds=0)
            other.engine.dispose()
            staged.source.write_bytes(staged.source.read_bytes() + b" ")
        return record(self, session, staged)

    with monkeypatch.context() as patch:
        patch.setattr(Registry, "_record_blob", gc_and_change_first)
        result = run_cli(capsys, "ingest", folder, "--base", "tiny", "--task", "echo")
    assert result.code == 1 and "changed while it was being registered" in result.err
    assert run_cli(capsys, "list", "--json").json() == []


def test_a_writer_whose_fresh_temp_file_a_cleaner_removed_takes_another(tmp_path, monkeypatch):
    """A cleaner may find the temp file between mkstemp and the writer's flock; the write must still land."""
    from loragen.registry import blobs

    store = blobs.BlobStore(tmp_path / "blobs")
    source = tmp_path / "file"
    source.write_bytes(b"bytes to store")
    real_flock = blobs.fcntl.flock
    raced = []

    def cleaner_first(fd, operation):
        if not raced:  # the cleaner locks, unlinks and lets go before the writer's lock is taken
            raced.append(None)
            raced[0] = store.clean_tmp()
        return real_flock(fd, operation)

    with monkeypatch.context() as patch:
        patch.setattr(blobs.fcntl, "flock", cleaner_first)
        sha, size = store.put_file(source)
    assert raced == [1]
    assert store.verify(sha) == "ok" and size == len(b"bytes to store")
    assert store.temp_files() == []
