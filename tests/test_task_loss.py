"""The task loss: functional LoRA application, gradients into the generator, a measurable drop, the split honoured."""

import pytest
import torch

from loragen.config import GeneratorSettings
from loragen.errors import LoragenError
from tests.helpers import TINY_GENERATOR, run_cli
from tests.tiny import make_lora

# The answer each tiny task teaches after any prompt: a LoRA on the random tiny base can learn it.
TINY_TASKS = {"alpha": "aaaa", "beta": "bbbb"}


def tiny_examples(answer: str, count: int = 24, seed: int = 0) -> list[tuple[str, str]]:
    words = torch.randint(0, 26, (count, 5), generator=torch.Generator().manual_seed(seed))
    return [("".join(chr(97 + int(c)) for c in row) + ":", answer) for row in words]


def tiny_task_set(tiny_base, folder, *, r: int = 2):
    """Two tasks on the tiny base, one random LoRA each, with training examples and a base loader."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loragen.adapters import load_weights
    from loragen.generator.training import TrainingAdapter, TrainingSet

    adapters = []
    for index, task in enumerate(TINY_TASKS):
        lora = make_lora(tiny_base, folder / task, seed=10 + index, r=r)
        adapters.append(TrainingAdapter(uid=f"{index:064x}", task=task, base="tiny@v1",
                                        state_dict=load_weights(lora / "adapter_model.safetensors")))
    text = torch.nn.functional.normalize(torch.randn(4, 384, generator=torch.Generator().manual_seed(0)), dim=1)
    return TrainingSet(
        adapters=adapters, task_descriptions={"alpha": ["a1", "a2"], "beta": ["b1", "b2"]},
        text_embeddings={"alpha": text[:2], "beta": text[2:]},
        base_embeddings={"tiny@v1": torch.randn(160, generator=torch.Generator().manual_seed(1))},
        lora={"r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj", "v_proj"]}, text_model="test",
        task_examples={task: tiny_examples(answer, seed=i) for i, (task, answer) in enumerate(TINY_TASKS.items())},
        load_base=lambda label: (AutoModelForCausalLM.from_pretrained(tiny_base), AutoTokenizer.from_pretrained(tiny_base)))


def held_in_loss(checkpoint, data, *, seed: int = 0, examples: int = 24) -> float:
    """Mean over tasks and their descriptions of the base's answer loss with the generated adapter."""
    from loragen.finetune import collate, encode_examples
    from loragen.generator.sampling import LoadedGenerator, sample_state_dict
    from loragen.generator.task_loss import base_loss

    model, tokenizer = data.load_base("tiny@v1")
    generator = LoadedGenerator(uid="", checkpoint=checkpoint, model=checkpoint.build_model())
    scale = data.lora["lora_alpha"] / data.lora["r"]
    losses = []
    for task, pairs in data.task_examples.items():
        batch = collate(encode_examples(tokenizer, pairs[:examples]), tokenizer.pad_token_id)
        for text in data.text_embeddings[task]:
            adapter = sample_state_dict(generator, text, data.base_embeddings["tiny@v1"], seed=seed, method="ddim",
                                        steps=checkpoint.training["settings"]["sample_steps"], eta=0.0)
            losses.append(base_loss(model, batch, adapter, scale))
    return sum(losses) / len(losses)


def test_functional_lora_gives_peft_logits_and_leaves_the_base_alone(tiny_base, tiny_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loragen.adapters import load_weights
    from loragen.generator.functional_lora import applied_lora

    ids = torch.tensor([[5, 10, 20, 30, 40, 12, 7]])
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    before = base(input_ids=ids).logits
    weights = load_weights(tiny_adapter / "adapter_model.safetensors")
    with torch.no_grad(), applied_lora(base, weights, scale=8 / 4):           # make_lora: r=4, alpha=8
        ours = base(input_ids=ids).logits
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), tiny_adapter).eval()
    with torch.no_grad():
        theirs = reference(input_ids=ids).logits
    assert not torch.allclose(ours, before, atol=1e-3)                        # the adapter changes the outputs
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(base(input_ids=ids).logits, before)            # hooks gone after the block
    with pytest.raises(RuntimeError, match="inside"), applied_lora(base, weights, scale=2.0):
        raise RuntimeError("inside")
    torch.testing.assert_close(base(input_ids=ids).logits, before)            # ... however the block is left
    only_a = {k: v for k, v in weights.items() if "lora_B" not in k}
    with pytest.raises(LoragenError, match="lacks its lora_A or lora_B"), applied_lora(base, only_a, scale=2.0):
        pass


