"""Fault injection: kill -9 mid-ingest and mid-training, and a full disk mid-write, lose nothing."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import blob_files, registry_with_adapters, run_cli
from tests.tiny import make_lora


def _env(home):
    return dict(os.environ, LORAGEN_HOME=str(home), OMP_NUM_THREADS="1")


def _killed_after(home, seconds, *args) -> bool:
    """Run `loragen ARGS`, SIGKILL it after `seconds` if it is still running; True when it was killed."""
    proc = subprocess.Popen([sys.executable, "-m", "loragen", *map(str, args)], env=_env(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


def _registry_is_consistent(capsys, home):
    """Every registered adapter's blobs exist and hash to their names; gc leaves no temporary file."""
    from loragen.registry.blobs import file_sha256

    for adapter in run_cli(capsys, "list", "--json").json():
        weights = home / "blobs" / "sha256" / adapter["weights_sha256"][:2] / adapter["weights_sha256"][2:]
        assert weights.is_file() and file_sha256(weights) == adapter["weights_sha256"]
    run_cli(capsys, "gc")
    assert not any((home / "blobs" / "tmp").glob("*"))


@pytest.mark.slow
def test_kill_9_during_ingest_leaves_all_or_nothing(capsys, tiny_base, tmp_path, isolated_home):
    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0
    rng = random.Random(0)
    killed = 0
    for trial in range(8):
        folder = make_lora(tiny_base, tmp_path / f"k{trial}", seed=200 + trial)
        killed += _killed_after(isolated_home, rng.uniform(0.5, 3.0), "ingest", folder, "--base", "tiny",
                                "--task", "killed")
        _registry_is_consistent(capsys, isolated_home)
    assert killed > 0  # at least some runs were really cut short
    # Whatever survived is complete; re-ingesting everything afterwards registers each exactly once.
    for trial in range(8):
        assert run_cli(capsys, "ingest", tmp_path / f"k{trial}", "--base", "tiny", "--task", "killed").code == 0
    assert len(run_cli(capsys, "list", "--json").json()) == 8


@pytest.mark.slow
def test_kill_9_during_generator_training_resumes(capsys, tiny_base, tmp_path, isolated_home):
    registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, ["t0", "t1"], steps=400, checkpoint_every=5)
    proc = subprocess.Popen([sys.executable, "-m", "loragen", "train", "--json"], env=_env(isolated_home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    states = []
    while time.time() < deadline and not states:
        states = list((isolated_home / "runs").glob("generator-*/state.pt"))
        time.sleep(0.2)
    assert states, "training never wrote a resumable state"
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_cli(capsys, "list", "generators", "--json").json() == []  # nothing half-registered
    resumed = subprocess.run([sys.executable, "-m", "loragen", "train", "--json"], env=_env(isolated_home),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from_step"] >= 5 and summary["steps"] == 400


@pytest.mark.slow
def test_kill_9_during_generate_leaves_all_or_nothing(capsys, tiny_base, tmp_path, isolated_home):
    registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, ["t0", "t1"], steps=4, sample_steps=200)
    assert run_cli(capsys, "train").code == 0
    rng = random.Random(1)
    killed = 0
    for seed in range(6):
        killed += _killed_after(isolated_home, rng.uniform(1.0, 6.0), "generate", "--task", "say hello",
                                "--base", "tiny", "--seed", seed)
        _registry_is_consistent(capsys, isolated_home)
    assert killed > 0
    for seed in range(6):  # every seed can still be generated, once
        assert run_cli(capsys, "generate", "--task", "say hello", "--base", "tiny", "--seed", str(seed)).code == 0
    assert len(run_cli(capsys, "list", "--origin", "generated", "--json").json()) == 6


def test_disk_full_mid_write_is_reported_and_leaves_the_store_clean(capsys, tiny_base, tiny_adapter, isolated_home,
                                                                    monkeypatch):
    from loragen.registry import blobs

    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0
    before = blob_files(isolated_home)
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(blobs.os, "fsync", full_disk)
        result = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "full")
    assert os.fsync is real_fsync
    assert result.code == 1 and "No space left on device" in result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert run_cli(capsys, "list", "--json").json() == []
    assert blob_files(isolated_home) == before
    assert not any((isolated_home / "blobs" / "tmp").glob("*"))
    assert run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "full").code == 0  # space is back
