"""workflows.score_on_base, the one loop every scorer goes through: the base alone for None, each adapter attached
in its turn, in order, one entry's scores at a time."""

from contextlib import contextmanager
from pathlib import Path

import loragen.evaluation
from loragen.evaluation import Score
from loragen.workflows import score_on_base


def test_zero_shot_then_each_adapter_attached_in_order_one_at_a_time(monkeypatch):
    calls = []

    @contextmanager
    def attached(model, folder):
        calls.append(("attach", folder))
        yield f"{model}+{folder.name}"
        calls.append(("detach", folder))

    def evaluate(model, tokenizer, tasks, *, split, limit, batch_size, shown_examples=None):
        calls.append(("evaluate", model, split, limit, batch_size))
        return [Score(task=t, metric="acc", value=0.5, stderr=None, num_examples=limit, split=split) for t in tasks]

    monkeypatch.setattr(loragen.evaluation, "attached", attached)
    monkeypatch.setattr(loragen.evaluation, "evaluate", evaluate)
    scored = score_on_base("base", "tokenizer", ["a", "b"], [None, Path("/x/one"), "/x/two"], split="validation",
                           limit=3, batch_size=2)
    assert calls == []  # nothing is scored before it is asked for
    zero = next(scored)
    assert [s.task for s in zero] == ["a", "b"] and calls == [("evaluate", "base", "validation", 3, 2)]
    assert [[s.task for s in scores] for scores in scored] == [["a", "b"], ["a", "b"]]
    assert calls[1:] == [("attach", Path("/x/one")), ("evaluate", "base+one", "validation", 3, 2), ("detach", Path("/x/one")),
                         ("attach", Path("/x/two")), ("evaluate", "base+two", "validation", 3, 2), ("detach", Path("/x/two"))]


def test_in_context_examples_are_written_before_every_prompt_of_their_task_only(tmp_path):
    """icl: the very same examples in the context of each test item (lm-eval's task `description`)."""
    import yaml

    from loragen.evaluation import _task_yamls
    from loragen.tasks.suite import get_task

    shown, other = get_task("verb_past_participle"), get_task("verb_gerund")
    shots = shown.examples("train")[:2]
    include = _task_yamls([shown, other], "test", tmp_path, {shown.name: shots})
    configs = {c["task"]: c for c in (yaml.safe_load(p.read_text()) for p in include.glob("*.yaml"))}
    assert configs[shown.eval_name]["description"] == "".join(f"{p}{a}\n\n" for p, a in shots)
    assert "description" not in configs[other.eval_name]
