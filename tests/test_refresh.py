"""loragen refresh on tiny models: lineage, idempotence, dry run, before/after scores, and the choice on validation
between the carried-over adapter and generated samples."""

import pytest

import loragen.workflows.refreshing
from loragen.evaluation import Score
from tests.helpers import one_line_error, registry_with_adapters, run_cli


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
    assert "2 adapter(s) would be made (dry run)" in run_cli(capsys, "refresh", "--dry-run").out


def test_refresh_registers_lineage_and_is_idempotent(capsys, evolved_registry):
    first = run_cli(capsys, "refresh", "--no-validate", "--json")
    assert first.code == 0, first.err
    items = {item["task"]: item for item in first.json()}
    assert {item["action"] for item in items.values()} == {"generated"}
    for task, old_id in evolved_registry.items():
        shown = run_cli(capsys, "show", items[task]["id"], "--json").json()
        assert shown["base"] == "tiny@v2" and shown["origin"] == "generated" and shown["replaces"] == old_id
        assert shown["provenance"]["base"] == "tiny@v2"
    assert {item["chosen_by"] for item in items.values()} == {"not asked (--no-validate)"}
    second = run_cli(capsys, "refresh", "--json").json()
    assert all(item["action"].startswith("skip") for item in second)
    assert len(run_cli(capsys, "list", "--base", "tiny@v2", "--json").json()) == 2
    assert "0 adapter(s) generated, 0 carried over, 2 already up to date" in run_cli(capsys, "refresh").out


def test_dry_run_estimates_the_time_from_earlier_refreshes_of_the_base(capsys, monkeypatch, evolved_registry,
                                                                       tiny_base, tmp_path):
    from tests.tiny import make_tiny_llama

    first = run_cli(capsys, "refresh", "--dry-run")
    assert "no earlier refresh of these bases, run the same way, to estimate the time from" in first.out
    _scores_by_candidate(monkeypatch, [0.9, 0.2, 0.4, 0.3])
    done = {i["task"]: i for i in run_cli(capsys, "refresh", "--json").json()}
    seconds = [run_cli(capsys, "show", item["id"], "--json").json()["provenance"]["refresh"]["seconds"]
               for item in done.values()]
    recorded = sorted(seconds)
    assert all(seconds > 0 for seconds in recorded)
    assert run_cli(capsys, "base", "update", "tiny", "--from", make_tiny_llama(tmp_path / "v3", seed=3)).code == 0
    plan = run_cli(capsys, "refresh", "--dry-run", "--json").json()
    # The median of the two earlier tasks' times, for each task the v3 refresh would make.
    assert [p["estimate_s"] for p in plan] == [round((recorded[0] + recorded[1]) / 2, 1)] * 2
    assert "about" in run_cli(capsys, "refresh", "--dry-run").out
    # Refreshes run another way say nothing of this one: with --adapt, or chosen by loss, only the task without
    # validation data (it ran alike under every validating recipe) estimates them; without validation, none.
    unvalidated = [s for item, s in zip(done.values(), seconds) if item["chosen_by"] == "no validation data"]
    assert len(unvalidated) == 1
    for other_way, expected in ((["--adapt"], unvalidated[0]), (["--select-by", "loss"], unvalidated[0]),
                                (["--no-validate"], None)):
        estimates = [p["estimate_s"] for p in run_cli(capsys, "refresh", "--dry-run", *other_way, "--json").json()]
        assert estimates == [expected] * 2, other_way


def test_refresh_estimates_match_the_adaptation_recipe():
    from dataclasses import asdict

    from loragen.workflows.refreshing import NOT_ASKED, AdaptRequest, _same_recipe

    full, fast = AdaptRequest(), AdaptRequest(steps=5, learning_rate=4e-3, refine_blend=False)
    validated = {"chosen_by": "validation", "validation": {"by": "loss"}, "adapt": asdict(full), "seconds": 9.0}
    assert _same_recipe(validated, full, "loss", True)
    assert not _same_recipe(validated, fast, "loss", True)
    assert not _same_recipe(validated, full, "metric", True)
    assert not _same_recipe(validated, None, "loss", True)
    # A record from before refine_blend existed ran with it on: it estimates a full --adapt, not a fast one.
    older = {**validated, "adapt": {k: v for k, v in asdict(full).items() if k != "refine_blend"}}
    assert _same_recipe(older, full, "loss", True) and not _same_recipe(older, fast, "loss", True)
    # Before validation.by existed, candidates were chosen by the metric.
    assert _same_recipe({**validated, "validation": {}, "adapt": None}, None, "metric", True)
    assert _same_recipe({"chosen_by": NOT_ASKED, "adapt": None}, None, "metric", False)
    assert not _same_recipe({"chosen_by": NOT_ASKED, "adapt": None}, None, "metric", True)


