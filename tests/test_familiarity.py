"""How far a description is from the generator's training tasks: the nearest tasks, the threshold, and what
`generate` tells the user, keeps in provenance and prints with --json (issue 20, item 5)."""

import pytest
import torch

from loragen.config import FAMILIARITY_THRESHOLD
from loragen.generator.familiarity import Familiarity, NearTask, familiarity, task_similarities
from tests.helpers import registry_with_adapters, run_cli


def _unit(*values: float) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(values, dtype=torch.float32), dim=0)


KNOWN = {
    "east": torch.stack([_unit(1, 0, 0), _unit(0, 0, 1)]),   # two descriptions: the nearer one counts
    "north": torch.stack([_unit(0, 1, 0)]),
    "northeast": torch.stack([_unit(1, 1, 0)]),
    "west": torch.stack([_unit(-1, 0, 0)]),
}


def test_a_task_is_as_near_as_its_nearest_description():
    similarities = task_similarities(_unit(1, 0, 0), KNOWN)
    assert similarities["east"] == pytest.approx(1.0)     # its first description, not the orthogonal second
    assert similarities["north"] == pytest.approx(0.0, abs=1e-6)
    assert similarities["northeast"] == pytest.approx(2 ** -0.5)
    assert similarities["west"] == pytest.approx(-1.0)
    # Cosine, so the lengths of the vectors do not matter.
    assert task_similarities(torch.tensor([3.0, 0, 0]), {"east": KNOWN["east"] * 5})["east"] == pytest.approx(1.0)


def test_the_nearest_tasks_come_best_first_and_only_k_of_them():
    found = familiarity(_unit(2, 1, 0), KNOWN, threshold=0.5)
    assert [near.task for near in found.nearest] == ["northeast", "east", "north"]
    assert found.nearest[0].similarity == pytest.approx(0.9487, abs=1e-4)
    assert found.best == found.nearest[0].similarity and found.familiar
    assert [near.task for near in familiarity(_unit(2, 1, 0), KNOWN, threshold=0.5, k=1).nearest] == ["northeast"]
    assert len(familiarity(_unit(2, 1, 0), KNOWN, threshold=0.5, k=10).nearest) == len(KNOWN)


def test_equally_near_tasks_are_ranked_by_name_whatever_the_order_given():
    twins = {"b": torch.stack([_unit(1, 0)]), "a": torch.stack([_unit(1, 0)]), "c": torch.stack([_unit(0, 1)])}
    assert [near.task for near in familiarity(_unit(1, 0), twins, threshold=0.0).nearest] == ["a", "b", "c"]


def test_familiar_means_the_best_task_reaches_the_threshold():
    condition = _unit(1, 1, 0)  # 0.7071 from east, 1.0 from northeast
    assert familiarity(condition, {"east": KNOWN["east"]}, threshold=0.7071).familiar  # equal is familiar
    assert not familiarity(condition, {"east": KNOWN["east"]}, threshold=0.7072).familiar
    assert familiarity(condition, KNOWN, threshold=0.99).familiar  # one near task is enough


def test_the_record_is_what_provenance_and_json_keep():
    found = Familiarity(nearest=(NearTask("a", 0.8), NearTask("b", 0.25)), threshold=0.43)
    assert found.record() == {"nearest_tasks": [{"task": "a", "similarity": 0.8}, {"task": "b", "similarity": 0.25}],
                              "familiar": True, "threshold": 0.43}
    # Similarities are kept to 4 places, and judged as kept: the record never shows a best equal to the
    # threshold with familiar false.
    record = familiarity(torch.tensor([0.42999, (1 - 0.42999**2) ** 0.5]), {"a": _unit(1, 0)[None]}, 0.43).record()
    assert record["nearest_tasks"] == [{"task": "a", "similarity": 0.43}] and record["familiar"]


def test_nothing_to_compare_with_is_a_programming_error():
    with pytest.raises(ValueError, match="no known tasks"):
        familiarity(_unit(1, 0), {}, threshold=0.5)
    with pytest.raises(ValueError, match="no description embeddings"):
        familiarity(_unit(1, 0), {"a": torch.zeros(0, 2)}, threshold=0.5)
    with pytest.raises(ValueError, match="k must be"):
        familiarity(_unit(1, 0), {"a": _unit(1, 0)[None]}, threshold=0.5, k=0)


def test_the_threshold_is_the_measured_one():
    import json
    from pathlib import Path

    measured = json.loads((Path(__file__).resolve().parent.parent / "bench/results/familiarity.json").read_text())
    assert FAMILIARITY_THRESHOLD == measured["threshold"]
    # What it was chosen for: real held-out descriptions rarely warn, nonsense mostly does.
    summary = measured["summary"]
    assert summary["held_out_descriptions"]["warn_rate"] <= 0.1 and summary["held_out_tasks"]["warn_rate"] <= 0.1
    assert summary["nonsense"]["warn_rate"] >= 0.9


NONSENSE = "asdf qwerty zxcv"
WARNING = "warning: the description is far from every task the generator was trained on"


def test_generate_warns_on_a_nonsense_description_and_not_on_a_seen_one(capsys, tiny_base, tmp_path, isolated_home):
    registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, ["upper", "lower"], steps=2, sample_steps=2)
    assert run_cli(capsys, "train").code == 0

    nonsense = run_cli(capsys, "generate", "--task", NONSENSE, "--base", "tiny", "--json")
    assert nonsense.code == 0, nonsense.err
    report = nonsense.json()["familiarity"]
    assert not report["familiar"] and report["threshold"] == FAMILIARITY_THRESHOLD
    assert [near["task"] for near in report["nearest_tasks"]] in (["lower", "upper"], ["upper", "lower"])
    best = report["nearest_tasks"][0]["similarity"]
    assert best < FAMILIARITY_THRESHOLD and best >= report["nearest_tasks"][1]["similarity"]
    [line] = [line for line in nonsense.err.splitlines() if line.startswith("warning:")]
    assert line.startswith(WARNING) and f"< {FAMILIARITY_THRESHOLD}" in line
    provenance = run_cli(capsys, "show", nonsense.json()["id"], "--json").json()["provenance"]
    assert provenance["familiarity"] == report

    seen = run_cli(capsys, "generate", "--task", "upper", "--base", "tiny", "--json")
    assert seen.code == 0, seen.err
    report = seen.json()["familiarity"]
    assert report["familiar"] and report["nearest_tasks"][0] == {"task": "upper", "similarity": 1.0}
    assert "warning" not in seen.err
    assert run_cli(capsys, "show", seen.json()["id"], "--json").json()["provenance"]["familiarity"] == report

    # For people: the nearest tasks on stdout after the result, the warning (only when far) on stderr.
    table = run_cli(capsys, "generate", "--task", NONSENSE, "--base", "tiny", "--seed", "1")
    assert table.code == 0, table.err
    nearest = table.out.strip().splitlines()[-1]
    assert nearest.startswith("nearest training tasks: ") and "upper (" in nearest and "lower (" in nearest
    assert WARNING in table.err and WARNING not in table.out
    familiar = run_cli(capsys, "generate", "--task", "Make words uppercase", "--base", "tiny")
    assert familiar.code == 0, familiar.err
    assert familiar.out.strip().splitlines()[-1].startswith("nearest training tasks: upper (1.00), lower (")
    assert "warning" not in familiar.err