@pytest.mark.parametrize("timestep", ["noise", "sampled"])
def test_task_loss_gradient_reaches_the_generator_and_not_the_base(tiny_base, tmp_path, timestep):
    from loragen.finetune import collate, encode_examples
    from loragen.generator.diffusion import DDPMSchedule
    from loragen.generator.model import ORALGenerator, generator_config_from_settings
    from loragen.generator.task_loss import task_loss
    from loragen.generator.tokenizer import LoraLayout, NormStats, tokenize
    from loragen.generator.training import mean_adapter, subtract

    data = tiny_task_set(tiny_base, tmp_path)
    settings = GeneratorSettings(**dict(TINY_GENERATOR, memory_slots=2))
    layout = LoraLayout.from_state_dict(data.adapters[0].state_dict, settings.token_size)
    stats = NormStats.fit([a.state_dict for a in data.adapters], layout)
    anchor = mean_adapter(data.adapters)
    clean = torch.stack([tokenize(subtract(a.state_dict, anchor), layout, stats)[0] for a in data.adapters])
    torch.manual_seed(0)
    model = ORALGenerator(generator_config_from_settings(settings, layout, text_dim=384, base_dim=160, num_adapters=2))
    base, tokenizer = data.load_base("tiny@v1")
    base.requires_grad_(False)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    batches = [collate(encode_examples(tokenizer, data.task_examples[t][:4]), tokenizer.pad_token_id) for t in TINY_TASKS]
    text = torch.cat([data.text_embeddings["alpha"][:1], data.text_embeddings["beta"][:1]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):  # the denoiser's output layers start at zero: upstream gradients appear after one step
        optimizer.zero_grad()
        loss = task_loss(model, DDPMSchedule(prediction_type="sample"), layout, stats, anchor, 2.0,
                         (layout.layer_index(), layout.module_index(), layout.slice_index()), text,
                         data.base_embeddings["tiny@v1"].expand(2, -1), None, [base, base], batches,
                         timestep=timestep, clean=clean, generator=torch.Generator().manual_seed(0))
        loss.backward()
        optimizer.step()
    for part in (model.backbone, model.denoiser, model.condition.text, model.memory):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), type(part).__name__
    assert all(p.grad is None for p in base.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in base.state_dict().items())


