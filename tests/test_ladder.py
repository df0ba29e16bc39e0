"""bench/evolve_base.py's version ladder: its recipe, its corpus readers, and one rung made on a tiny base."""

import gzip

import pytest
import torch

from bench import evolve_base
from bench.evolve_base import (
    LADDER,
    Rung,
    continue_pretraining,
    make_rung,
    prepare_rung,
    register_rung,
    weight_distance,
    wordnet_glosses,
)
from loragen.errors import LoragenError


def test_ladder_has_versions_of_several_kinds_two_unseen_ones_and_far_training_branches():
    versions = [r.version for r in LADDER]
    assert versions == list(range(2, 2 + len(LADDER))) and len(LADDER) >= 8  # numbered in order from v1
    assert {r.kind for r in LADDER} == {"continued pretraining", "instruction"}
    roles = {r.version: r.role for r in LADDER}
    assert (roles[6], roles[7]) == ("near", "far") and list(roles.values()).count("train") == len(LADDER) - 2
    assert 1 + list(roles.values()).count("train") >= 4  # v1 and the train rungs carry adapters
    # No training version evolves from an unseen one (it would carry the test version's weights), and each
    # parent exists before its child.
    for rung in LADDER:
        assert rung.parent_version < rung.version
        if rung.role == "train":
            assert roles.get(rung.parent_version, "train") == "train"
    # The far version is trained harder than every chain rung; issue 21's branches are trained as hard as it is.
    far = next(r for r in LADDER if r.role == "far")
    chain = [r for r in LADDER if r.parent is None and r is not far]
    branches = [r for r in LADDER if r.parent is not None]
    assert all(far.learning_rate * far.steps > r.learning_rate * r.steps for r in chain)
    assert branches and all(r.learning_rate * r.steps >= far.learning_rate * far.steps for r in branches)


def test_issue_4s_versions_keep_their_recipe_and_note_so_a_registry_that_has_them_reuses_them():
    assert LADDER[0].note("smollm2-135m@v1", 4, 128, 0) == (
        "continued pretraining of smollm2-135m@v1: GCIDE slice 1/2, 120 steps of 4x128 tokens, lr 0.0002, seed 0")


