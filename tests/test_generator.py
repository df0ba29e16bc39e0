"""The ORAL generator end to end on tiny adapters: overfit and regenerate, determinism, save/load, CLI."""

import hashlib

import pytest
import torch

from loragen.config import GeneratorSettings
from loragen.generator.model import FactorisedTokenMemory, TokenMemory
from tests.helpers import TINY_GENERATOR, registry_with_adapters, run_cli
from tests.tiny import make_lora

TINY = TINY_GENERATOR


def _training_set(tiny_base, tmp_path):
    from loragen.adapters import load_weights
    from loragen.generator.training import TrainingAdapter, TrainingSet

    adapters = []
    for index, task in enumerate(["alpha", "beta"]):
        folder = make_lora(tiny_base, tmp_path / task, seed=10 + index, r=2)
        adapters.append(TrainingAdapter(uid=f"{index:064x}", task=task, base="tiny@v1",
                                        state_dict=load_weights(folder / "adapter_model.safetensors")))
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(2, 384), dim=1)
    return TrainingSet(adapters=adapters, task_descriptions={"alpha": ["first"], "beta": ["second"]},
                       text_embeddings={"alpha": text[:1], "beta": text[1:]}, base_embeddings={"tiny@v1": torch.randn(160)},
                       lora={"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}, text_model="test")


@pytest.mark.slow
@pytest.mark.parametrize("variant", [{"memory_slots": 0, "direct_readout": False},
                                     {"memory_slots": 4, "direct_readout": True, "prototype_dim": 32},
                                     {"memory_slots": 4, "memory_code_dim": 8, "direct_readout": True,
                                      "prototype_dim": 32}],
                         ids=["mamba-only", "with-token-memory", "with-factorised-memory"])
def test_tiny_generator_overfits_two_adapters_and_regenerates_them(tiny_base, tmp_path, variant):
    from loragen.generator.sampling import LoadedGenerator, sample_state_dict
    from loragen.generator.training import train_generator

    data = _training_set(tiny_base, tmp_path)
    settings = GeneratorSettings(**dict(TINY, steps=600, **variant))
    checkpoint = train_generator(data, settings, tmp_path / "run")
    # Saved and loaded again: the memory's kind and code width travel with the checkpoint.
    checkpoint = type(checkpoint).load(checkpoint.save(tmp_path / "saved"))
    generator = LoadedGenerator(uid="x", checkpoint=checkpoint, model=checkpoint.build_model())
    expected = {0: type(None), 4: FactorisedTokenMemory if variant.get("memory_code_dim") else TokenMemory}
    assert isinstance(generator.model.memory, expected[variant["memory_slots"]])
    base = data.base_embeddings["tiny@v1"]
    for index, adapter in enumerate(data.adapters):
        text = data.text_embeddings[adapter.task][0]
        sample = sample_state_dict(generator, text, base, seed=0, method="ddim", steps=25, eta=0.0)
        own = torch.cat([v.flatten() for v in adapter.state_dict.values()])
        other = torch.cat([v.flatten() for v in data.adapters[1 - index].state_dict.values()])
        made = torch.cat([sample[k].flatten() for k in adapter.state_dict])
        cos_own = torch.nn.functional.cosine_similarity(made, own, dim=0)
        cos_other = torch.nn.functional.cosine_similarity(made, other, dim=0)
        assert cos_own > 0.9, cos_own          # close to the adapter its condition names
        assert cos_own > cos_other + 0.3       # and not to the other one


def test_checkpoint_save_load_and_same_seed_same_adapter(tiny_base, tmp_path):
    from loragen.generator.sampling import LoadedGenerator, sample_state_dict
    from loragen.generator.training import GeneratorCheckpoint, train_generator

    data = _training_set(tiny_base, tmp_path)
    checkpoint = train_generator(data, GeneratorSettings(**dict(TINY, steps=4, memory_slots=2, direct_readout=True)),
                                 tmp_path / "run")
    folder = checkpoint.save(tmp_path / "ckpt")
    loaded = GeneratorCheckpoint.load(folder)
    assert loaded.metadata() == checkpoint.metadata()
    assert checkpoint.anchor and loaded.anchor.keys() == checkpoint.anchor.keys()
    assert all(torch.equal(loaded.anchor[k], checkpoint.anchor[k]) for k in checkpoint.anchor)
    assert all(torch.equal(loaded.weights[k], checkpoint.weights[k]) for k in checkpoint.weights)
    text, base = data.text_embeddings["alpha"][0], data.base_embeddings["tiny@v1"]
    samples = []
    for ckpt in (checkpoint, loaded, loaded):
        generator = LoadedGenerator(uid="x", checkpoint=ckpt, model=ckpt.build_model())
        samples.append(sample_state_dict(generator, text, base, seed=7, method="ddim", steps=5, eta=0.0))
    assert all(torch.equal(samples[0][k], s[k]) for s in samples[1:] for k in samples[0])
    other_seed = sample_state_dict(generator, text, base, seed=8, method="ddim", steps=5, eta=0.0)
    assert not all(torch.equal(samples[0][k], other_seed[k]) for k in other_seed)


def test_interrupted_generator_training_resumes_identically(tiny_base, tmp_path):
    from loragen.generator.training import train_generator

    data = _training_set(tiny_base, tmp_path)
    settings = GeneratorSettings(**dict(TINY, steps=6, checkpoint_every=3))
    straight = train_generator(data, settings, tmp_path / "a")

    class Killed(Exception):
        pass

    def die(step, total, loss):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train_generator(data, settings, tmp_path / "b", progress=die)
    resumed = train_generator(data, settings, tmp_path / "b")
    assert resumed.training["resumed_from_step"] == 3
    assert all(torch.equal(straight.weights[k], resumed.weights[k]) for k in straight.weights)


def test_mixed_layouts_are_refused(tiny_base, tmp_path):
    from loragen.adapters import load_weights
    from loragen.errors import LoragenError
    from loragen.generator.training import TrainingAdapter, common_layout

    r2 = load_weights(make_lora(tiny_base, tmp_path / "r2", r=2) / "adapter_model.safetensors")
    r4 = load_weights(make_lora(tiny_base, tmp_path / "r4", r=4) / "adapter_model.safetensors")
    with pytest.raises(LoragenError, match="2 different layouts"):
        common_layout([TrainingAdapter("a" * 64, "t", "b@v1", r2), TrainingAdapter("b" * 64, "t", "b@v1", r4)], 32)


def _sha(folder):
    return hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_cli_train_generate_registers_provenance_and_loads_in_peft(capsys, tiny_base, tmp_path, isolated_home):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loragen.config import DDPM_TRAIN_TIMESTEPS

    registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, ["upper", "lower", "upper"], steps=8)
    trained = run_cli(capsys, "train", "--json")
    assert trained.code == 0, trained.err
    summary = trained.json()
    assert summary["adapters"] == 3 and summary["tasks"] == ["lower", "upper"] and summary["bases"] == ["tiny@v1"]
    assert run_cli(capsys, "list", "generators", "--json").json()[0]["id"] == summary["id"]

    first = run_cli(capsys, "generate", "--task", "Turn every word into capitals", "--base", "tiny", "--seed", "3",
                    "--out", tmp_path / "gen", "--json")
    assert first.code == 0, first.err
    result = first.json()
    assert result["task"] == "turn-every-word-into-capitals" and result["created"]
    shown = run_cli(capsys, "show", result["id"], "--json").json()
    assert shown["origin"] == "generated"
    provenance = shown["provenance"]
    assert provenance["generator"].startswith(summary["id"]) and provenance["seed"] == 3
    assert provenance["condition"] == "Turn every word into capitals"
    again = run_cli(capsys, "generate", "--task", "Turn every word into capitals", "--base", "tiny", "--seed", "3",
                    "--out", tmp_path / "gen2", "--json").json()
    assert not again["created"] and again["id"] == result["id"]          # same seed, same adapter
    assert _sha(tmp_path / "gen") == _sha(tmp_path / "gen2")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), tmp_path / "gen")
    assert model(torch.tensor([[1, 5, 9]])).logits.shape[-1] > 0
    known = run_cli(capsys, "generate", "--task", "upper", "--base", "tiny", "--json").json()
    assert known["task"] == "upper" and known["condition"] == "make words uppercase"
    ddpm = run_cli(capsys, "generate", "--task", "upper", "--base", "tiny", "--method", "ddpm", "--seed", "1", "--json")
    assert ddpm.code == 0, ddpm.err
    ddpm_provenance = run_cli(capsys, "show", ddpm.json()["id"], "--json").json()["provenance"]
    assert ddpm_provenance["method"] == "ddpm" and ddpm_provenance["steps"] == DDPM_TRAIN_TIMESTEPS