def test_checkpointed_chunks_give_the_same_loss_and_gradients(tiny_base, tmp_path):
    from loragen.generator.diffusion import DDPMSchedule
    from loragen.generator.model import ORALGenerator, generator_config_from_settings
    from loragen.generator.task_loss import predicted_tokens
    from loragen.generator.tokenizer import LoraLayout

    data = tiny_task_set(tiny_base, tmp_path)
    settings = GeneratorSettings(**dict(TINY_GENERATOR, memory_slots=2))
    layout = LoraLayout.from_state_dict(data.adapters[0].state_dict, settings.token_size)
    torch.manual_seed(0)
    model = ORALGenerator(generator_config_from_settings(settings, layout, text_dim=384, base_dim=160, num_adapters=2))
    torch.nn.init.normal_(model.denoiser.out_conv.weight, std=0.1)           # let gradients through the conv stack
    text = torch.cat([data.text_embeddings["alpha"], data.text_embeddings["beta"]])
    runs = []
    for chunk in (10**6, 7):                                                 # whole vs. checkpointed 7-token chunks
        model.zero_grad()
        tokens = predicted_tokens(model, DDPMSchedule(prediction_type="sample"),
                                  (layout.layer_index(), layout.module_index(), layout.slice_index()), text,
                                  data.base_embeddings["tiny@v1"].expand(4, -1), None, timestep="noise",
                                  generator=torch.Generator().manual_seed(0), chunk_tokens=chunk)
        (tokens ** 2).mean().backward()
        runs.append((tokens.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    assert layout.num_tokens * 4 > 7 and runs[0][1].keys() == runs[1][1].keys()
    torch.testing.assert_close(runs[0][0], runs[1][0])
    for name, grad in runs[0][1].items():
        torch.testing.assert_close(grad, runs[1][1][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.slow
def test_training_with_the_task_loss_lowers_the_base_loss_on_its_tasks(tiny_base, tmp_path):
    """The training adapters here are random LoRAs, no help on the tasks: only the task loss can lower the loss."""
    from loragen.generator.training import train_generator

    data = tiny_task_set(tiny_base, tmp_path)
    common = dict(TINY_GENERATOR, memory_slots=2, sample_steps=10, seed=3)
    untrained = train_generator(data, GeneratorSettings(**dict(common, steps=1, learning_rate=1e-9)), tmp_path / "u")
    diffusion_only = train_generator(data, GeneratorSettings(**dict(common, steps=60)), tmp_path / "d")
    trained = train_generator(data, GeneratorSettings(**dict(common, steps=60, task_loss_weight=5.0,
                                                             task_examples_per_step=8)), tmp_path / "t")
    before, without, after = (held_in_loss(c, data) for c in (untrained, diffusion_only, trained))
    assert after < before - 0.1 and after < without - 0.1, (before, without, after)
    assert trained.training["settings"]["task_loss_weight"] == 5.0 and trained.training["final_task_loss"] is not None


@pytest.mark.slow
def test_a_run_with_the_task_loss_resumes_identically(tiny_base, tmp_path):
    from loragen.generator.training import train_generator

    data = tiny_task_set(tiny_base, tmp_path)
    settings = GeneratorSettings(**dict(TINY_GENERATOR, steps=6, checkpoint_every=3, memory_slots=2,
                                        task_loss_weight=0.5, task_loss_every=2, task_examples_per_step=4))
    straight = train_generator(data, settings, tmp_path / "a")

    def die(step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_generator(data, settings, tmp_path / "b", progress=die)
    resumed = train_generator(data, settings, tmp_path / "b")
    assert resumed.training["resumed_from_step"] == 3
    assert all(torch.equal(straight.weights[k], resumed.weights[k]) for k in straight.weights)


def test_task_loss_settings_are_checked_and_need_examples(tiny_base, tmp_path):
    from dataclasses import replace

    from loragen.generator.training import train_generator

    for bad in ({"task_loss_weight": -1.0}, {"task_loss_weight": float("nan")}, {"task_loss_every": 0},
                {"task_examples_per_step": 0}, {"task_descriptions_per_step": 0}, {"task_loss_timestep": "late"}):
        with pytest.raises(LoragenError, match="generator.task_"):
            GeneratorSettings(**bad)
    assert GeneratorSettings().task_loss_weight == 0.0                      # off until measured on real tasks
    data = replace(tiny_task_set(tiny_base, tmp_path), task_examples={})     # a user's tasks, without data
    with pytest.raises(LoragenError, match="none of the training tasks has training examples"):
        train_generator(data, GeneratorSettings(**dict(TINY_GENERATOR, steps=1, task_loss_weight=1.0)), tmp_path / "r")
    assert train_generator(data, GeneratorSettings(**dict(TINY_GENERATOR, steps=1)), tmp_path / "d").training["steps"] == 1


def test_held_out_tasks_and_descriptions_never_enter_the_training_set(capsys, tiny_base, tmp_path, isolated_home):
    from loragen.cli.context import state
    from loragen.tasks.split import load_split
    from loragen.tasks.suite import get_task
    from loragen.workflows import collect_training_set

    split = load_split()
    held_task, seen_task, other_seen = split.held_out_tasks[0], split.seen_tasks[0], split.seen_tasks[1]
    kept_out = split.held_out_descriptions[seen_task]
    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0
    ingests = [(held_task, get_task(held_task).descriptions[0]), (seen_task, kept_out),
               (seen_task, get_task(seen_task).descriptions[0] if get_task(seen_task).descriptions[0] != kept_out
                else get_task(seen_task).descriptions[1]),
               (other_seen, split.held_out_descriptions[other_seen]), ("mytask", "my own words")]
    for index, (task, description) in enumerate(ingests):
        folder = make_lora(tiny_base, tmp_path / f"l{index}", seed=index, r=2)
        result = run_cli(capsys, "ingest", folder, "--base", "tiny", "--task", task, "-d", description, "--json")
        assert result.code == 0, result.err

    data = collect_training_set(state.registry, split=split)
    tasks = {a.task for a in data.adapters}
    assert tasks == {seen_task, other_seen, "mytask"}
    for table in (data.task_descriptions, data.text_embeddings, data.task_examples):
        assert held_task not in table
    every_text = [text for texts in data.task_descriptions.values() for text in texts]
    assert kept_out not in every_text and split.held_out_descriptions[other_seen] not in every_text
    # other_seen was registered with its held-out description only: it trains on the suite's others
    assert data.task_descriptions[other_seen] == split.training_descriptions(get_task(other_seen))
    assert data.text_embeddings[seen_task].shape[0] == len(data.task_descriptions[seen_task])
    assert data.task_examples[seen_task] == get_task(seen_task).examples("train")
    assert "mytask" not in data.task_examples                               # no bundled data: diffusion loss only

    unsplit = collect_training_set(state.registry)                          # without a split, as before
    assert held_task in {a.task for a in unsplit.adapters} and kept_out in unsplit.task_descriptions[seen_task]


def test_train_with_split_leaves_the_held_out_tasks_out(capsys, tiny_base, tmp_path, isolated_home):
    """`loragen train --split`: the committed split's held-out tasks are neither trained on nor forgotten (the
    checkpoint lists them as held out); without --split they train as before."""
    from loragen.tasks.split import load_split
    from tests.helpers import registry_with_adapters

    split = load_split()
    held, seen = split.held_out_tasks[0], split.seen_tasks[0]
    registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, [held, seen, seen], steps=2)
    with_split = run_cli(capsys, "train", "--split", "--json")
    assert with_split.code == 0, with_split.err
    summary = with_split.json()
    assert summary["tasks"] == [seen] and held in summary["held_out"]
    assert set(split.held_out_tasks) <= set(summary["held_out"])
    without = run_cli(capsys, "train", "--steps", "3", "--json").json()
    assert sorted(without["tasks"]) == sorted([held, seen]) and without["held_out"] == []
