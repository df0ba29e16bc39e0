"""bench/harness.py: the revision a summary records is the code that produced it."""

import json
import subprocess

from bench.harness import code_revision, write_summary


def _git(repo, *args) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def _checkout(tmp_path):
    """A git repository with one committed file under loragen/, bench/ and bench/results/."""
    repo = tmp_path / "repo"
    for name, text in {"loragen/core.py": "X = 1\n", "bench/run.py": "Y = 1\n", "bench/results/r.json": "{}\n",
                       "README.md": "readme\n"}.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    return repo


def test_a_summary_from_a_clean_tree_names_its_commit(tmp_path):
    repo = _checkout(tmp_path)
    commit = _git(repo, "rev-parse", "--short", "HEAD")
    written = write_summary(tmp_path / "out" / "summary.json", {"command": "c", "revision": "stale"}, root=repo)
    assert written == {"command": "c", "revision": commit}
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == written
    # Results, and files outside loragen/ and bench/, are not the code that produces a result.
    (repo / "bench/results/r.json").write_text('{"a": 1}\n')
    (repo / "README.md").write_text("changed\n")
    assert code_revision(repo) == commit


def test_a_summary_from_changed_code_carries_the_hash_of_the_change(tmp_path):
    repo = _checkout(tmp_path)
    commit = _git(repo, "rev-parse", "--short", "HEAD")
    (repo / "loragen/core.py").write_text("X = 2\n")
    changed = code_revision(repo)
    assert changed.startswith(f"{commit}+diff.") and len(changed) == len(commit) + len("+diff.") + 12
    assert code_revision(repo) == changed  # the same uncommitted code: the same revision
    _git(repo, "add", "loragen/core.py")  # staged is still not committed
    assert code_revision(repo) == changed
    (repo / "bench/run.py").write_text("Y = 2\n")
    assert code_revision(repo) not in (changed, commit)
    written = write_summary(tmp_path / "summary.json", {"rows": []}, root=repo)
    assert written["revision"] == code_revision(repo)


def test_outside_a_checkout_the_revision_is_unknown(tmp_path):
    assert code_revision(tmp_path) == "unknown"


def test_score_columns_scores_zero_shot_and_each_adapter_one_at_a_time(tiny_base, tiny_adapter, tmp_path):
    import pytest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.harness import score_columns
    from loragen.tasks.suite import get_task

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    plain = sorted(name for name, _ in model.named_parameters())
    columns = {"zero_shot": None, "adapter": tiny_adapter, "missing": tmp_path / "no-such-adapter"}
    scores = score_columns(model, tokenizer, get_task("element_symbol"), columns, limit=2, batch_size=2)
    done = [next(scores), next(scores)]  # each column comes as soon as it is scored, before the next is touched
    assert [column for column, _, _ in done] == ["zero_shot", "adapter"]
    assert all(score.num_examples == 2 and seconds > 0 for _, score, seconds in done)
    assert sorted(name for name, _ in model.named_parameters()) == plain  # the adapter came off again
    with pytest.raises(ValueError, match="adapter_config.json"):  # reached only now, on the third next()
        next(scores)
