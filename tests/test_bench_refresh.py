"""bench/bench_refresh.py end to end on a tiny base with a four-version ladder of its own, then resumed."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from bench.bench_refresh import COLUMNS, _below_noise

ROOT = Path(__file__).resolve().parent.parent


def test_a_difference_counts_as_a_loss_only_beyond_two_standard_errors():
    assert not _below_noise(0.48, 0.50, 100)   # 2 points on 100 examples is noise
    assert _below_noise(0.30, 0.50, 100)
    assert not _below_noise(0.50, 0.30, 100)   # above is never a loss
    assert _below_noise(0.0, 1.0, 1)


def _run(args, cwd, home):
    """The benchmark in a process of its own, reading the generator settings of `home`'s loragen.toml."""
    done = subprocess.run([sys.executable, "-m", "bench.bench_refresh", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "LORAGEN_HOME": str(home)}, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_curve_budgets_read_shots_steps_and_an_optional_learning_rate():
    from bench.bench_refresh import parse_curve

    assert parse_curve("16x2, 64x20@0.004", 0.002) == [(16, 2, 0.002), (64, 20, 0.004)]
    for bad in ("16x", "16", "0x5", "16x5@0", "16x5@fast"):
        with pytest.raises(SystemExit, match="--curve"):
            parse_curve(bad, 0.002)


def test_adapter_cosines_read_the_factors_of_the_saved_file(tmp_path):
    import torch

    from bench.bench_refresh import _cosine, _flat_adapter, _flat_state
    from loragen.adapters import lora_config_dict, write_adapter_folder

    state = {"base_model.model.layers.0.q_proj.lora_A.weight": torch.randn(4, 8),
             "base_model.model.layers.0.q_proj.lora_B.weight": torch.randn(8, 4)}
    folder = write_adapter_folder(tmp_path / "a", state, lora_config_dict(4, 8, ["q_proj"]))
    read = _flat_adapter(folder)
    assert torch.equal(read, _flat_state(state)) and read.numel() == 64
    assert _cosine(read, read) == 1.0 and _cosine(read, -read) == -1.0
    other = {key: value.clone() for key, value in state.items()}
    other["base_model.model.layers.0.q_proj.lora_B.weight"] = torch.zeros(8, 4)  # only A left: cos = |A|^2/(|A||A,B|)
    a, b = state["base_model.model.layers.0.q_proj.lora_A.weight"], state["base_model.model.layers.0.q_proj.lora_B.weight"]
    expected = float(a.norm() / (a.norm() ** 2 + b.norm() ** 2) ** 0.5)
    assert _cosine(read, _flat_state(other)) == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_every_stage_on_a_tiny_ladder_then_a_resumed_run_changes_nothing(tmp_path, tiny_base):
    from loragen.config import RegistryConfig
    from loragen.registry.store import Registry
    from tests.helpers import TINY_GENERATOR
    from tests.tiny import make_tiny_llama

    home, work = tmp_path / "home", tmp_path / "work"
    registry = Registry(RegistryConfig(home=str(home)))
    registry.add_base("tiny", str(tiny_base))
    for version in (2, 3, 4):
        registry.update_base("tiny", str(make_tiny_llama(tmp_path / f"v{version}", seed=version)), f"v{version}")
    (home / "loragen.toml").write_text("[generator]\n" + "\n".join(
        f"{k} = {json.dumps(v)}" for k, v in TINY_GENERATOR.items()) + "\n")
    summary = tmp_path / "summary.json"
    args = ["--home", str(home), "--work", str(work), "--base", "tiny", "--train-versions", "1,2", "--near", "3",
            "--far", "4", "--tasks", "element_symbol,noun_singular", "--finetune-steps", "2", "--generator-steps", "4",
            "--samples", "2", "--select-limit", "2", "--limit", "3", "--threads", "1", "--summary", str(summary),
            "--shots", "3", "--adapt-steps", "2", "--ceiling-probe-steps", "1", "--curve", "3x1,4x2@0.004",
            "--fast-steps", "1"]
    _run(args, tmp_path, home)
    result = json.loads(summary.read_text())
    assert result["versions"] == 4 and result["train_versions"] == ["tiny@v1", "tiny@v2"]
    assert result["date"] == result["machine"]["date"] and "bench_refresh" in result["command"]
    recorded = json.loads((work / "scores.json").read_text())["rows"]
    for role, version in (("near", "tiny@v3"), ("far", "tiny@v4")):
        group = result[role]
        assert group["version"] == version
        assert all(0.0 <= group[column] <= 1.0 for column in COLUMNS)
        # The per-task rows are the scores the evaluation stage recorded, and the column means are their means.
        assert group["per_task"] == {task: {r["column"]: r["value"] for r in recorded
                                            if (r["version"], r["task"]) == (version, task)}
                                     for task in ("element_symbol", "noun_singular")}
        for column in COLUMNS:
            values = [row[column] for row in group["per_task"].values()]
            assert group[column] == pytest.approx(statistics.fmean(values), abs=1e-4), (role, column)
        assert set(group["winners"].values()) <= {"carried_over", "generated", "shifted"}  # the winning candidate
        assert set(group["adapted_winners"].values()) <= {"carried_over", "generated", "shifted", "adapted"}
        assert group["adapt_seconds"] > 0 and group["warm_finetune_seconds"] > 0 and group["short_finetune_seconds"] > 0
        assert group["adapt_request"] == {"shots": 3, "steps": 2, "learning_rate": 0.002}
        # the ceiling re-priced beside the adaptations: a timed step of its own config, times its steps
        assert group["finetune_seconds_at_adapt_load"] > 0
        assert group["refresh_seconds"] > 0 and group["finetune_seconds"] > 0
        difference = [group["per_task"][t]["regenerated"] - group["per_task"][t]["carried_over"]
                      for t in ("element_symbol", "noun_singular")]
        assert group["regenerated_minus_carried_over"] == pytest.approx(sum(difference) / 2, abs=1e-4)
        low, high = group["regenerated_minus_carried_over_ci95"]
        assert min(difference) - 1e-4 <= low <= high <= max(difference) + 1e-4
        assert all(-1.0 <= group["geometry"][key] <= 1.0 for key in group["geometry"] if key.endswith("finetuned"))
    geometry = json.loads((work / "geometry.json").read_text())
    assert geometry["reference"] == "tiny@v2" and set(geometry["tasks"]) == {"tiny@v3", "tiny@v4"}
    # Tiny versions of different seeds: every pair of base conditions differs.
    assert geometry["training_spread"] > 0
    assert all(set(d) == {"tiny@v1", "tiny@v2"} and min(d.values()) > 0
               for d in geometry["base_distance_to_training"].values())
    for version in ("tiny@v3", "tiny@v4"):
        assert set(geometry["tasks"][version]) == {"element_symbol", "noun_singular"}
        for row in geometry["tasks"][version].values():
            assert row["base_change_moves_output"] >= 0 and -1.0 <= row["regenerated_vs_carried_over"] <= 1.0
    # the goals, each read from the figures above (a tiny ladder meets or misses them by chance)
    goals = result["goals"]
    far = result["far"]
    assert goals["far_refresh_adapted_over_finetuned"]["value"] == (  # no ratio to a ceiling scoring 0
        pytest.approx(far["refresh_adapted"] / far["finetuned"], abs=1e-4) if far["finetuned"] else None)
    assert goals["far_refresh_adapted_at_least_warm_finetune"]["met"] == (
        far["refresh_adapted"] >= far["warm_finetune"])
    assert goals["validated_never_below_carried_over_beyond_noise"]["met"] == (
        not goals["validated_never_below_carried_over_beyond_noise"]["below"])
    # The far version's score-per-second curve: both budgets and the adapt stage's warm fine-tune, cheapest first,
    # each a mean over the tasks scored against the ceiling's mean.
    curve = far["curve"]
    assert [(p["shots"], p["steps"], p["learning_rate"], p["stage"])
            for p in sorted(curve, key=lambda p: (p["steps"], p["shots"]))
            ] == [(3, 1, 0.002, "curve"), (3, 2, 0.002, "adapt"), (4, 2, 0.004, "curve")]
    assert [p["seconds_over_finetune"] for p in curve] == sorted(p["seconds_over_finetune"] for p in curve)
    made = json.loads((work / "curve.json").read_text())
    assert set(made["ceiling_step_s"]) == {"element_symbol", "noun_singular"}
    for p in curve:
        rows = (made["points"][f"{p['shots']}x{p['steps']}@{p['learning_rate']:g}"]["tasks"] if p["stage"] == "curve"
                else {t: {"score": far["per_task"][t]["warm_finetune"]} for t in far["per_task"]})
        assert p["score"] == pytest.approx(statistics.fmean(r["score"] for r in rows.values()), abs=1e-4)
        assert p["over_finetuned"] == (pytest.approx(p["score"] / far["finetuned"], abs=1e-3) if far["finetuned"]
                                       else None)
        assert p["seconds"] > 0 and p["seconds_over_finetune"] > 0
    assert "warm_finetune_best_within_goal" in goals["far_refresh_adapted_seconds_over_finetune_seconds"]
    # The fast stage: refresh --adapt --no-refine-blend --select-by loss in a copy of its own, timed, its winners
    # scored as the refresh_fast column; its goal is read from that column and the ceiling priced at its load.
    fast = json.loads((work / "fast.json").read_text())
    fast_copy = Registry(RegistryConfig(home=str(work / "fast-home")))
    assert set(fast) == {"tiny@v3", "tiny@v4"}
    for made in fast.values():
        assert made["request"]["steps"] == 1 and made["request"]["refine_blend"] is False
        for row in made["tasks"].values():
            record = fast_copy.get_adapter(row["refresh_fast"])["provenance"]["refresh"]
            assert record["validation"]["by"] == "loss" and "blend_refinement" not in record
            assert {c["metric"] for c in record["candidates"]} == {"neg_validation_loss"}
    assert far["refresh_fast_seconds"] > 0 and far["finetune_seconds_at_fast_load"] > 0
    fast_goal = goals["far_refresh_fast_meets_score_and_seconds"]
    assert fast_goal["seconds_over_finetune_seconds"] == pytest.approx(
        far["refresh_fast_seconds"] / far["finetune_seconds_at_fast_load"], abs=1e-3)
    assert result["train_spread"] == geometry["training_spread"]
    assert result["far_distance"] == min(geometry["base_distance_to_training"]["tiny@v4"].values())
    # refresh --adapt ran in a copy of the registry: the validated refresh's registrations are untouched, and in the
    # copy each task on each unseen version is registered once, by the adapting refresh.
    adapted = json.loads((work / "adapted.json").read_text())
    copy = Registry(RegistryConfig(home=str(work / "adapt-home")))
    for version in ("tiny@v3", "tiny@v4"):
        in_copy = copy.list_adapters(base_ref=version)
        assert sorted(a["task"] for a in in_copy) == ["element_symbol", "noun_singular"]
        assert {a["id"] for a in in_copy} == {t["refresh_adapted"] for t in adapted[version]["tasks"].values()}
        assert all("refresh" in a["provenance"] and a["provenance"]["refresh"]["candidates"][-1]["kind"] == "adapted"
                   for a in in_copy)
    refreshed = json.loads((work / "refreshed.json").read_text())
    for made in (t for v in refreshed.values() for t in v["tasks"].values()):  # the original's: no adapted candidate
        candidates = registry.get_adapter(made["refresh_validated"])["provenance"]["refresh"]["candidates"]
        assert "adapted" not in {c["kind"] for c in candidates}
    # Both unseen versions refreshed from the last training version, never from each other.
    assert {t["from_base"] for v in refreshed.values() for t in v["tasks"].values()} == {"tiny@v2"}
    # The ceilings on unseen versions were never registered (refresh could otherwise carry them over).
    assert not [a for a in registry.list_adapters() if a["base"] in ("tiny@v3", "tiny@v4") and a["origin"] == "trained"]
    assert summary.with_suffix(".png").stat().st_size > 1000
    scores = (work / "scores.json").read_text()
    again = _run(args, tmp_path, home)
    assert "already trained" in again and "already done" in again
    assert (work / "scores.json").read_text() == scores

    # Two shards of the evaluation score every (version, task, column) once, with the same values.
    (work / "scores.json").rename(work / "scores-one-process.json")
    first = _run([*args, "--stages", "evaluate", "--shard", "1/2"], tmp_path, home)
    second = _run([*args, "--stages", "evaluate", "--shard", "2/2"], tmp_path, home)
    assert "on tiny@v3" in first and "on tiny@v4" in first and "on tiny@v3" in second  # 2 tasks x 2 versions, alternating

    def rows(path):
        return sorted((r["version"], r["task"], r["column"], r["value"]) for r in json.loads(path.read_text())["rows"])

    assert rows(work / "scores.json") == rows(work / "scores-one-process.json")
    bad = subprocess.run([sys.executable, "-m", "bench.bench_refresh", *args, "--shard", "3/2"], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1] == "--shard K/N needs 1 <= K <= N (got '3/2')"


@pytest.mark.slow
def test_finetune_runs_on_the_rungs_made_so_far_and_refresh_waits_for_the_whole_ladder(tmp_path, tiny_base):
    from loragen.config import RegistryConfig
    from loragen.registry.store import Registry
    from tests.tiny import make_tiny_llama

    home, work = tmp_path / "home", tmp_path / "work"
    registry = Registry(RegistryConfig(home=str(home)))
    registry.add_base("tiny", str(tiny_base))
    registry.update_base("tiny", str(make_tiny_llama(tmp_path / "v2", seed=2)), "v2")  # v3 and v4 not made yet
    args = ["--home", str(home), "--work", str(work), "--base", "tiny", "--train-versions", "1,2", "--near", "3",
            "--far", "4", "--tasks", "noun_singular", "--finetune-steps", "2", "--threads", "1"]
    out = _run(["--stages", "finetune", *args], tmp_path, home)
    assert "tiny@v3 is not on the ladder yet" in out and "tiny@v4 is not on the ladder yet" in out
    assert set(json.loads((work / "finetune.json").read_text())) == {"tiny@v1", "tiny@v2"}
    refused = subprocess.run([sys.executable, "-m", "bench.bench_refresh", "--stages", "refresh", *args], cwd=tmp_path,
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                                  "LORAGEN_HOME": str(home)}, timeout=300)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1] == (
        f"refresh: tiny@v3, tiny@v4 not registered in {home}: run `python -m bench.evolve_base --home {home}` first")
