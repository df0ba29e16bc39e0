"""The multi-task LoRA baseline: one LoRA fine-tuned on the union of several tasks, registered once for the group."""

import pytest

from loragen.config import FinetuneConfig, LoraConfig
from loragen.errors import LoragenError
from tests.helpers import run_cli

FAST = ["--steps", "6", "--checkpoints", "2", "--checkpoint-every", "2", "--batch-size", "4", "--train-limit", "8"]
# FAST as library settings (the CLI's lora defaults are LoraConfig's: tests run from an empty folder).
CONFIG = FinetuneConfig(steps=6, checkpoints=2, checkpoint_every=2, batch_size=4)
PAIR = ["country_region", "element_number"]  # two seen tasks of the committed split, different metrics


@pytest.fixture
def tiny_registered(capsys, tiny_base):
    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0


def _no_model_loads(monkeypatch):
    import loragen.bases

    def refuse(*args, **kwargs):
        raise AssertionError("a base model was loaded")

    monkeypatch.setattr(loragen.bases, "load_model", refuse)


def test_pair_is_seen_and_another_task_is_held_out():
    """The tests below rely on these facts about the committed split."""
    from loragen.tasks.split import load_split

    split = load_split()
    assert all(not split.is_held_out(t) for t in PAIR) and split.is_held_out("element_symbol")