def test_refresh_eval_reports_before_and_after(capsys, tiny_base, tiny_base_v2, tmp_path, isolated_home):
    # A multiple-choice task: on 40 examples the tiny models' accuracies differ by adapter, where exact match is 0.
    task, limit = "has_part_choice", "40"
    # The raw generator: its draws on this setup score apart from zero-shot and the old adapter (the check below).
    old_id = registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home,
                                    ["country_subregion", task, "substance_choice"], steps=4, representation="raw")[1]
    assert run_cli(capsys, "train").code == 0
    # Refinement needs library coefficients: a raw generator refuses --examples in one line.
    raw_refined = run_cli(capsys, "generate", "--task", task, "--base", "tiny", "--examples", task, "--shots", "2")
    assert "emits raw weights" in one_line_error(raw_refined)
    assert run_cli(capsys, "base", "update", "tiny", "--from", tiny_base_v2).code == 0
    result = run_cli(capsys, "refresh", "--tasks", task, "--no-validate", "--eval", "--limit", limit, "--json")
    assert result.code == 0, result.err
    [item] = result.json()
    compare = {r["task"]: r for r in run_cli(capsys, "eval", "--compare", "--json").json() if r["base"] == "tiny@v2"}
    assert compare[task]["generated"]["n"] == 1 and compare[task]["zero_shot"]["n"] == 1

    # Each score again, by `loragen eval` on tiny@v2: the base alone, the refreshed adapter, and the old adapter
    # registered on v2 as it is.
    def evaluated(*target):
        [row] = run_cli(capsys, "eval", *target, "--tasks", task, "--limit", limit, "--json").json()
        assert row["base"] == "tiny@v2" and row["examples"] == int(limit)
        return row["value"]

    assert run_cli(capsys, "export", old_id, tmp_path / "old").code == 0
    old_on_new = run_cli(capsys, "ingest", tmp_path / "old", "--base", "tiny@v2", "--task", task, "--json").json()["id"]
    expected = {"zero_shot": evaluated("--base", "tiny@v2"), "refreshed": evaluated(item["id"]),
                "old_on_new": evaluated(old_on_new)}
    assert item["scores"] == pytest.approx(expected, abs=1e-9)
    assert len(set(expected.values())) == 3, expected  # the setup tells the three apart, so a swap would show


def test_refresh_of_an_unknown_base_is_a_clear_error(capsys, evolved_registry):
    result = run_cli(capsys, "refresh", "--base", "nope")
    assert result.code == 1 and "no base model named 'nope'" in result.err


def _scores_by_candidate(monkeypatch, values):
    """Validation scores fixed per candidate, in the order refresh scores them: carried over, then each sample."""
    calls = []

    def fixed(model, tokenizer, task, folders, limit):
        calls.append([str(f) for f in folders])
        return [Score(task=task.name, metric="exact_match", value=v, stderr=None, num_examples=limit, split="validation")
                for v in values[:len(folders)]]

    monkeypatch.setattr(loragen.workflows.refreshing, "validation_scores", fixed)
    return calls


def _weights_sha(capsys, adapter_id):
    return run_cli(capsys, "show", adapter_id, "--json").json()["weights_sha256"]