def test_generate_without_a_generator_is_a_clear_error(capsys, tiny_base):
    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0
    result = run_cli(capsys, "generate", "--task", "anything", "--base", "tiny")
    assert result.code == 1 and "no generator has been trained yet" in result.err
    empty = run_cli(capsys, "train")
    assert empty.code == 1 and "no trained or ingested adapters" in empty.err


@pytest.mark.slow
@pytest.mark.parametrize("task_loss", [False, True], ids=["diffusion", "with-task-loss"])
def test_data_parallel_training_with_two_cpu_processes(capsys, tiny_base, tmp_path, isolated_home, task_loss):
    """`loragen train --nproc 2` runs torchrun with gloo; both ranks end with the same weights, also when the task
    loss (which runs the generator outside its loss forward) adds its gradients."""
    import json
    import os
    import subprocess
    import sys

    extra = dict(task_loss_weight=1.0, task_loss_every=2, task_examples_per_step=2) if task_loss else {}
    registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, ["element_symbol", "noun_singular"], steps=4,
                           representation="raw", **extra)  # data-parallel training is the raw generator's
    env = dict(os.environ, LORAGEN_HOME=str(isolated_home), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "loragen", "train", "--nproc", "2", "--json"], env=env,
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["world_size"] == 2
    assert (summary["final_task_loss"] is not None) == task_loss
    digests = summary["weights_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert [g["id"] for g in run_cli(capsys, "list", "generators", "--json").json()] == [summary["id"]]


@pytest.mark.slow
def test_generate_samples_keeps_the_best_candidate_on_validation(capsys, tiny_base, tmp_path, isolated_home):
    registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, ["element_symbol"] * 2, steps=4)
    assert run_cli(capsys, "train").code == 0
    result = run_cli(capsys, "generate", "--task", "element_symbol", "--base", "tiny", "--samples", "2",
                     "--select-limit", "2", "--json")
    assert result.code == 0, result.err
    report = result.json()
    candidates = report["candidates"]
    assert [c["seed"] for c in candidates] == [0, 1]
    assert all(c["metric"] == "exact_match" and 0 <= c["score"] <= 1 for c in candidates)
    best = max(candidates, key=lambda c: (c["score"], -c["seed"]))
    assert report["seed"] == best["seed"]
    provenance = run_cli(capsys, "show", report["id"], "--json").json()["provenance"]
    assert provenance["candidates"] == candidates and provenance["seed"] == best["seed"]
    table = run_cli(capsys, "generate", "--task", "element_symbol", "--base", "tiny", "--samples", "2",
                    "--select-limit", "2", "--seed", "5")
    assert table.code == 0 and "VALIDATION" in table.out and "kept seed" in table.err


