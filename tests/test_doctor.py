"""`loragen doctor`: re-hash every referenced blob, name the rows whose files are missing or damaged."""

import os

import pytest

from tests.helpers import run_cli


@pytest.fixture
def store(capsys, tiny_base, tiny_adapter, isolated_home):
    """The tiny base and one adapter; returns the adapter's view."""
    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0
    adapter_id = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "echo", "--json").json()["id"]
    return run_cli(capsys, "show", adapter_id, "--json").json()


def _blob(home, sha):
    return home / "blobs" / "sha256" / sha[:2] / sha[2:]


def _base_blobs(capsys, home):
    from loragen.config import load_settings
    from loragen.registry.store import Registry
    from loragen.registry.upkeep import blob_references

    registry = Registry(load_settings().registry)
    try:
        with registry.session() as s:
            return {sha: refs for sha, refs in blob_references(s).items() if refs[0]["kind"] == "base"}
    finally:
        registry.engine.dispose()


def test_a_whole_store_passes(capsys, store, isolated_home):
    report = run_cli(capsys, "doctor", "--json")
    assert report.code == 0
    body = report.json()
    base_files = len(_base_blobs(capsys, isolated_home))
    assert set(body) == {"ok", "blobs_checked", "bytes_checked", "problems", "broken_libraries", "unreferenced_blobs",
                         "temp_files"}
    assert body["ok"] is True and body["problems"] == [] and body["blobs_checked"] == base_files + 2
    assert body["bytes_checked"] == sum(p.stat().st_size for p in (isolated_home / "blobs" / "sha256").rglob("*")
                                        if p.is_file())
    human = run_cli(capsys, "doctor")
    assert human.code == 0 and human.out == "" and "all present and whole" in " ".join(human.err.split())


def test_a_flipped_byte_is_reported_as_damaged(capsys, store, isolated_home):
    weights = _blob(isolated_home, store["weights_sha256"])
    os.chmod(weights, 0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    report = run_cli(capsys, "doctor", "--json")
    assert report.code == 1
    body = report.json()
    assert body["ok"] is False
    assert body["problems"] == [{"sha256": store["weights_sha256"], "problem": "damaged", "referenced_by": [
        {"kind": "adapter", "id": store["id"], "file": "adapter_model.safetensors"}]}]
    human = run_cli(capsys, "doctor")
    assert human.code == 1 and "1 missing or damaged" in " ".join(human.err.split())
    assert human.out.split() == ["damaged", store["weights_sha256"][:12], "adapter", store["id"],
                                 "adapter_model.safetensors"]


def test_a_deleted_base_blob_is_reported_missing(capsys, store, isolated_home):
    sha, refs = next(iter(_base_blobs(capsys, isolated_home).items()))
    _blob(isolated_home, sha).unlink()
    body = run_cli(capsys, "doctor", "--json").json()
    assert body["ok"] is False
    assert body["problems"] == [{"sha256": sha, "problem": "missing", "referenced_by": refs}]
    assert refs[0]["id"] == "tiny@v1"
    assert run_cli(capsys, "doctor").code == 1


def test_unreferenced_blobs_and_temp_files_are_counted_not_failed(capsys, store, isolated_home):
    assert run_cli(capsys, "rm", store["id"]).code == 0
    (isolated_home / "blobs" / "tmp" / "incoming-leftover").write_bytes(b"x")
    report = run_cli(capsys, "doctor", "--json")
    assert report.code == 0
    body = report.json()
    assert (body["unreferenced_blobs"], body["temp_files"]) == (2, 1)
    assert "2 unreferenced blob(s) (gc removes them)" in " ".join(run_cli(capsys, "doctor").err.split())
