"""What loragen knows about base-model architectures: module names, layer patterns, config keys. Only here.

Two kinds of fact:

* One table per architecture loragen is built for (`ARCHITECTURES`, keyed by transformers' `model_type`):
  its projections and what each does, the embedding and head, the LoRA targets it gets by default, and
  the config keys of its layer pattern: Llama (SmolLM2 and the tests' tiny bases) and Gemma 3's text
  model (sliding and full attention layers, tied embeddings, a head_dim that is not hidden_size / heads).
* Names recognised across families, so that any base transformers can build still gets a base embedding
  (loragen/generator/conditioning.py) and any adapter a token layout (loragen/generator/tokenizer.py):
  the layer containers, other families' projection names, embedding and head names, config size keys.

Everything that needs one of these names reads it from here; tests/test_architectures.py fails when a
module-name table appears anywhere else in loragen/.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from loragen.errors import LoragenError

# PEFT wraps the base model twice (PeftModel.base_model.model), so every adapter key starts so.
PEFT_PREFIX = "base_model.model."
# A plain LoRA's weights: `base_model.model.<module path>.lora_A.weight` and `.lora_B.weight`.
LORA_KEY_PATTERN = re.compile(rf"^{re.escape(PEFT_PREFIX)}(?P<module>.+)\.(?P<kind>lora_A|lora_B)\.weight$")

# The roles of a decoder layer's projections, in the order the base embedding lays out their statistics.
PROJECTION_ROLES = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class ArchitectureFacts:
    model_type: str                     # transformers' config.model_type
    projections: Mapping[str, str]      # a decoder layer's linear modules (leaf names) -> PROJECTION_ROLES
    embedding: str                      # the input embedding's leaf name
    head: str                           # the output head's leaf name
    lora_targets: tuple[str, ...]       # the projections a LoRA targets unless told otherwise
    # The config key listing each layer's attention kind ("sliding_attention", "full_attention"), where layers
    # differ; None: every layer attends to the whole context.
    layer_kinds_key: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.projections.values()) - set(PROJECTION_ROLES)
        if unknown or not set(self.lora_targets) <= set(self.projections):
            raise ValueError(f"{self.model_type}: inconsistent architecture table")


LLAMA = ArchitectureFacts(
    model_type="llama",
    projections=MappingProxyType({"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
                                  "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}),
    embedding="embed_tokens",
    head="lm_head",
    lora_targets=("q_proj", "v_proj"),
)
# Gemma 3's text model (Gemma 3 270M): Llama's projection names, but q_proj is heads x head_dim (4 x 256 = 1024)
# wide against a hidden size of 640, one KV head, and five sliding-window layers to each full-attention one.
GEMMA3_TEXT = ArchitectureFacts(
    model_type="gemma3_text",
    projections=LLAMA.projections,
    embedding="embed_tokens",
    head="lm_head",
    lora_targets=("q_proj", "v_proj"),
    layer_kinds_key="layer_types",
)
ARCHITECTURES: Mapping[str, ArchitectureFacts] = MappingProxyType(
    {facts.model_type: facts for facts in (LLAMA, GEMMA3_TEXT)})
# The architecture of the bundled base (SmolLM2): its LoRA targets are the settings' default.
DEFAULT_ARCHITECTURE = LLAMA


def architecture(model_type: str) -> ArchitectureFacts:
    """The table of `model_type`; a LoragenError for one loragen has none for."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise LoragenError(f"no architecture table for model_type {model_type!r} "
                           f"(known: {', '.join(sorted(ARCHITECTURES))})") from None


def layer_facts(model_type: str, config: Mapping) -> dict:
    """What a person comparing bases wants from a transformers config: layers, hidden size, head_dim, whether
    the head is tied to the embedding, and (where layers differ) how many layers of each attention kind."""
    facts = ARCHITECTURES.get(model_type)
    hidden, heads = config_size(config, 0), config_size(config, 3)
    head_dim = config.get("head_dim") or (hidden // heads if hidden and heads else None)
    kinds = config.get(facts.layer_kinds_key) if facts and facts.layer_kinds_key else None
    layers = config_size(config, 1)
    if isinstance(kinds, list):
        attention = {kind: kinds.count(kind) for kind in dict.fromkeys(kinds)}
    else:  # one kind of layer, attending to the whole context
        attention = {"full_attention": layers} if layers else None
    return {"layers": layers, "hidden_size": hidden, "head_dim": head_dim,
            "tied_embeddings": bool(config.get("tie_word_embeddings", True)), "attention": attention}


def config_size(config: Mapping, index: int):
    """The size CONFIG_SIZE_KEYS[index] names (hidden, layers, intermediate, heads, KV heads, vocab), first
    name found with a number; None when the config has none of them. The base embedding reads sizes so too."""
    return next((config[key] for key in CONFIG_SIZE_KEYS[index] if isinstance(config.get(key), (int, float))), None)


# ---------------------------------------------------------------------------
# Recognised across families (the base embedding and the token layout work on any of them)

# `.layers.3.` (Llama, Mistral, Qwen, Gemma), `.h.3.` (GPT-2), `.blocks.3.`, `.block.3.` (T5).
LAYER_CONTAINERS = ("layers", "layer", "h", "blocks", "block")
LAYER_CONTAINER_PATTERN = "(?:" + "|".join(LAYER_CONTAINERS) + ")"

# Other families' projection names (GPT-2, BERT, Falcon, Mixtral experts, ...); fused or unknown ones have no role.
OTHER_FAMILIES_PROJECTIONS: Mapping[str, str] = MappingProxyType({
    "query": "q", "wq": "q",
    "key": "k", "wk": "k",
    "value": "v", "wv": "v",
    "out_proj": "o", "wo": "o",
    "w1": "gate",
    "w3": "up", "fc1": "up", "c_fc": "up",
    "w2": "down", "fc2": "down",
})
ROLE_OF_PROJECTION: Mapping[str, str] = MappingProxyType({
    **{leaf: role for facts in ARCHITECTURES.values() for leaf, role in facts.projections.items()},
    **OTHER_FAMILIES_PROJECTIONS})

EMBEDDING_NAMES = tuple(dict.fromkeys([*(f.embedding for f in ARCHITECTURES.values()),
                                       "wte", "word_embeddings", "tok_embeddings"]))
HEAD_NAMES = tuple(dict.fromkeys([*(f.head for f in ARCHITECTURES.values()), "output"]))

# A model's sizes as config.json names them, first name found wins (other families' names after transformers').
CONFIG_SIZE_KEYS = (
    ("hidden_size", "n_embd", "d_model"),
    ("num_hidden_layers", "n_layer", "num_layers"),
    ("intermediate_size", "n_inner", "ffn_dim"),
    ("num_attention_heads", "n_head"),
    ("num_key_value_heads", "num_attention_heads", "n_head"),  # no GQA: as many KV heads as heads
    ("vocab_size",),
)