def test_chunked_denoising_gives_the_same_tokens(tiny_base, tmp_path):
    from loragen.generator.sampling import sample_tokens
    from loragen.generator.training import train_generator

    data = _training_set(tiny_base, tmp_path)
    checkpoint = train_generator(data, GeneratorSettings(**dict(TINY, steps=2)), tmp_path / "run")
    model, layout = checkpoint.build_model(), checkpoint.layout
    positions = (layout.layer_index(), layout.module_index(), layout.slice_index())
    text, base = data.text_embeddings["alpha"][0], data.base_embeddings["tiny@v1"]
    whole, chunked = (sample_tokens(model, checkpoint.schedule, positions, text, base, None, method="ddim", steps=3, eta=0.0,
                                    generator=torch.Generator().manual_seed(0), chunk_tokens=size)
                      for size in (10_000, 3))
    assert torch.allclose(whole, chunked, atol=1e-6)


def _config(base_dim: int = 4, settings=None):
    """The network config of `settings` (default: TINY), for a one-module r=2 layout of 2 tokens."""
    from loragen.generator.model import generator_config_from_settings
    from loragen.generator.tokenizer import LoraLayout

    layout = LoraLayout.from_shapes({"base_model.model.layers.0.q_proj.lora_A.weight": (2, 8),
                                     "base_model.model.layers.0.q_proj.lora_B.weight": (8, 2)}, 32)
    return generator_config_from_settings(settings or GeneratorSettings(**TINY), layout, text_dim=8,
                                          base_dim=base_dim, num_adapters=2)


