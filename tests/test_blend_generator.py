"""The library-coordinates generator (issue 20): it reproduces its training adapters, leave-one-out masks a task's
own adapters, the task loss reaches it, and its checkpoint round-trips. Tiny adapters on the tiny base, real files."""

from dataclasses import replace

import pytest
import torch

from loragen.config import GeneratorSettings
from loragen.generator.blend_training import (
    BlendCheckpoint,
    blend_targets,
    predict_x0,
    row_targets,
    train_blend_generator,
    training_families,
)
from loragen.generator.library import relative_blend_error
from loragen.generator.sampling import LoadedGenerator, sample_coefficients, sample_state_dict
from loragen.generator.training import TrainingAdapter, TrainingSet

TINY = dict(d_model=32, n_layers=1, d_state=4, key_dim=16, head_hidden=32, batch_size=4, learning_rate=3e-3,
            checkpoint_every=50, sample_steps=5, leave_one_out=0.0, representation="library")


def tiny_training_set(tiny_base, tmp_path, tasks=("upper", "lower", "title", "swap")) -> TrainingSet:
    from loragen.adapters import load_weights
    from tests.tiny import make_lora

    adapters, text = [], {}
    generator = torch.Generator().manual_seed(0)
    for index, task in enumerate(tasks):
        folder = make_lora(tiny_base, tmp_path / f"lora{index}", seed=index, r=2)
        adapters.append(TrainingAdapter(uid=f"{index:064x}", task=task, base="tiny@v1",
                                        state_dict=load_weights(folder / "adapter_model.safetensors")))
        text[task] = torch.randn(2, 8, generator=generator)  # two descriptions per task
    return TrainingSet(adapters=adapters, task_descriptions={t: [f"{t} a", f"{t} b"] for t in tasks},
                       text_embeddings=text, base_embeddings={"tiny@v1": torch.randn(6, generator=generator)},
                       lora={"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}, text_model="test")


def training_library(data: TrainingSet):
    """The library of a training set on one base (one shape family)."""
    [family], _ = training_families(data)
    return family.library


def loaded(checkpoint: BlendCheckpoint, data: TrainingSet) -> LoadedGenerator:
    return LoadedGenerator(uid="", checkpoint=checkpoint, model=checkpoint.build_model(),
                           library=training_library(data))


def test_a_trained_blend_generator_reproduces_its_training_adapters(tiny_base, tmp_path):
    data = tiny_training_set(tiny_base, tmp_path)
    settings = GeneratorSettings(**TINY, steps=300)
    checkpoint = train_blend_generator(data, settings, tmp_path / "run")
    generator = loaded(checkpoint, data)
    library = generator.library
    for index, adapter in enumerate(data.adapters):
        coefficients = sample_coefficients(generator, data.text_embeddings[adapter.task][0],
                                           data.base_embeddings["tiny@v1"], seed=0, method="ddim", steps=5, eta=0.0)
        one_hot = torch.eye(library.size)[index].expand_as(coefficients)
        error = relative_blend_error(library.grams, coefficients, one_hot)
        assert error.max().item() < 0.05, (adapter.task, error.max().item())
        # The exported LoRA (SVD cut at the registry's rank) is the adapter's own change.
        state_dict = sample_state_dict(generator, data.text_embeddings[adapter.task][0],
                                       data.base_embeddings["tiny@v1"], seed=0, method="ddim", steps=5, eta=0.0)
        assert set(state_dict) == set(adapter.state_dict)
        for key, value in state_dict.items():
            assert value.shape == adapter.state_dict[key].shape


def test_leave_one_out_masks_the_tasks_own_adapters(tiny_base, tmp_path):
    data = tiny_training_set(tiny_base, tmp_path, tasks=("upper", "upper", "lower", "title"))
    library = training_library(data)
    targets = blend_targets(library, [a.task for a in data.adapters])
    # Both "upper" adapters are masked out of each other's composed target, and nothing else is.
    assert targets.composed_allowed[0].tolist() == [False, False, True, True]
    assert targets.composed[0][:, :2].abs().max().item() == 0.0
    x0, allowed = row_targets(targets, torch.tensor([0, 2]), torch.tensor([True, False]))
    assert allowed.tolist() == [[False, False, True, True], [True, True, True, True]]
    assert torch.equal(x0[1], targets.lookup[2])
    # The composed target is the best reachable blend: no worse than any single allowed adapter.
    composed_error = relative_blend_error(library.grams, targets.composed[0], targets.lookup[0]).mean()
    for other in (2, 3):
        assert composed_error <= relative_blend_error(library.grams, targets.lookup[other], targets.lookup[0]).mean()
    # And the network never puts weight on a masked entry.
    settings = GeneratorSettings(**{**TINY, "leave_one_out": 1.0}, steps=2)
    checkpoint = train_blend_generator(data, settings, tmp_path / "run")
    model = checkpoint.build_model()
    predicted = predict_x0(model, checkpoint.schedule, checkpoint.slot_positions(), data.text_embeddings["upper"],
                           data.base_embeddings["tiny@v1"].expand(2, -1), x0, allowed, torch.Generator())
    assert predicted[0][:, :2].abs().max().item() == 0.0


def test_leaving_the_version_out_masks_the_versions_adapters_and_keeps_the_tasks_others(tiny_base, tmp_path):
    # Two tasks on two versions: a refresh generator composes a version's adapter from the other version's.
    data = tiny_training_set(tiny_base, tmp_path, tasks=("upper", "lower", "upper", "lower"))
    for index in (2, 3):
        data.adapters[index] = replace(data.adapters[index], base="tiny@v2")
    data.base_embeddings["tiny@v2"] = data.base_embeddings["tiny@v1"] + 1.0
    [by_version], _ = training_families(data, leave_out="version")
    [by_task], _ = training_families(data, leave_out="task")
    # upper@v1 may be composed from v2's adapters (its own task's among them), never from v1's.
    assert by_version.targets.composed_allowed[0].tolist() == [False, False, True, True]
    assert by_task.targets.composed_allowed[0].tolist() == [False, True, False, True]
    assert by_version.targets.composed[0][:, :2].abs().max().item() == 0.0
    # Training reads the setting: a run with every row composing never weights a masked entry.
    settings = GeneratorSettings(**{**TINY, "leave_one_out": 1.0, "leave_out": "version"}, steps=2)
    checkpoint = train_blend_generator(data, settings, tmp_path / "run")
    assert checkpoint.training["settings"]["leave_out"] == "version"
    x0, allowed = row_targets(by_version.targets, torch.tensor([0]), torch.tensor([True]))
    predicted = predict_x0(checkpoint.build_model(), checkpoint.schedule, checkpoint.slot_positions(),
                           data.text_embeddings["upper"][:1], data.base_embeddings["tiny@v1"][None], x0, allowed,
                           torch.Generator())
    assert predicted[0][:, :2].abs().max().item() == 0.0 and predicted[0][:, 2:].abs().max().item() > 0.0


def test_leave_out_is_task_or_version():
    from loragen.errors import LoragenError

    with pytest.raises(LoragenError, match="leave_out"):
        GeneratorSettings(leave_out="tasks")


def test_the_task_loss_gradient_reaches_the_blend_generator(tiny_base, tmp_path):
    from transformers import AutoModelForCausalLM

    from loragen.generator.blend_model import BlendGenerator, blend_config_from_settings
    from loragen.generator.blend_training import BlendTaskLoss, training_families
    from loragen.generator.diffusion import DDPMSchedule
    from tests.tiny import make_tokenizer

    data = tiny_training_set(tiny_base, tmp_path)
    data.task_examples = {task: [("abc", "ABC"), ("de", "DE"), ("f", "F")] for task in data.task_descriptions}
    data.load_base = lambda label: (AutoModelForCausalLM.from_pretrained(tiny_base), make_tokenizer())
    settings = GeneratorSettings(**TINY, steps=1, task_loss_weight=1.0, task_examples_per_step=2)
    families, module_types = training_families(data)
    [family] = families
    library = family.library
    config = blend_config_from_settings(settings, library_size=library.size, num_slots=len(library.slots),
                                        num_module_types=len(module_types), text_dim=8, base_dim=6)
    model = BlendGenerator(config)
    loss = BlendTaskLoss(data, settings, families)(
        model, DDPMSchedule(prediction_type="sample"), torch.stack([data.base_embeddings["tiny@v1"]] * library.size),
        torch.tensor([False] * 4), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.to_query.weight.grad is not None and model.to_query.weight.grad.abs().sum() > 0
    assert model.denoiser.mlp[0].weight.grad.abs().sum() > 0


def test_the_blend_checkpoint_round_trips_and_samples_the_same(tiny_base, tmp_path):
    from loragen.generator.checkpoints import load_checkpoint

    data = tiny_training_set(tiny_base, tmp_path)
    checkpoint = train_blend_generator(data, GeneratorSettings(**TINY, steps=5), tmp_path / "run")
    reloaded = load_checkpoint(checkpoint.save(tmp_path / "saved"))
    assert isinstance(reloaded, BlendCheckpoint) and reloaded.library == checkpoint.library
    text, base = data.text_embeddings["upper"][0], data.base_embeddings["tiny@v1"]
    first = sample_state_dict(loaded(checkpoint, data), text, base, seed=3, method="ddim", steps=5, eta=0.0)
    second = sample_state_dict(loaded(reloaded, data), text, base, seed=3, method="ddim", steps=5, eta=0.0)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_an_interrupted_blend_run_resumes_to_the_same_weights(tiny_base, tmp_path):
    data = tiny_training_set(tiny_base, tmp_path)
    settings = GeneratorSettings(**{**TINY, "checkpoint_every": 5, "leave_one_out": 0.5}, steps=10)
    whole = train_blend_generator(data, settings, tmp_path / "whole")
    train_blend_generator(data, replace(settings, steps=5), tmp_path / "halves")
    state = torch.load(tmp_path / "halves" / "state.pt", weights_only=False)
    # A resumed run reads the same fingerprint: continue the 5-step run to 10 under the same settings.
    state["fingerprint"]["settings"]["steps"] = 10
    torch.save(state, tmp_path / "halves" / "state.pt")
    resumed = train_blend_generator(data, settings, tmp_path / "halves")
    assert all(torch.equal(whole.weights[k], resumed.weights[k]) for k in whole.weights)


def test_an_unknown_checkpoint_format_is_refused_in_one_line(tmp_path):
    import json

    from loragen.errors import LoragenError
    from loragen.generator.checkpoints import load_checkpoint

    (tmp_path / "generator.json").write_text(json.dumps({"format": "loragen-generator/9"}))
    (tmp_path / "generator.safetensors").write_bytes(b"")
    with pytest.raises(LoragenError, match="unknown generator checkpoint format") as caught:
        load_checkpoint(tmp_path)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- through the CLI and the registry

def test_cli_library_generator_generates_refines_and_guards_its_library(capsys, tiny_base, tmp_path, isolated_home):
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests.helpers import one_line_error, registry_with_adapters, run_cli

    ids = registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, ["upper", "lower", "title"], steps=30,
                                 key_dim=16, head_hidden=16)
    trained = run_cli(capsys, "train", "--json")
    assert trained.code == 0, trained.err
    summary = trained.json()
    assert summary["representation"] == "library" and summary["library_size"] == 3
    generated = run_cli(capsys, "generate", "--task", "upper", "--base", "tiny", "--seed", "1", "--out",
                        tmp_path / "gen", "--json")
    assert generated.code == 0, generated.err
    provenance = run_cli(capsys, "show", generated.json()["id"], "--json").json()["provenance"]
    assert provenance["representation"] == "library" and provenance["seed"] == 1
    config = json.loads((tmp_path / "gen" / "adapter_config.json").read_text())
    assert config["r"] == 2  # the registry's rank
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), tmp_path / "gen")

    # Few-shot refinement from a JSONL file of task records; its provenance names the examples and the steps.
    records = tmp_path / "examples.jsonl"
    records.write_text("".join(json.dumps({"prompt": f"{w}:", "target": f" {w.upper()}"}) + "\n"
                               for w in ("ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st")))
    refined = run_cli(capsys, "generate", "--task", "Capitalise the word", "--base", "tiny", "--examples", records,
                      "--shots", "3", "--refine-steps", "2", "--json")
    assert refined.code == 0, refined.err
    record = run_cli(capsys, "show", refined.json()["id"], "--json").json()["provenance"]["refinement"]
    assert record["shots"] == 3 and record["held_back"] == 7 and record["steps"] == 2
    assert record["examples"] == str(records) and len(record["examples_sha256"]) == 64
    assert record["kept"] in ("refined", "start")
    too_few = run_cli(capsys, "generate", "--task", "upper", "--base", "tiny", "--examples", records, "--shots", "10")
    assert "more than --shots" in one_line_error(too_few)
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text('{"prompt": "ab:", "target": " AB"}\n{"prompt": "cd:"}\n')
    assert f"{damaged}:2: not a task record" in one_line_error(
        run_cli(capsys, "generate", "--task", "upper", "--base", "tiny", "--examples", damaged, "--shots", "1"))
    several = run_cli(capsys, "generate", "--task", "upper", "--base", "tiny", "--examples", records, "--samples", "2",
                      "--validate-on", "verb_gerund")
    assert "--samples 1" in one_line_error(several)

    # The library is a registry fact: rm refuses, --force says what breaks, generate then fails in one line.
    assert "--force" in one_line_error(run_cli(capsys, "rm", ids[0]))
    forced = run_cli(capsys, "rm", ids[0], "--force", "--json")
    assert forced.code == 0 and forced.json()["broken_generators"]
    broken = run_cli(capsys, "generate", "--task", "upper", "--base", "tiny")
    assert ids[0][:12] in one_line_error(broken)


def test_train_nproc_with_a_library_generator_is_refused_in_one_line(capsys, tiny_base, tmp_path, isolated_home):
    from tests.helpers import one_line_error, registry_with_adapters, run_cli

    registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, ["upper"], steps=2)
    assert "--nproc" in one_line_error(run_cli(capsys, "train", "--nproc", "2"))
