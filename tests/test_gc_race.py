"""`loragen gc` in a loop beside writers in other processes loses nothing (issue 10).

Real processes on one registry (SQLite, or PostgreSQL with LORAGEN_TEST_POSTGRES_URL): one runs
`gc --grace 0` (the worst case: nothing is young enough to be spared) as fast as it can, the
others ingest, add and update bases, or generate; the adapter writers remove some of what they
registered then register the same bytes again, so that gc finds orphans, and a writer's dedup'd
bytes sit on disk as an orphan while gc runs; they remove a few others for good. Afterwards every row's
blob must exist and hash to its name, no writer may have failed, and gc must have deleted for real: every
orphan is gone from disk.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import blob_files, registry_with_adapters, run_cli
from tests.tiny import make_lora

GC_ARGS = ["--grace", "0"]

# Runs `loragen` in-process, again and again, as a script would; one JSON summary on stdout at the end.
WORKER = r'''
import contextlib, io, json, sys
from pathlib import Path
from loragen.cli import main

def loragen(*args):
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0
    return code, out.getvalue()

mode, spec = sys.argv[1], json.loads(sys.argv[2])
summary = {"failed": [], "kept": [], "removed": [], "runs": 0, "blobs_removed": 0}
if mode == "gc":
    started, stop = Path(spec["started"]), Path(spec["stop"])
    while True:
        last = stop.exists()  # one more run once the writers are done: what they orphaned last goes too
        code, out = loragen("gc", *spec["args"], "--json")
        if code:
            summary["failed"].append("gc")
        else:
            summary["blobs_removed"] += json.loads(out)["blobs_removed"]
        summary["runs"] += 1
        started.touch()
        if last:
            break
else:
    for step in spec["steps"]:
        code, out = loragen(*step["args"], "--json")
        if code:
            summary["failed"].append(" ".join(step["args"]))
            continue
        answer = json.loads(out)
        registered = answer.get("id") or answer["name"]  # an adapter's id, or a base version's name
        if step.get("rm") or step.get("rm_then_again"):  # leaves its blobs as orphans
            code, _ = loragen("rm", registered)
            if code:
                summary["failed"].append(f"rm {registered}")
                continue
        if step.get("rm"):  # for good
            summary["removed"].append(registered)
            continue
        if step.get("rm_then_again"):  # registers the same bytes again
            code, out = loragen(*step["args"], "--json")
            if code:
                summary["failed"].append(" ".join(step["args"]) + " (again)")
                continue
            assert json.loads(out)["id"] == registered
        summary["kept"].append(registered)
print(json.dumps(summary))
'''


def _start(home, mode, spec):
    env = dict(os.environ, LORAGEN_HOME=str(home), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", WORKER, mode, json.dumps(spec)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def _with_gc_looping(home, tmp_path, writer_specs):
    """Run writers beside a gc loop that started first; return (gc summary, writer summaries)."""
    started, stop = tmp_path / "gc-started", tmp_path / "gc-stop"
    gc = _start(home, "gc", {"started": str(started), "stop": str(stop), "args": GC_ARGS})
    deadline = time.time() + 120
    while not started.exists():
        assert gc.poll() is None and time.time() < deadline, gc.stderr.read() if gc.poll() is not None else "slow gc"
        time.sleep(0.05)
    writers = [_start(home, "write", spec) for spec in writer_specs]
    try:
        results = [_finish(proc) for proc in writers]
    finally:
        stop.touch()
    gc_summary, _ = _finish(gc)
    return gc_summary, [summary for summary, _ in results], [err for _, err in results]


def _blob_references(home: Path) -> list[tuple[str, str]]:
    """(what, sha256) for every row that names a blob."""
    from sqlalchemy import select

    from loragen.config import load_settings
    from loragen.registry.models import Adapter, BaseVersionFile, GeneratorCheckpointRow
    from loragen.registry.store import Registry

    registry = Registry(load_settings(home=str(home)).registry)
    try:
        with registry.session() as s:
            named = [(f"adapter {uid[:12]} {role}", sha) for uid, weights, config in
                     s.execute(select(Adapter.uid, Adapter.weights_sha256, Adapter.config_sha256))
                     for role, sha in (("weights", weights), ("config", config))]
            named += [(f"base version {vid} {path}", sha) for vid, path, sha in
                      s.execute(select(BaseVersionFile.version_id, BaseVersionFile.path, BaseVersionFile.blob_sha256))]
            named += [(f"generator {uid[:12]} {role}", sha) for uid, weights, meta in
                      s.execute(select(GeneratorCheckpointRow.uid, GeneratorCheckpointRow.weights_sha256,
                                       GeneratorCheckpointRow.meta_sha256))
                      for role, sha in (("weights", weights), ("meta", meta))]
    finally:
        registry.engine.dispose()
    return named


def damaged_blob_references(home: Path) -> list[str]:
    """Every row that names a blob, whose file is missing or does not hash to its name."""
    from loragen.registry.blobs import file_sha256

    damaged = []
    for label, sha in _blob_references(home):
        path = home / "blobs" / "sha256" / sha[:2] / sha[2:]
        if not path.is_file():
            damaged.append(f"{label}: missing")
        elif file_sha256(path) != sha:
            damaged.append(f"{label}: damaged")
    return damaged


def orphaned_blob_files(home: Path) -> list[Path]:
    """Blob files on disk that no row names: what gc --grace 0 has to delete."""
    referenced = {sha for _, sha in _blob_references(home)}
    return [path for path in blob_files(home) if path.parent.name + path.name not in referenced]


def _report(capsys, what, gc_summary, writers, lost, registered):
    failed = [f for w in writers for f in w["failed"]]
    line = (f"{what}: gc runs {gc_summary['runs']}, blobs gc removed {gc_summary['blobs_removed']}, "
            f"registered {registered}, lost {len(lost)}, failed writers {len(failed)}")
    with capsys.disabled():  # the counts BENCHMARKS.md reports, visible with -s
        print(line)
    return line, failed


@pytest.mark.slow
def test_gc_in_a_loop_beside_two_ingesting_processes_and_a_base_writer_loses_nothing(capsys, tiny_base, tmp_path,
                                                                                     isolated_home):
    from tests.tiny import make_tiny_llama

    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0
    per_process = 15
    common = make_lora(tiny_base, tmp_path / "common", seed=999, r=2)  # both processes ingest these bytes
    specs = []
    for p in range(2):
        steps = []
        for i in range(per_process - 1):
            folder = make_lora(tiny_base, tmp_path / f"p{p}-{i}", seed=100 * p + i, r=2)
            steps.append({"args": ["ingest", str(folder), "--base", "tiny@v1", "--task", f"task-{i % 4}"],
                          "rm_then_again": i % 3 == 0})
        steps.insert(per_process // 2, {"args": ["ingest", str(common), "--base", "tiny@v1", "--task", "common"]})
        for i in (1, 5):  # removed for good: their weights must be deleted
            folder = make_lora(tiny_base, tmp_path / f"p{p}-gone-{i}", seed=1000 + 100 * p + i, r=2)
            steps.insert(i, {"args": ["ingest", str(folder), "--base", "tiny@v1", "--task", "gone"], "rm": True})
        specs.append({"steps": steps})
    # Evolved versions of tiny and a second base, whose tokenizer files are the same bytes as tiny's.
    evolved = [make_tiny_llama(tmp_path / f"tiny-v{v}", seed=v) for v in (2, 3, 4, 5)]
    specs.append({"steps": [{"args": ["base", "update", "tiny", "--from", str(evolved[0])]},
                            {"args": ["base", "add", "other", "--from", str(evolved[1])]},
                            {"args": ["base", "update", "tiny", "--from", str(evolved[2])]},
                            {"args": ["base", "update", "other", "--from", str(evolved[3])]}]})

    gc_summary, writers, errors = _with_gc_looping(isolated_home, tmp_path, specs)

    lost = damaged_blob_references(isolated_home)
    registered = {a["id"] for a in run_cli(capsys, "list", "--json").json()}
    versions = {b["name"] for b in run_cli(capsys, "list", "bases", "--json").json()}
    line, failed = _report(capsys, "2 ingesters x 15 and 4 base add/update beside gc --grace 0", gc_summary, writers, lost,
                           len(registered) + len(versions))
    assert gc_summary["runs"] > 1 and not gc_summary["failed"], line
    assert (lost, failed) == ([], []), f"{line}\n{lost}\n{errors}"
    assert registered == {i for w in writers[:2] for i in w["kept"]} and len(registered) == 2 * per_process - 1, line
    # gc deleted for real: at least the four removed adapters' weights, and no orphan is left on disk.
    assert len([i for w in writers for i in w["removed"]]) == 4 and gc_summary["blobs_removed"] >= 4, line
    assert orphaned_blob_files(isolated_home) == [], line
    assert versions == {"tiny@v1", "tiny@v2", "tiny@v3", "other@v1", "other@v2"}, line
    assert run_cli(capsys, "doctor").code == 0


@pytest.mark.slow
def test_gc_in_a_loop_beside_generate_loses_nothing(capsys, tiny_base, tmp_path, isolated_home):
    registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, ["upper", "lower"], steps=8)
    assert run_cli(capsys, "train", "--json").code == 0
    seeds = range(6)
    steps = [{"args": ["generate", "--task", "Turn every word into capitals", "--base", "tiny", "--seed", str(seed)],
              "rm_then_again": seed % 2 == 0} for seed in seeds]
    steps.insert(1, {"args": ["generate", "--task", "Turn every word into capitals", "--base", "tiny", "--seed", "99"],
                     "rm": True})  # removed for good: its weights must be deleted

    gc_summary, writers, errors = _with_gc_looping(isolated_home, tmp_path, [{"steps": steps}])

    lost = damaged_blob_references(isolated_home)
    generated = {a["id"] for a in run_cli(capsys, "list", "--origin", "generated", "--json").json()}
    line, failed = _report(capsys, "generate x 6 beside gc --grace 0", gc_summary, writers, lost, len(generated))
    assert gc_summary["runs"] > 1 and not gc_summary["failed"], line
    assert (lost, failed) == ([], []), f"{line}\n{lost}\n{errors}"
    assert generated == set(writers[0]["kept"]) and len(generated) == len(seeds), line
    assert len(writers[0]["removed"]) == 1 and gc_summary["blobs_removed"] >= 1, line
    assert orphaned_blob_files(isolated_home) == [], line
    assert run_cli(capsys, "doctor").code == 0