def test_base_scaling_does_not_blow_up_a_dimension_that_barely_moved():
    from loragen.generator.model import Condition

    condition = Condition(_config(base_dim=3))
    condition.fit_base_scaling(torch.tensor([[0.0, 0.0, 5.0], [2.0, 2.0, 5.000001]]))
    unseen = torch.tensor([2.0, 2.0, 6.0])  # a later version that moves the quiet dimension a little more
    standardised = (unseen - condition.base_shift) / condition.base_scale
    assert torch.allclose(standardised[:2], torch.tensor([1.0, 1.0]), atol=1e-3)
    assert 1.0 < standardised[2] < 2.0  # not 1e6: divided by the typical spread, not its own
    constant = Condition(_config(base_dim=2))
    constant.fit_base_scaling(torch.tensor([[1.0, 3.0], [1.0, 3.0]]))
    assert torch.equal(constant.base_scale, torch.ones(2))


def test_network_config_comes_from_the_settings():
    from dataclasses import MISSING, fields

    from loragen.config import GeneratorNetworkSettings
    from loragen.generator.model import NETWORK_SETTINGS, GeneratorConfig

    settings = GeneratorSettings(**dict(TINY, memory_code_dim=4, permutation_states=True))
    config = _config(settings=settings)
    assert _config(settings=settings.network) == config   # the network section alone builds the same network
    copied = [f.name for f in fields(GeneratorConfig) if f.name in NETWORK_SETTINGS]
    assert {"token_size", "d_model", "n_layers", "d_state", "prototype_dim", "direct_readout", "memory_slots",
            "memory_code_dim", "denoiser_channels"} == set(copied)
    for name in copied:
        value = getattr(settings, name)
        assert getattr(config, name) == (tuple(value) if isinstance(value, list) else value), name
    assert config.num_tokens == 2 and config.num_permutation_states == 2  # memory on (16 slots), one state each
    assert _config().memory_code_dim == 0 and _config().num_permutation_states == 0
    # Every network setting reaches a network: copied, or read to derive it (anchor: what the tokens hold); the
    # library generator's own (representation picks the network; key_dim and head_hidden size it).
    library_only = {"representation", "key_dim", "head_hidden"}
    assert set(copied) | {"permutation_states", "anchor"} | library_only == {f.name for f in fields(GeneratorNetworkSettings)}
    from loragen.generator.blend_model import blend_config_from_settings

    blend = blend_config_from_settings(GeneratorSettings(key_dim=24, head_hidden=40), library_size=3, num_slots=4,
                                       num_module_types=2, text_dim=8, base_dim=6)
    assert (blend.key_dim, blend.head_hidden) == (24, 40)
    # No defaults of its own: a field the settings do not fill cannot silently take a stale value.
    assert all(f.default is MISSING and f.default_factory is MISSING for f in fields(GeneratorConfig))