def test_multitask_finetune_registers_one_group_that_loads_in_peft(capsys, tiny_registered, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loragen.cli.context import state
    from loragen.workflows import default_group_name

    result = run_cli(capsys, "finetune", "--tasks", ",".join(PAIR), "--base", "tiny", *FAST, "--json")
    assert result.code == 0, result.err
    report = result.json()
    group = default_group_name(PAIR)
    assert report["task"] == group and group.startswith("multitask-") and len(group) == len("multitask-") + 8
    assert report["members"] == sorted(PAIR) and report["examples_per_task"] == {t: 8 for t in PAIR}
    assert [c["step"] for c in report["checkpoints"]] == [4, 6] and all(c["new"] for c in report["checkpoints"])

    adapters = run_cli(capsys, "list", "--origin", "trained", "--json").json()
    assert len(adapters) == 2 and {a["task"] for a in adapters} == {group}  # one group, not one adapter per task
    provenance = adapters[0]["provenance"]
    assert provenance["member_tasks"] == sorted(PAIR) and provenance["examples_per_task"] == {t: 8 for t in PAIR}
    assert provenance["steps"] == 6 and provenance["seed"] == 0 and provenance["train_examples"] == 16
    [task_row] = [t for t in run_cli(capsys, "list", "tasks", "--json").json() if t["name"] == group]
    assert all(t in task_row["descriptions"][0] for t in PAIR) and "2 tasks" in task_row["descriptions"][0]

    folder = state.registry.adapter_folder(report["checkpoints"][-1]["id"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), str(folder))
    trained_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained_b and any(p.abs().sum() > 0 for p in trained_b)  # B starts at zero: it was trained

    # The same members in another order are the same group and the same run: nothing retrains or duplicates.
    again = run_cli(capsys, "finetune", "--tasks", ",".join(reversed(PAIR)), "--base", "tiny", *FAST, "--json").json()
    assert again["task"] == group and again["run_dir"] == report["run_dir"] and again["wall_time_s"] == 0
    assert [c["id"] for c in again["checkpoints"]] == [c["id"] for c in report["checkpoints"]]
    assert [c["new"] for c in again["checkpoints"]] == [False, False]

    table = run_cli(capsys, "finetune", "--tasks", ",".join(PAIR), "--base", "tiny", *FAST)
    assert table.code == 0 and f"{group} (2 tasks, 16 examples) on tiny@v1: 2 checkpoint(s)" in table.out


def test_killed_multitask_run_resumes_and_a_name_reuses_the_run(tiny_registered):
    from loragen import workflows
    from loragen.cli.context import state

    class Killed(Exception):
        pass

    def die_at_step_5(step, total, loss):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        workflows.finetune_multitask(state.registry, PAIR, "tiny", LoraConfig(), CONFIG, train_limit_per_task=8,
                                     progress=die_at_step_5)
    resumed = workflows.finetune_multitask(state.registry, PAIR, "tiny", LoraConfig(), CONFIG, train_limit_per_task=8)
    assert resumed.resumed_from_step == 4 and [c.step for c in resumed.checkpoints] == [4, 6]
    assert all(c.created for c in resumed.checkpoints) and resumed.train_s > resumed.wall_time_s > 0

    named = workflows.finetune_multitask(state.registry, PAIR, "tiny", LoraConfig(), CONFIG, train_limit_per_task=8,
                                         name="country-and-element")
    assert named.task == "country-and-element" and named.run_dir == resumed.run_dir and named.wall_time_s == 0
    assert all(c.created for c in named.checkpoints)  # the same weights, registered under the name asked for

    # Another member set, or other per-task counts, is another run.
    fewer = workflows.finetune_run_dir(state.registry, workflows.default_group_name(PAIR), state.registry.version("tiny"),
                                       LoraConfig(), CONFIG, 16, members=[[PAIR[0], 10], [PAIR[1], 6]])
    assert fewer != resumed.run_dir


def test_default_mix_gives_every_member_the_smallest_members_count(tiny_registered):
    from loragen import workflows
    from loragen.cli.context import state
    from loragen.tasks.suite import get_task

    config = FinetuneConfig(steps=2, checkpoints=1, checkpoint_every=2, batch_size=4)
    outcome = workflows.finetune_multitask(state.registry, PAIR, "tiny", LoraConfig(r=2, alpha=4), config)
    smallest = min(len(get_task(t).examples("train")) for t in PAIR)
    assert outcome.examples_per_task == {t: smallest for t in PAIR} and outcome.train_examples == 2 * smallest
    capped = workflows.finetune_multitask(state.registry, PAIR, "tiny", LoraConfig(r=2, alpha=4), config,
                                          train_limit_per_task=10_000)  # above every task: each gives all it has
    assert capped.examples_per_task == {t: len(get_task(t).examples("train")) for t in PAIR}


def test_seen_group_never_contains_a_held_out_task(capsys, tiny_registered):
    """How the benchmark builds T2L's multi-task baseline: every seen task of the split, and nothing held out."""
    from loragen import workflows
    from loragen.tasks.split import load_split

    split = load_split()
    members = [t.name for t in workflows.multitask_members(None, exclude_held_out=True)]
    assert members == list(split.seen_tasks) == [t.name for t in workflows.multitask_members("seen")]
    assert not set(members) & set(split.held_out_tasks)

    result = run_cli(capsys, "finetune", "--tasks", "seen", "--base", "tiny", "--steps", "1", "--checkpoints", "1",
                     "--checkpoint-every", "1", "--batch-size", "2", "--train-limit", "1", "--rank", "2", "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["members"] == list(split.seen_tasks) and report["held_out_excluded"] is True
    assert set(report["examples_per_task"]) == set(split.seen_tasks)
    [adapter] = run_cli(capsys, "list", "--origin", "trained", "--json").json()
    assert not set(adapter["provenance"]["member_tasks"]) & set(split.held_out_tasks)
    assert adapter["provenance"]["held_out_excluded"] is True


@pytest.mark.parametrize("args, code, message", [
    (("--task", "country_region", "--tasks", "country_region,element_number"), 2, "not both"),
    (("--tasks", "country_region"), 2, "at least two tasks"),
    (("--tasks", "country_region,"), 2, "at least two tasks"),
    ((), 2, "give --task NAME"),
    (("--task", "country_region", "--name", "grp"), 2, "--name names a multi-task LoRA"),
    (("--task", "country_region", "--exclude-held-out"), 2, "not both"),
    (("--tasks", "country_region,no_such_task"), 1, "unknown task 'no_such_task'"),
    (("--tasks", "country_region,country_region"), 1, "named twice"),
    (("--tasks", "country_region,element_symbol", "--exclude-held-out"), 1, "'element_symbol' is held out"),
    (("--tasks", "country_region,element_number", "--name", "country_region"), 1, "a single task's name"),
    (("--tasks", "country_region,element_number", "--name", "bad name"), 1, "invalid task name"),
])
def test_multitask_refusals_are_one_line_and_come_before_loading(capsys, tiny_registered, monkeypatch, args, code,
                                                                 message):
    _no_model_loads(monkeypatch)
    result = run_cli(capsys, "finetune", *args, "--base", "tiny", *FAST)
    assert result.code == code and message in result.err, result.err
    if code == 1:
        assert result.err.strip().count("\n") == 0
    assert run_cli(capsys, "list", "--json").json() == []


def test_eval_of_a_multitask_adapter_defaults_to_its_members(capsys, tiny_registered):
    from loragen import workflows
    from loragen.cli.context import state

    config = FinetuneConfig(steps=2, checkpoints=1, checkpoint_every=2, batch_size=4)
    outcome = workflows.finetune_multitask(state.registry, PAIR, "tiny", LoraConfig(r=2, alpha=4), config,
                                           train_limit_per_task=4)
    adapter = outcome.checkpoints[-1].id
    scores = run_cli(capsys, "eval", adapter, "--limit", "2", "--batch-size", "4", "--json")
    assert scores.code == 0, scores.err
    assert sorted(s["task"] for s in scores.json()) == sorted(PAIR)
    chosen = run_cli(capsys, "eval", adapter, "--tasks", PAIR[1], "--limit", "2", "--batch-size", "4", "--json").json()
    assert [s["task"] for s in chosen] == [PAIR[1]]
    # --compare keeps the group's scores out of each member's own TRAINED column.
    compare = {r["task"]: r for r in run_cli(capsys, "eval", "--compare", "--json").json()}
    assert set(compare) == set(PAIR)
    assert all(r["trained"] is None and r["other_task"]["n"] == 1 for r in compare.values())

    # A group adapter is no one task's adapter: the generator does not learn from it.
    with pytest.raises(LoragenError, match="no trained or ingested adapters match"):
        workflows.collect_training_set(state.registry)


def test_group_name_of_other_adapters_is_refused_and_refresh_leaves_groups_alone(capsys, tiny_registered, tiny_adapter,
                                                                                 tiny_base_v2):
    from loragen import workflows
    from loragen.cli.context import state

    assert run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "my_own_task").code == 0
    config = FinetuneConfig(steps=2, checkpoints=1, checkpoint_every=2, batch_size=4)
    with pytest.raises(LoragenError, match="already has adapter .* give the group another --name"):
        workflows.finetune_multitask(state.registry, PAIR, "tiny", LoraConfig(r=2, alpha=4), config,
                                     train_limit_per_task=4, name="my_own_task")
    outcome = workflows.finetune_multitask(state.registry, PAIR, "tiny", LoraConfig(r=2, alpha=4), config,
                                           train_limit_per_task=4)
    assert run_cli(capsys, "base", "update", "tiny", "--from", tiny_base_v2).code == 0
    planned = workflows.plan_refresh(state.registry)
    assert [item.task for item in planned] == ["my_own_task"] and outcome.task not in {i.task for i in planned}
