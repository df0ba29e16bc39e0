"""Architecture facts live in loragen/architectures.py only, and its Llama table is Llama's."""

import ast
import re
from pathlib import Path

import pytest

import loragen
from loragen import architectures
from loragen.architectures import ARCHITECTURES, LLAMA, OTHER_FAMILIES_PROJECTIONS, PEFT_PREFIX
from loragen.errors import LoragenError

PACKAGE = Path(loragen.__file__).parent
# Module names that are also plain words (a dict's "key", a tensor's "value") are not searched for.
PLAIN_WORDS = {"query", "key", "value", "output"}
MODULE_NAMES = sorted(({name for facts in ARCHITECTURES.values() for name in (*facts.projections, facts.embedding,
                                                                              facts.head)}
                       | set(OTHER_FAMILIES_PROJECTIONS) | set(architectures.EMBEDDING_NAMES)) - PLAIN_WORDS)
_NAME_IN_TEXT = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, MODULE_NAMES)) + r")(?![A-Za-z0-9_])")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants: documentation may show a module name, code may not."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def architecture_facts_in_code(source: str) -> list[str]:
    """The string constants in `source` (docstrings aside) that name a module, PEFT's prefix or a layer pattern."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
            if (_NAME_IN_TEXT.search(text) or PEFT_PREFIX in text or r"base_model\.model" in text
                    or "layers|" in text):
                found.append(f"line {node.lineno}: {text!r}")
    return found


def test_no_module_name_table_outside_architectures():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == Path(architectures.__file__):
            continue
        found = architecture_facts_in_code(path.read_text())
        if found:
            offenders[str(path.relative_to(PACKAGE.parent))] = found
    assert offenders == {}


def test_the_check_finds_the_tables_it_is_for():
    assert architecture_facts_in_code('MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")\n')
    assert architecture_facts_in_code('SLOT = {"c_fc": "up"}\n')
    assert architecture_facts_in_code('PREFIX = "base_model.model."\n')
    assert architecture_facts_in_code('LAYER = re.compile(r"\\.(?:layers|h)\\.(\\d+)")\n')
    assert architecture_facts_in_code('PATH = "model.embed_tokens"\n')
    assert not architecture_facts_in_code('def f():\n    """Keys like base_model.model.model.layers.0.self_attn.q_proj."""\n'
                                          '    return {"key": 1, "value": 2}\n')


def test_the_llama_table_matches_a_llama():
    import torch
    from transformers import LlamaForCausalLM

    from tests.tiny import tiny_config

    with torch.device("meta"):
        model = LlamaForCausalLM(tiny_config())
    layer_linears = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear) and ".layers." in name}
    assert layer_linears == set(LLAMA.projections)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert LLAMA.embedding in names and LLAMA.head in names
    assert ARCHITECTURES[model.config.model_type] is LLAMA == architectures.architecture("llama")


def test_the_gemma3_table_names_modules_a_gemma3_model_has(tmp_path):
    from transformers import AutoModelForCausalLM

    from loragen.architectures import GEMMA3_TEXT
    from tests.tiny import make_tiny_gemma3

    model = AutoModelForCausalLM.from_pretrained(make_tiny_gemma3(tmp_path / "g"))
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert set(GEMMA3_TEXT.projections) <= names and {GEMMA3_TEXT.embedding, GEMMA3_TEXT.head} <= names
    assert GEMMA3_TEXT.layer_kinds_key in model.config.to_dict()
    assert architectures.architecture(model.config.model_type) is GEMMA3_TEXT


def test_an_architecture_without_a_table_is_a_clear_error():
    with pytest.raises(LoragenError, match="no architecture table for model_type 'mistral'.*known: gemma3_text, llama"):
        architectures.architecture("mistral")
