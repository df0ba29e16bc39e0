"""bench/bench_scan.py: its rows, and the one-line refusals of a scan or device it cannot time."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--d-model", "16", "--layers", "1", "--batch", "2", "--lengths", "8", "--chunk-sizes", "4", "--repeats", "1",
        "--threads", "1"]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "bench.bench_scan", *TINY, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def test_json_has_a_timed_row_for_every_scan_on_cpu():
    done = _run("--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["device"] == "cpu"
    assert [row["scan"] for row in payload["rows"]] == ["ref", "sequential", "chunked-4"]
    assert all(row["best_s"] > 0 and len(row["times_s"]) == 1 for row in payload["rows"])


def test_an_unknown_scan_is_refused_with_the_known_ones():
    done = _run("--scans", "sequential,fastest")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(
        "--scans: fastest not among ref, sequential, chunked-4")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_cuda_is_refused_where_torch_sees_none():
    done = _run("--device", "cuda")
    assert done.returncode == 2
    assert "--device cuda: torch sees no CUDA device here" in done.stderr