def test_carried_over_adapter_is_kept_when_it_wins_on_validation(capsys, monkeypatch, evolved_registry):
    calls = _scores_by_candidate(monkeypatch, [0.9, 0.2, 0.4, 0.3])
    result = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--json")
    assert result.code == 0, result.err
    [item] = result.json()
    # The carried-over adapter, two samples and the shifted candidate, scored once each.
    assert len(calls) == 1 and len(calls[0]) == 4
    assert item["action"] == "carried over" and item["chosen_by"] == "validation"
    old = evolved_registry["element_symbol"]
    shown = run_cli(capsys, "show", item["id"], "--json").json()
    assert shown["base"] == "tiny@v2" and shown["origin"] == "carried_over" and shown["replaces"] == old
    assert shown["weights_sha256"] == _weights_sha(capsys, old)  # the same weights, now registered for v2
    refresh = shown["provenance"]["refresh"]
    assert refresh["winner"] == "carried_over" and refresh["validation"]["task"] == "element_symbol"
    assert [(c["kind"], c["score"]) for c in refresh["candidates"]] == [
        ("carried_over", 0.9), ("generated", 0.2), ("generated", 0.4), ("shifted", 0.3)]
    assert [c.get("seed") for c in refresh["candidates"]] == [None, 0, 1, 0]
    assert refresh["shifted_from"] == {"adapter": old, "base": "tiny@v1"}
    again = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--json").json()
    assert again[0]["action"].startswith("skip: ") and "already carried over" in again[0]["action"]
    table = run_cli(capsys, "refresh", "--tasks", "element_symbol").out
    assert "0 carried over, 1 already up to date" in table


def test_a_generated_sample_is_registered_when_it_wins(capsys, monkeypatch, evolved_registry):
    _scores_by_candidate(monkeypatch, [0.3, 0.2, 0.7, 0.6])
    result = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--seed", "5")
    assert result.code == 0, result.err
    assert "carried 0.300 · 0.200 0.700* · shifted 0.600" in result.out and "1 adapter(s) generated, 0 carried over" in result.out
    [new] = run_cli(capsys, "list", "--base", "tiny@v2", "--json").json()
    shown = run_cli(capsys, "show", new["id"], "--json").json()
    assert shown["origin"] == "generated" and shown["replaces"] == evolved_registry["element_symbol"]
    assert shown["provenance"]["seed"] == 6  # the second sample (seeds 5, 6) won
    assert shown["provenance"]["refresh"]["winner"] == "generated"
    assert [c["score"] for c in shown["provenance"]["refresh"]["candidates"]] == [0.3, 0.2, 0.7, 0.6]


def test_a_shifted_candidate_is_registered_when_it_wins(capsys, monkeypatch, evolved_registry):
    """The carried-over adapter plus the generator's predicted change between the versions: registered as
    generated, with what it was moved from, and its weights those shift_adapter computes."""
    import torch

    from loragen.adapters import load_weights
    from loragen.config import load_settings
    from loragen.generator.shift import lora_modules, shift_adapter
    from loragen.registry.store import Registry
    from loragen.workflows import base_condition, load_generator, sample_state_dict, text_encoder

    _scores_by_candidate(monkeypatch, [0.3, 0.2, 0.4, 0.8])
    result = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--seed", "5")
    assert result.code == 0, result.err
    assert "carried 0.300 · 0.200 0.400 · shifted 0.800*" in result.out
    [new] = run_cli(capsys, "list", "--base", "tiny@v2", "--json").json()
    shown = run_cli(capsys, "show", new["id"], "--json").json()
    old = evolved_registry["element_symbol"]
    assert shown["origin"] == "generated" and shown["replaces"] == old and shown["provenance"]["seed"] == 5
    assert shown["provenance"]["refresh"]["winner"] == "shifted"
    assert shown["provenance"]["refresh"]["shifted_from"] == {"adapter": old, "base": "tiny@v1"}

    registry = Registry(load_settings().registry)
    generator = load_generator(registry)
    settings = load_settings().generator
    text = text_encoder(registry).encode([shown["provenance"]["condition"]])[0]
    on = {label: sample_state_dict(generator, text, base_condition(registry, label), seed=5,
                                   method=settings.sample_method, steps=settings.sample_steps, eta=settings.eta)
          for label in ("tiny@v1", "tiny@v2")}
    expected = shift_adapter(load_weights(registry.adapter_folder(old) / "adapter_model.safetensors"),
                             on["tiny@v2"], on["tiny@v1"])
    registered = load_weights(registry.adapter_folder(new["id"]) / "adapter_model.safetensors")
    for a_key, b_key in lora_modules(expected).values():
        torch.testing.assert_close(registered[b_key] @ registered[a_key], expected[b_key] @ expected[a_key])


