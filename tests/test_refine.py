"""Few-shot refinement of a blend (loragen/generator/refine.py): it lowers the loss it fits, and it never hands
back a blend that does worse than its start on the held-back examples."""

import pytest
import torch

from loragen.errors import LoragenError
from loragen.generator.refine import refine_blend, split_examples, uniform_start
from tests.test_blend_generator import tiny_training_set

EXAMPLES = [(f"{word}:", word.upper()) for word in
            ("ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st", "uv", "wx", "yz", "ba", "dc", "fe")]


@pytest.fixture
def base_and_library(tiny_base, tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.test_blend_generator import training_library
    from tests.tiny import make_tokenizer

    data = tiny_training_set(tiny_base, tmp_path)
    return AutoModelForCausalLM.from_pretrained(tiny_base), make_tokenizer(), training_library(data)


def test_refinement_lowers_the_held_back_loss_or_keeps_its_start(base_and_library):
    model, tokenizer, library = base_and_library
    shots, held_back = split_examples(EXAMPLES, 5, 8, seed=0)
    start = uniform_start(library)
    result = refine_blend(model, tokenizer, library, start, shots, held_back, steps=15, learning_rate=0.1)
    assert result.shots == 5 and result.held_back == 8 and len(result.examples_sha256) == 64
    if result.kept == "refined":
        assert result.held_back_loss_refined < result.held_back_loss_start
        assert not torch.equal(result.coefficients, start)
    else:
        assert torch.equal(result.coefficients, start)


def test_a_fit_that_does_worse_on_held_back_examples_is_not_kept(base_and_library):
    """Shots and held-back examples that disagree (the same prompts, other answers): fitting the shots raises the
    held-back loss, and the start comes back unchanged."""
    model, tokenizer, library = base_and_library
    shots = [(f"{word}:", "aaaa") for word in ("ab", "cd", "ef", "gh", "ij")]
    held_back = [(f"{word}:", "zzzz") for word in ("ab", "cd", "ef", "gh", "ij")]
    start = uniform_start(library)
    result = refine_blend(model, tokenizer, library, start, shots, held_back, steps=20, learning_rate=0.5)
    assert result.held_back_loss_refined > result.held_back_loss_start
    assert result.kept == "start" and torch.equal(result.coefficients, start)


def test_the_examples_are_split_without_overlap_and_refused_when_too_few():
    shots, held_back = split_examples(EXAMPLES, 5, 16, seed=1)
    assert len(shots) == 5 and len(held_back) == len(EXAMPLES) - 5
    assert not set(shots) & set(held_back)
    assert split_examples(EXAMPLES, 5, 16, seed=1) == (shots, held_back)  # seeded
    with pytest.raises(LoragenError, match="more than --shots"):
        split_examples(EXAMPLES[:5], 5, 16, seed=0)
