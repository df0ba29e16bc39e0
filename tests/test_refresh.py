"""loragen refresh on tiny models: lineage, idempotence, dry run, before/after scores."""

import pytest

from tests.helpers import registry_with_adapters, run_cli


@pytest.fixture
def evolved_registry(capsys, tiny_base, tiny_base_v2, tmp_path, isolated_home):
    """v1 with adapters for two tasks and a trained generator, then an evolved v2."""
    tasks = ["element_symbol", "shout"]
    ids = dict(zip(tasks, registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, tasks, steps=4)))
    assert run_cli(capsys, "train").code == 0
    assert run_cli(capsys, "base", "update", "tiny", "--from", tiny_base_v2, "--note", "continued pretraining").code == 0
    return ids


def test_dry_run_plans_and_changes_nothing(capsys, evolved_registry):
    plan = run_cli(capsys, "refresh", "--dry-run", "--json").json()
    assert {(p["task"], p["base"], p["action"], p["replaces"]) for p in plan} == {
        ("element_symbol", "tiny@v2", "generate", evolved_registry["element_symbol"]),
        ("shout", "tiny@v2", "generate", evolved_registry["shout"])}
    assert run_cli(capsys, "list", "--base", "tiny@v2", "--json").json() == []
    assert "would be generated (dry run)" in run_cli(capsys, "refresh", "--dry-run").out


def test_refresh_registers_lineage_and_is_idempotent(capsys, evolved_registry):
    first = run_cli(capsys, "refresh", "--json")
    assert first.code == 0, first.err
    items = {item["task"]: item for item in first.json()}
    assert {item["action"] for item in items.values()} == {"generated"}
    for task, old_id in evolved_registry.items():
        shown = run_cli(capsys, "show", items[task]["id"], "--json").json()
        assert shown["base"] == "tiny@v2" and shown["origin"] == "generated" and shown["replaces"] == old_id
        assert shown["provenance"]["base"] == "tiny@v2"
    second = run_cli(capsys, "refresh", "--json").json()
    assert all(item["action"].startswith("skip") for item in second)
    assert len(run_cli(capsys, "list", "--base", "tiny@v2", "--json").json()) == 2
    assert "0 adapter(s) generated, 2 already up to date" in run_cli(capsys, "refresh").out


def test_refresh_eval_reports_before_and_after(capsys, evolved_registry):
    result = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--eval", "--limit", "2", "--json")
    assert result.code == 0, result.err
    [item] = result.json()
    assert set(item["scores"]) == {"old_on_new", "zero_shot", "regenerated"}
    assert all(0 <= v <= 1 for v in item["scores"].values())
    compare = {r["task"]: r for r in run_cli(capsys, "eval", "--compare", "--json").json() if r["base"] == "tiny@v2"}
    assert compare["element_symbol"]["generated"]["n"] == 1 and compare["element_symbol"]["zero_shot"]["n"] == 1


def test_refresh_of_an_unknown_base_is_a_clear_error(capsys, evolved_registry):
    result = run_cli(capsys, "refresh", "--base", "nope")
    assert result.code == 1 and "no base model named 'nope'" in result.err