def test_wordnet_glosses_and_freedict_text_are_read_from_the_package_files(tmp_path, monkeypatch):
    (tmp_path / "data.noun").write_text(
        "  1 This software and database is being provided\n"
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived to have its own existence\n"
        "00002137 03 n 02 abstraction 0 abstract_entity 0 010 | a general concept formed by extracting features\n")
    for part in ("verb", "adj", "adv"):
        (tmp_path / f"data.{part}").write_text("")
    assert wordnet_glosses(tmp_path) == [("entity", "that which is perceived to have its own existence"),
                                         ("abstraction", "a general concept formed by extracting features")]
    # A dictd pair: the .dict (gzip) and an index of headword, byte offset and length in dictd's base64 digits.
    body = "00-database-info\nThis is the header\n\nmore licence\nHaus /haʊs/\nhouse\nBaum\ntree\n".encode()
    with gzip.open(tmp_path / "freedict-xxx-eng.dict.dz", "wb") as handle:
        handle.write(body)
    haus, baum = body.index("Haus".encode()), body.index(b"Baum")

    def b64(number):
        digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        return digits[number // 64] + digits[number % 64]

    (tmp_path / "freedict-xxx-eng.index").write_text(
        f"00databaseinfo\t{b64(0)}\t{b64(haus)}\nBaum\t{b64(baum)}\t{b64(len(body) - baum)}\n"
        f"Haus\t{b64(haus)}\t{b64(baum - haus)}\nHäuser\t{b64(haus)}\t{b64(baum - haus)}\n")
    assert evolve_base.freedict_text("xxx-eng", tmp_path) == "Baum tree\nHaus /haʊs/ house"
    with pytest.raises(SystemExit, match="apt-get install dict-freedict-yyy-eng"):
        evolve_base.freedict_text("yyy-eng", tmp_path)


@pytest.mark.slow
def test_a_rung_on_a_tiny_base_is_registered_with_its_recipe_and_the_same_seed_gives_the_same_weights(
        tmp_path, tiny_base, monkeypatch):
    from loragen.config import RegistryConfig
    from loragen.registry.store import Registry
    from loragen.workflows import load_base

    monkeypatch.setattr(evolve_base, "corpus_text", lambda corpus, tokenizer: "the quick brown fox jumps. " * 40)
    rung = Rung(2, "continued pretraining", "toy", "a toy text", steps=3, learning_rate=1e-3, role="train")
    weights = []
    for attempt in range(2):
        registry = Registry(RegistryConfig(home=str(tmp_path / f"home{attempt}")))
        registry.add_base("tiny", str(tiny_base))
        record = make_rung(registry, rung, batch_size=2, length=16, seed=0, out=tmp_path / f"evolved{attempt}",
                           base="tiny", zero_shot_tasks=["element_symbol"], zero_shot_limit=2, log=lambda line: None)
        assert 0 <= record["zero_shot_parent"] <= 1 and 0 <= record["zero_shot"] <= 1
        [v2] = [row for row in registry.list_bases() if row["name"] == "tiny@v2"]
        assert v2["parent"] == "tiny@v1" and v2["note"] == rung.note("tiny@v1", 2, 16, 0)
        assert record["weight_change_vs_parent"] > 0 and record["base_embedding_distance_vs_parent"] > 0
        weights.append(load_base(registry, "tiny@v2").model.state_dict())
        assert not list((tmp_path / f"evolved{attempt}").glob("*training-state*"))  # removed once registered
    assert weight_distance(weights[0], weights[1]) == 0.0
    # A branch: v3 evolved from v1, numbered after v2, with its lineage and its distances measured from v1.
    branch = Rung(3, "continued pretraining", "toy", "a toy text", steps=3, learning_rate=1e-3, role="train", parent=1)
    record = make_rung(registry, branch, batch_size=2, length=16, seed=1, out=tmp_path / "evolved-branch",
                       base="tiny", zero_shot_tasks=[], log=lambda line: None)
    [v3] = [row for row in registry.list_bases() if row["name"] == "tiny@v3"]
    assert v3["parent"] == "tiny@v1" and v3["note"] == branch.note("tiny@v1", 2, 16, 1) and record["parent"] == "tiny@v1"
    v1 = load_base(registry, "tiny@v1").model.state_dict()
    assert record["weight_change_vs_parent"] == pytest.approx(
        weight_distance(v1, load_base(registry, "tiny@v3").model.state_dict()), rel=1e-6)


def test_a_branch_trained_ahead_with_prepare_is_registered_in_its_turn_with_the_same_weights(
        tmp_path, tiny_base, monkeypatch):
    from loragen.config import RegistryConfig
    from loragen.registry.store import Registry
    from loragen.workflows import load_base

    monkeypatch.setattr(evolve_base, "corpus_text", lambda corpus, tokenizer: "the quick brown fox jumps. " * 40)
    chain = Rung(2, "continued pretraining", "toy", "a toy text", steps=3, learning_rate=1e-3, role="train")
    branch = Rung(3, "continued pretraining", "toy", "a toy text", steps=4, learning_rate=1e-3, role="train", parent=1)
    settings = {"batch_size": 2, "length": 16, "base": "tiny", "log": lambda line: None}
    weights, lines = [], []
    for prepared in (False, True):
        registry = Registry(RegistryConfig(home=str(tmp_path / f"home{prepared}")))
        registry.add_base("tiny", str(tiny_base))
        out = tmp_path / f"evolved{prepared}"
        if prepared:  # v3 trained before v2 exists; nothing registered by it
            prepare_rung(registry, branch, seed=1, out=out, **settings)
            assert (out / "v3.training-state.pt").is_file()
            assert [row["name"] for row in registry.list_bases()] == ["tiny@v1"]
        make_rung(registry, chain, seed=0, out=out, zero_shot_tasks=[], **settings)
        make_rung(registry, branch, seed=1, out=out, zero_shot_tasks=[], **{**settings, "log": lines.append})
        weights.append(load_base(registry, "tiny@v3").model.state_dict())
        assert not list(out.glob("*training-state*"))
    assert any("at step 4/4" in line for line in lines)  # the prepared run resumed at its end: no step trained again
    assert weight_distance(weights[0], weights[1]) == 0.0


def test_a_rung_killed_mid_training_resumes_from_its_last_save_to_the_same_weights(tmp_path, tiny_base, monkeypatch):
    from transformers import AutoModelForCausalLM

    settings = {"steps": 5, "batch_size": 2, "learning_rate": 1e-3, "seed": 0, "log": lambda line: None}

    def fresh():
        return AutoModelForCausalLM.from_pretrained(str(tiny_base))

    straight = fresh()
    blocks = torch.randint(0, straight.config.vocab_size, (16, 8), generator=torch.Generator().manual_seed(0))
    expected_losses, _ = continue_pretraining(straight, blocks, **settings)

    state = tmp_path / "v2.training-state.pt"
    clip, calls = torch.nn.utils.clip_grad_norm_, []

    def killed_at_step_four(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # as a kill between two saves (saves after steps 2 and 4)
        return clip(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", killed_at_step_four)
    with pytest.raises(KeyboardInterrupt):
        continue_pretraining(fresh(), blocks, **settings, state_path=state, save_every=2, recipe="r")
    assert torch.load(state, weights_only=True)["losses"] == expected_losses[:2]
    saved = state.read_bytes()
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)

    with pytest.raises(SystemExit, match="another recipe"):
        continue_pretraining(fresh(), blocks, **settings, state_path=state, save_every=2, recipe="other")
    resumed = fresh()
    lines = []
    losses, _ = continue_pretraining(resumed, blocks, **{**settings, "log": lines.append}, state_path=state,
                                     save_every=2, recipe="r")
    assert any("resumed from" in line and "at step 2/5" in line for line in lines)
    assert losses == expected_losses
    assert weight_distance(straight.state_dict(), resumed.state_dict()) == 0.0

    state.write_bytes(saved[: len(saved) // 2])  # a save cut short is refused in one line, not continued
    with pytest.raises(SystemExit, match="damaged resume state.*delete it to start the run over"):
        continue_pretraining(fresh(), blocks, **settings, state_path=state, save_every=2, recipe="r")


def test_a_version_whose_linear_shapes_differ_is_refused_and_nothing_is_registered(tmp_path, tiny_base):
    from loragen.config import RegistryConfig
    from loragen.registry.store import Registry
    from tests.tiny import make_tiny_llama

    registry = Registry(RegistryConfig(home=str(tmp_path / "home")))
    registry.add_base("tiny", str(tiny_base))
    wider = make_tiny_llama(tmp_path / "wider", hidden=48)
    with pytest.raises(LoragenError) as refused:
        register_rung(registry, wider, "a wider model is no evolved version", base="tiny")
    assert "\n" not in str(refused.value)
    assert [row["name"] for row in registry.list_bases()] == ["tiny@v1"]