def test_no_shift_leaves_the_shifted_candidate_out(capsys, monkeypatch, evolved_registry):
    calls = _scores_by_candidate(monkeypatch, [0.5, 0.2, 0.4, 0.8])  # 0.8 would be the shifted one's
    [item] = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--no-shift", "--json").json()
    assert len(calls[0]) == 3 and [c["kind"] for c in item["candidates"]] == ["carried_over", "generated", "generated"]
    assert item["action"] == "carried over"


def test_a_carried_adapter_of_another_lora_shape_gets_no_shifted_candidate(capsys, monkeypatch, evolved_registry,
                                                                            tiny_base, tmp_path):
    from tests.tiny import make_lora

    # A newer v1 adapter of rank 8 (the generator makes the fixture's rank) becomes the one to succeed.
    folder = make_lora(tiny_base, tmp_path / "rank8", seed=3, r=8)
    newer = run_cli(capsys, "ingest", str(folder), "--base", "tiny@v1", "--task", "element_symbol", "--json")
    assert newer.code == 0, newer.err
    calls = _scores_by_candidate(monkeypatch, [0.9, 0.2, 0.4])
    result = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--json")
    assert result.code == 0, result.err
    [item] = result.json()
    assert item["replaces"] == newer.json()["id"]
    assert len(calls[0]) == 3 and "rank-8" in item["shift_skipped"]
    shown = run_cli(capsys, "show", item["id"], "--json").json()
    assert "rank-8" in shown["provenance"]["refresh"]["shift_skipped"]


def test_a_tie_keeps_the_carried_over_adapter(capsys, monkeypatch, evolved_registry):
    _scores_by_candidate(monkeypatch, [0.5, 0.5, 0.5, 0.5])
    [item] = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--json").json()
    assert item["action"] == "carried over"


def test_a_task_without_validation_data_gets_one_unscored_sample(capsys, monkeypatch, evolved_registry):
    calls = _scores_by_candidate(monkeypatch, [1.0, 0.0, 0.0, 0.0])
    items = {i["task"]: i for i in run_cli(capsys, "refresh", "--json").json()}
    # "shout" was ingested under a name no bundled task has: there is nothing to validate on.
    assert items["shout"]["chosen_by"] == "no validation data" and items["shout"]["action"] == "generated"
    assert items["shout"]["candidates"] == [] and len(calls) == 1  # only element_symbol was scored
    assert items["element_symbol"]["action"] == "carried over"


def test_no_validate_registers_one_sample_without_evaluating(capsys, monkeypatch, evolved_registry):
    calls = _scores_by_candidate(monkeypatch, [1.0, 0.0, 0.0])
    [item] = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--no-validate", "--json").json()
    assert calls == [] and item["action"] == "generated" and item["chosen_by"] == "not asked (--no-validate)"


@pytest.mark.slow
def test_validation_through_lm_eval_records_every_candidate(capsys, evolved_registry):
    """Unpatched: real lm-eval scores on the tiny v2; the registered winner is the best (ties: carried over)."""
    result = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--samples", "2", "--select-limit", "2", "--json")
    assert result.code == 0, result.err
    [item] = result.json()
    scores = [c["score"] for c in item["candidates"]]
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores)
    expected = "carried over" if scores[0] >= max(scores[1:]) else "generated"
    assert item["action"] == expected
    shown = run_cli(capsys, "show", item["id"], "--json").json()
    assert [c["score"] for c in shown["provenance"]["refresh"]["candidates"]] == scores


def test_refresh_to_a_named_version_takes_the_latest_earlier_adapter(capsys, evolved_registry, tmp_path):
    from tests.tiny import make_tiny_llama

    v3 = make_tiny_llama(tmp_path / "v3", seed=3)
    assert run_cli(capsys, "base", "update", "tiny", "--from", v3).code == 0
    plan = run_cli(capsys, "refresh", "--base", "tiny@v2", "--dry-run", "--json").json()
    assert {(p["base"], p["replaces_base"]) for p in plan} == {("tiny@v2", "tiny@v1")}
    newest = run_cli(capsys, "refresh", "--base", "tiny", "--dry-run", "--json").json()
    assert {p["base"] for p in newest} == {"tiny@v3"}
    first = run_cli(capsys, "refresh", "--base", "tiny@v1", "--dry-run")
    assert first.code == 1 and "tiny@v1 is the first version" in first.err