def test_a_checkpoint_of_the_earlier_format_still_loads(tiny_base, tmp_path):
    """Earlier checkpoints' configs carry `max_layers`, which nothing read; they load without it."""
    import json

    from loragen.errors import LoragenError
    from loragen.generator.training import META_FILE, GeneratorCheckpoint, train_generator

    checkpoint = train_generator(_training_set(tiny_base, tmp_path), GeneratorSettings(**dict(TINY, steps=1)),
                                 tmp_path / "run")
    folder = checkpoint.save(tmp_path / "ckpt")
    meta = json.loads((folder / META_FILE).read_text())
    meta["config"]["max_layers"] = 256
    (folder / META_FILE).write_text(json.dumps(meta))
    assert GeneratorCheckpoint.load(folder).config == checkpoint.config
    meta["config"]["no_such_field"] = 1
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(LoragenError, match="damaged generator checkpoint"):
        GeneratorCheckpoint.load(folder)


def test_a_generator_trained_on_another_base_embedding_format_is_refused(capsys, tiny_base, tmp_path, isolated_home,
                                                                        monkeypatch):
    """Bumping BASE_EMBED_FORMAT_VERSION recomputes the cached base embeddings (test_conditioning); a generator
    trained on the old format would read the new ones as another base, so generate refuses it in one line."""
    import loragen.generator.conditioning as conditioning

    registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, ["upper", "lower"], steps=2)
    assert run_cli(capsys, "train").code == 0
    from loragen.cli.context import state
    from loragen.generator.checkpoints import load_checkpoint
    from loragen.generator.training import META_FILE, WEIGHTS_FILE

    folder, _ = state.registry.generator_folder(None, weights_name=WEIGHTS_FILE, meta_name=META_FILE)
    assert load_checkpoint(folder).base_embed_format == conditioning.BASE_EMBED_FORMAT_VERSION
    monkeypatch.setattr(conditioning, "BASE_EMBED_FORMAT_VERSION", conditioning.BASE_EMBED_FORMAT_VERSION + 1)
    refused = run_cli(capsys, "generate", "--task", "upper", "--base", "tiny")
    assert refused.code == 1 and "trained on base embeddings of format" in refused.err
    assert refused.err.count("\n") == 1


def test_factorised_memory_is_linear_in_tokens_with_a_small_constant_and_starts_silent():
    """docs/token-memory-proposal.md's arithmetic, counted on the modules: a factorised memory built at a 7B r64
    adapter's token count, against the full tables' per-token cost measured on a small one."""
    slots, prototype, code = 16, 1024, 64

    def size(module):
        return sum(p.numel() for name, p in module.named_parameters() if not name.startswith("mixture"))

    small, large = (FactorisedTokenMemory(slots, n, 32, prototype, code) for n in (1_000, 2_000))
    assert size(large) - size(small) == 1_000 * code  # each further token costs its code row only
    tokens_7b = 156_160  # Llama-2-7B r64 on every linear layer, 1024 values a token
    factorised_7b = size(FactorisedTokenMemory(slots, tokens_7b, 32, prototype, code))
    full_per_token = size(TokenMemory(slots, 1_000, 32, prototype)) // 1_000
    assert factorised_7b * 4 < 50 * 2**20                       # about 44 MB of float32
    assert full_per_token * tokens_7b * 4 > 9 * 2**30           # the full tables: about 10 GB
    assert factorised_7b / (tokens_7b * prototype) < 0.1        # under 0.1 memory values per adapter value
    condition = torch.randn(3, 32)
    assert torch.count_nonzero(small(condition)) == 0  # adds nothing before training
    small(condition).sum().backward()
    assert small.maps.grad is not None and small.maps.grad.abs().sum() > 0  # yet the maps learn from step one
    assert small.per_token_parameters() == [small.codes]


def test_checkpoint_configs_without_a_code_width_load_as_full_tables():
    from loragen.generator.model import GeneratorConfig, TokenMemory, token_memory

    config = dict(token_size=4, d_model=8, n_layers=1, d_state=2, prototype_dim=4, denoiser_channels=[8],
                  direct_readout=False, memory_slots=2, num_tokens=3, text_dim=4, base_dim=4,
                  num_permutation_states=0, num_module_types=64)
    loaded = GeneratorConfig.from_dict(config)
    assert loaded.memory_code_dim == 0 and isinstance(token_memory(loaded), TokenMemory)
