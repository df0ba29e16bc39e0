"""bench/bench_architectures.py end to end on two tiny bases of other shapes (a Llama and a Gemma 3): each base's
bench_generalization run, then the joint generator, its adapters, their scores and the summary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(module, args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_the_joint_generator_serves_both_tiny_bases_and_the_summary_pairs_it_with_each_base_own(
        tmp_path, tiny_base):
    from loragen.config import RegistryConfig
    from loragen.registry.store import Registry
    from tests.tiny import make_tiny_gemma3

    home = tmp_path / "home"
    registry = Registry(RegistryConfig(home=str(home)))
    registry.add_base("tiny", str(tiny_base))
    registry.add_base("tg", str(make_tiny_gemma3(tmp_path / "tg")))
    runs = {}
    for base in ("tiny", "tg"):
        work = tmp_path / base
        options = (f"--base {base} --home {home} --work {work} --corpus-out {work}/corpus.json "
                   f"--corpus-runs {work}/runs --ft-steps 2 --val-limit 3 --multitask-steps 2 --gen-steps 4 "
                   "--gen-batch 2 --refine-steps 2 --task-loss-every 2 --task-examples 2 --limit 3 "
                   "--training-limit 3 --held-out-limit 1 --seen-limit 1 --keep-unlearnable --generators generated "
                   f"--columns zero_shot,finetuned,multitask,mean_adapter,generated,refined --summary {work}/summary.json")
        _run("bench.bench_generalization", [*options.split(), "--threads", "1"], tmp_path)
        runs[base] = options
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    summary_path = tmp_path / "architectures.json"
    args = ["--home", str(home), "--work", str(tmp_path / "arch"), "--base-runs", str(tmp_path / "runs.json"),
            "--limit", "3", "--threads", "1", "--summary", str(summary_path)]
    _run("bench.bench_architectures", args, tmp_path)

    joint = json.loads((tmp_path / "arch" / "joint.json").read_text())
    assert sorted(f["bases"][0] for f in joint["families"]) == ["tg@v1", "tiny@v1"]
    summary = json.loads(summary_path.read_text())
    assert summary["date"] and summary["machine"] and summary["command"]
    for base in ("tiny", "tg"):
        result = summary["bases"][base]
        own = json.loads((tmp_path / base / "summary.json").read_text())["per_task"]
        for task, row in result["per_task"].items():
            assert row["generated_per_base"] == own[task]["generated"]  # each base's own generator, from its run
            assert 0.0 <= row["generated_joint"] <= 1.0
        assert result["held_out"]["tasks"] == result["seen"]["tasks"] == 1
        assert result["seen"]["generated_joint"] is not None and result["held_out"]["multitask"] is not None
    # The ablation: the second base's tasks (held-out and seen) generated under the first base's condition, scored.
    assert all("generated_joint_wrong_base" in row for row in summary["bases"]["tg"]["per_task"].values())
    assert not any("generated_joint_wrong_base" in row for row in summary["bases"]["tiny"]["per_task"].values())
    assert summary["bases"]["tg"]["seen"]["generated_joint_wrong_base_minus_generated_joint"] is not None
    assert summary_path.with_suffix(".png").stat().st_size > 1000
    # Resumed: nothing is trained, made or scored again.
    scores = (tmp_path / "arch" / "scores.json").read_text()
    again = _run("bench.bench_architectures", args, tmp_path)
    assert "joint: already trained" in again and (tmp_path / "arch" / "scores.json").read_text() == scores
