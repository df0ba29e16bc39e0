"""bench/bench_task_loss_cost.py's measurement on the tiny task set, and its refusals."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_step_is_split_into_the_generators_x0_and_the_base_passes(tmp_path, tiny_base):
    from bench.bench_task_loss_cost import measure
    from loragen.config import GeneratorSettings
    from loragen.generator import task_loss
    from tests.helpers import TINY_GENERATOR
    from tests.test_task_loss import tiny_task_set

    data = tiny_task_set(tiny_base, tmp_path)
    settings = GeneratorSettings(**dict(TINY_GENERATOR, task_loss_weight=1.0, task_descriptions_per_step=2,
                                        task_examples_per_step=3))
    original = task_loss.predicted_tokens
    result = measure(data, settings, batch_size=2, repeats=2)
    assert task_loss.predicted_tokens is original  # the timing wrapper is taken off again
    assert result["rows"] == 4 and result["examples_per_row"] == 3 and len(result["runs"]) == 2
    assert result["step_s"] > 0 and 0 < result["generator_share"] <= 1
    # The split, recomputed from the runs it reports: the fastest run's step, its x0 alone, the base passes the rest.
    best = min(result["runs"], key=lambda run: run["forward_s"] + run["backward_s"])
    step = best["forward_s"] + best["backward_s"]
    generator = best["x0_alone_forward_s"] + best["x0_alone_backward_s"]
    assert result["step_s"] == round(step, 2) and result["generator_x0_s"] == round(generator, 2)
    assert result["base_passes_s"] == round(max(0.0, step - generator), 2)
    assert result["generator_share"] == round(min(1.0, generator / step), 3)
    # The timing wrapper saw the step's own x0, which is part of its forward pass.
    assert all(0 < run["forward_x0_s"] <= run["forward_s"] for run in result["runs"])


def test_a_missing_record_or_a_generator_without_the_task_loss_is_refused(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "bench.bench_task_loss_cost", *args], cwd=tmp_path,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)

    missing = run("--generators", str(tmp_path / "none.json"))
    assert missing.returncode == 2 and "does not exist: run `python -m bench.bench_generalization` first" in missing.stderr
    record = tmp_path / "generators.json"
    record.write_text('{"generated_diffusion": {"settings": {"task_loss_weight": 0.0}}}')
    assert "not in" in run("--generators", str(record)).stderr
    refused = run("--generators", str(record), "--column", "generated_diffusion")
    assert refused.returncode == 2 and "trained without the task loss" in refused.stderr