# ---------------------------------------------------------------- refresh --adapt


def _scores_in_order(monkeypatch, values):
    """Validation scores handed out in the order candidates are scored, across calls (the drawn candidates, then
    the adapted ones); records each call's folders."""
    calls, remaining = [], list(values)

    def fixed(model, tokenizer, task, folders, limit):
        calls.append([str(f) for f in folders])
        taken = [remaining.pop(0) for _ in folders]
        return [Score(task=task.name, metric="exact_match", value=v, stderr=None, num_examples=limit, split="validation")
                for v in taken]

    monkeypatch.setattr(loragen.workflows.refreshing, "validation_scores", fixed)
    return calls


def _lora_loss(base_dir, state_dict, examples, lora):
    """The next-token loss on `examples` of the base at `base_dir` with `state_dict` as its LoRA."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loragen.finetune import collate, encode_examples, load_lora_weights, make_peft_model, pad_token_id

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    peft_model = make_peft_model(model, lora)
    load_lora_weights(peft_model, state_dict)
    peft_model.eval()
    with torch.no_grad():
        return float(peft_model(**collate(encode_examples(tokenizer, examples), pad_token_id(tokenizer))).loss)


def test_the_warm_start_is_the_start_adapters_exact_weights(tiny_base, tmp_path):
    from peft import get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from loragen.adapters import load_weights
    from loragen.config import LoraConfig
    from loragen.errors import LoragenError
    from loragen.finetune import load_lora_weights, make_peft_model
    from tests.tiny import make_lora

    start = load_weights(make_lora(tiny_base, tmp_path / "start", seed=4, r=2) / "adapter_model.safetensors")
    peft_model = make_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base),
                                 LoraConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]))
    load_lora_weights(peft_model, start)
    loaded = get_peft_model_state_dict(peft_model)
    assert loaded.keys() == start.keys()
    assert all(loaded[name].equal(start[name]) for name in start)
    other = make_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base),
                            LoraConfig(r=4, alpha=4, target_modules=["q_proj", "v_proj"]))
    with pytest.raises(LoragenError, match="the warm start does not fit this LoRA"):
        load_lora_weights(other, start)


def test_adapting_lowers_the_loss_and_the_adapted_candidates_are_validated(capsys, monkeypatch, evolved_registry,
                                                                           tiny_base_v2, isolated_home):
    import loragen.workflows.refreshing as refreshing
    from loragen.adapters import load_weights
    from loragen.config import LoraConfig, load_settings
    from loragen.generator.refine import split_examples
    from loragen.registry.store import Registry

    started, finished = [], []
    warm = refreshing._warm_finetune

    def watched(registry, model, tokenizer, item, start, lora, shots, adapt, seed):
        weights, seconds, run_dir = warm(registry, model, tokenizer, item, start, lora, shots, adapt, seed)
        started.append((start, lora, shots))
        finished.append(weights)
        return weights, seconds, run_dir

    monkeypatch.setattr(refreshing, "_warm_finetune", watched)
    # carried over, two samples, shifted; then the adapted ones (a refined blend if it was kept, then the warm
    # fine-tune): the warm fine-tune wins either way.
    calls = _scores_in_order(monkeypatch, [0.5, 0.2, 0.6, 0.3, 0.7, 0.9])
    result = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--adapt", "--shots", "4", "--steps", "8",
                     "--adapt-lr", "0.01", "--json")
    assert result.code == 0, result.err
    [item] = result.json()
    # Scored in two rounds: the four drawn candidates, then the adapted ones (each like every candidate).
    assert [len(call) for call in calls] in ([4, 1], [4, 2])
    kinds = [(c["kind"], (c["adapted"] or {}).get("how")) for c in item["candidates"]]
    assert kinds[:4] == [("carried_over", None), ("generated", None), ("generated", None), ("shifted", None)]
    assert kinds[-1] == ("adapted", "warm_finetune") and set(kinds[4:-1]) <= {("adapted", "blend")}
    warm_record = item["candidates"][-1]["adapted"]
    assert warm_record["from"] == 2 and warm_record["shots"] == 4 and warm_record["steps"] == 8  # the best: sample 2
    assert (isolated_home / "runs" / warm_record["run"] / "checkpoints").is_dir()
    assert item["action"] == "adapted" and item["adapt_seconds"] > 0
    # The blend refinement is recorded whether or not it was kept (a candidate only when kept).
    refinement = item["blend_refinement"]
    assert refinement["from"] == 2 and refinement["kept"] in ("refined", "start") and refinement["steps"] == 8
    assert (("adapted", "blend") in kinds) == (refinement["kept"] == "refined")

    # The warm fine-tune started from the best candidate's weights and lowered the new base's loss on its shots.
    [(start, lora, shots)] = started
    assert lora == LoraConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]) and len(shots) == 4
    expected_shots, _ = split_examples(refreshing.bundled_task("element_symbol").examples("train"), 4, 16, 0)
    assert shots == expected_shots
    assert _lora_loss(tiny_base_v2, finished[0], shots, lora) < _lora_loss(tiny_base_v2, start, shots, lora)

    # Registered as a fine-tune (origin trained) succeeding the old adapter, with every candidate's record.
    shown = run_cli(capsys, "show", item["id"], "--json").json()
    assert shown["origin"] == "trained" and shown["replaces"] == evolved_registry["element_symbol"]
    assert shown["provenance"]["refresh"]["winner"] == "adapted"
    assert shown["provenance"]["refresh"]["candidates"] == item["candidates"]
    assert shown["provenance"]["refresh"]["blend_refinement"] == refinement
    registry = Registry(load_settings().registry)
    registered = load_weights(registry.adapter_folder(item["id"]) / "adapter_model.safetensors")
    assert all(registered[name].equal(finished[0][name]) for name in finished[0])
    again = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--adapt", "--json").json()
    assert again[0]["action"].startswith("skip: ") and "already adapted" in again[0]["action"]


def test_a_carried_over_winner_is_still_registered_as_carried_over_with_adapt(capsys, monkeypatch, evolved_registry):
    _scores_in_order(monkeypatch, [0.9, 0.2, 0.4, 0.3, 0.5, 0.5])
    result = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--adapt", "--shots", "2", "--steps", "1", "--json")
    assert result.code == 0, result.err
    [item] = result.json()
    assert item["action"] == "carried over" and item["candidates"][-1]["kind"] == "adapted"
    assert item["candidates"][-1]["adapted"]["from"] == 0  # adapted from the best: the carried-over adapter
    shown = run_cli(capsys, "show", item["id"], "--json").json()
    assert shown["origin"] == "carried_over" and shown["provenance"]["refresh"]["winner"] == "carried_over"


def test_select_by_loss_scores_each_candidate_by_minus_its_validation_loss(capsys, evolved_registry, tiny_base_v2):
    from loragen.adapters import load_weights
    from loragen.config import LoraConfig, load_settings
    from loragen.registry.store import Registry
    from loragen.workflows import bundled_task

    result = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--select-by", "loss", "--select-limit", "6",
                     "--json")
    assert result.code == 0, result.err
    [item] = result.json()
    assert {c["metric"] for c in item["candidates"]} == {"neg_validation_loss"}
    # The carried-over candidate's score is minus the new base's loss on the first 6 validation answers with it.
    registry = Registry(load_settings().registry)
    carried = load_weights(registry.adapter_folder(evolved_registry["element_symbol"]) / "adapter_model.safetensors")
    examples = bundled_task("element_symbol").examples("validation")[:6]
    lora = LoraConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"])
    assert item["candidates"][0]["score"] == pytest.approx(-_lora_loss(tiny_base_v2, carried, examples, lora), rel=1e-4)
    scores = [c["score"] for c in item["candidates"]]
    assert item["candidates"][item["winner"]]["score"] == max(scores)  # the lowest loss wins
    shown = run_cli(capsys, "show", item["id"], "--json").json()
    assert shown["provenance"]["refresh"]["validation"] == {"task": "element_symbol", "split": "validation",
                                                           "limit": 6, "by": "loss"}


def test_no_refine_blend_adapts_by_the_warm_fine_tune_alone(capsys, monkeypatch, evolved_registry):
    calls = _scores_in_order(monkeypatch, [0.5, 0.2, 0.6, 0.3, 0.9])
    result = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--adapt", "--no-refine-blend", "--shots", "2",
                     "--steps", "1", "--json")
    assert result.code == 0, result.err
    [item] = result.json()
    assert [len(call) for call in calls] == [4, 1]  # the drawn candidates, then the warm fine-tune alone
    assert [(c["adapted"] or {}).get("how") for c in item["candidates"]] == [None] * 4 + ["warm_finetune"]
    assert item["blend_refinement"] is None and item["action"] == "adapted"
    shown = run_cli(capsys, "show", item["id"], "--json").json()
    assert shown["provenance"]["refresh"]["adapt"]["refine_blend"] is False
    assert "blend_refinement" not in shown["provenance"]["refresh"]


def test_no_refine_blend_without_adapt_is_refused(capsys, evolved_registry):
    result = run_cli(capsys, "refresh", "--no-refine-blend")
    assert "--no-refine-blend changes what --adapt does" in one_line_error(result)
    assert run_cli(capsys, "list", "--base", "tiny@v2", "--json").json() == []


def test_a_task_left_out_generator_is_named_as_a_weak_source_of_refresh_candidates(capsys, evolved_registry):
    result = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--no-validate", "--json")
    assert result.code == 0, result.err
    [item] = result.json()
    assert 'leave_out = "task"' in item["generator_note"] and 'leave_out = "version"' in item["generator_note"]
    table = run_cli(capsys, "refresh", "--tasks", "shout", "--no-validate")
    assert table.code == 0 and 'train one with [generator] leave_out = "version"' in " ".join(table.out.split())


@pytest.mark.parametrize("representation, settings, noted", [
    ("library", {"leave_out": "task", "leave_one_out": 1.0}, True),
    ("library", {"leave_one_out": 1.0}, True),          # trained before leave_out existed: the task was masked
    ("library", {"leave_out": "version", "leave_one_out": 1.0}, False),
    ("library", {"leave_out": "task", "leave_one_out": 0.0}, False),  # no row masks anything
    ("raw", {}, False),
])
def test_generator_note_reads_what_the_generator_was_trained_with(representation, settings, noted):
    from types import SimpleNamespace

    from loragen.workflows.refreshing import generator_note

    checkpoint = SimpleNamespace(representation=representation, training={"settings": settings})
    assert (generator_note(SimpleNamespace(uid="0123456789abcdef", checkpoint=checkpoint)) is not None) == noted


def test_adapt_needs_validation(capsys, evolved_registry):
    result = run_cli(capsys, "refresh", "--adapt", "--no-validate")
    assert "--adapt picks among candidates on validation data" in one_line_error(result)
    assert run_cli(capsys, "list", "--base", "tiny@v2", "--json").json() == []


@pytest.mark.slow
def test_a_killed_adapting_refresh_resumes_and_registers_each_task_once(capsys, evolved_registry, isolated_home):
    import random
    import signal
    import subprocess
    import sys
    import time

    env = dict(__import__("os").environ, LORAGEN_HOME=str(isolated_home), OMP_NUM_THREADS="1")
    # 2000 adaptation steps outlast every kill below: on an idle machine 300 steps and the whole first run ended
    # within 18 s, before its kill, and nothing was killed.
    command = [sys.executable, "-m", "loragen", "refresh", "--tasks", "element_symbol", "--adapt", "--shots", "4",
               "--steps", "2000", "--select-limit", "2", "--json"]
    rng, killed = random.Random(0), 0
    for _ in range(3):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(8.0, 20.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
    assert killed > 0
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert len(run_cli(capsys, "list", "--base", "tiny@v2", "--task", "element_symbol", "--json").json()) == 1


def test_adapt_with_more_shots_than_examples_refreshes_without_adapting(capsys, monkeypatch, evolved_registry):
    calls = _scores_in_order(monkeypatch, [0.9, 0.2, 0.4, 0.3])
    result = run_cli(capsys, "refresh", "--tasks", "element_symbol", "--adapt", "--shots", "100000", "--json")
    assert result.code == 0, result.err
    [item] = result.json()
    assert len(calls) == 1 and item["action"] == "carried over" and "--shots 100000 needs more" in item["adapt_skipped"]
    shown = run_cli(capsys, "show", item["id"], "--json").json()
    assert shown["provenance"]["refresh"]["adapt_skipped"] == item["adapt_skipped"]
