"""LoRA adapter <-> token sequence (RPG / ORAL tokenization).

An adapter (a PEFT state dict) becomes one sequence of fixed-size tokens:
every matrix is z-scored with its own mean/std (fitted over the training
adapters), flattened row-major and cut into tokens of `token_size` values; the
last token of each matrix is zero-padded, so a token never mixes two matrices.
Matrices follow a fixed, deterministic order (layer, module, A before B) kept in
a `LoraLayout`, which checkpoints store so the inverse is always available.

    layout = LoraLayout.from_state_dict(sd, token_size=1024)
    stats = NormStats.fit(training_state_dicts, layout)
    tokens, mask = tokenize(sd, layout, stats)      # (num_tokens, token_size)
    sd2 = detokenize(tokens, layout, stats)         # same keys and shapes as sd
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from loragen.architectures import LAYER_CONTAINER_PATTERN, PEFT_PREFIX
from loragen.errors import InvalidAdapter, LoragenError

LAYOUT_FORMAT_VERSION = 1
STATS_FORMAT_VERSION = 1
DEFAULT_MIN_STD = 1e-8

# A layer index: `.layers.3.` (Llama), `.h.3.` (GPT-2), ... (loragen/architectures.py)
_LAYER_RE = re.compile(rf"(?:^|\.){LAYER_CONTAINER_PATTERN}\.(\d+)(?:\.|$)")


def _kind_rank(kind: str) -> int:
    """A matrices before B matrices, anything else after both."""
    if kind.endswith("_A"):
        return 0
    if kind.endswith("_B"):
        return 1
    return 2


def parse_key(key: str) -> tuple[int, str, str]:
    """(layer index, module name, matrix kind) of a PEFT state-dict key.

    `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`
    -> (3, "self_attn.q_proj", "lora_A"). Keys without a layer index get layer 0;
    keys without a `lora_*` component get kind "" (still tokenized, ordered last).
    """
    parts = key.split(".")
    kind_pos = next((i for i, p in enumerate(parts) if p.startswith("lora_")), None)
    kind = parts[kind_pos] if kind_pos is not None else ""
    head = ".".join(parts[:kind_pos]) if kind_pos is not None else key
    if head.endswith(".weight") or head == "weight":  # keys without a lora_* part
        head = head[: -len("weight")].rstrip(".")

    match = _LAYER_RE.search(head)
    if match is not None:
        layer = int(match.group(1))
        module = head[match.end() :]
    else:
        layer = 0
        module = head.removeprefix(PEFT_PREFIX)  # PEFT's wrapper prefix, where no layer index follows
    return layer, module, kind


@dataclass(frozen=True)
class LayoutEntry:
    """One matrix of the adapter and where it sits in the token sequence."""

    key: str
    shape: tuple[int, ...]
    layer: int
    module: str
    kind: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def type_name(self) -> str:
        """Module + kind, e.g. `self_attn.q_proj.lora_A`: what `module_index` indexes."""
        return f"{self.module}.{self.kind}" if self.kind else self.module

    def sort_key(self) -> tuple:
        return (self.layer, self.module, _kind_rank(self.kind), self.kind, self.key)


def _check_shape(key: str, shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0 or any(s <= 0 for s in shape):
        raise InvalidAdapter(f"adapter tensor {key!r} has shape {shape}; expected a non-empty matrix")
    return shape


@dataclass(frozen=True)
class LoraLayout:
    """The fixed, ordered list of an adapter's matrices and their token slots."""

    token_size: int
    entries: tuple[LayoutEntry, ...]
    # derived: first token of each entry, and its token count
    token_offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)
    token_counts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.token_size, int) or isinstance(self.token_size, bool) or self.token_size <= 0:
            raise LoragenError(f"token_size must be a positive integer, got {self.token_size!r}")
        entries = tuple(self.entries)
        if not entries:
            raise InvalidAdapter("adapter has no tensors to tokenize")
        keys = [e.key for e in entries]
        if len(set(keys)) != len(keys):
            raise LoragenError("layout lists the same key twice")
        counts = tuple(-(-e.numel // self.token_size) for e in entries)
        offsets = []
        total = 0
        for c in counts:
            offsets.append(total)
            total += c
        object.__setattr__(self, "entries", entries)
        object.__setattr__(self, "token_counts", counts)
        object.__setattr__(self, "token_offsets", tuple(offsets))

    # -- construction -------------------------------------------------------

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]], token_size: int) -> LoraLayout:
        """Layout of an adapter given key -> shape, sorted (layer, module, A before B)."""
        entries = []
        for key, shape in shapes.items():
            layer, module, kind = parse_key(key)
            entries.append(LayoutEntry(key, _check_shape(key, shape), layer, module, kind))
        entries.sort(key=LayoutEntry.sort_key)
        return cls(token_size=token_size, entries=tuple(entries))

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], token_size: int) -> LoraLayout:
        """Layout of a PEFT state dict (key -> tensor)."""
        shapes = {}
        for key, value in state_dict.items():
            if not isinstance(value, torch.Tensor):
                raise InvalidAdapter(f"adapter entry {key!r} is not a tensor")
            shapes[key] = tuple(value.shape)
        return cls.from_shapes(shapes, token_size)

    def to_dict(self) -> dict:
        """JSON-ready description; `from_dict` restores an equal layout."""
        return {
            "format_version": LAYOUT_FORMAT_VERSION,
            "token_size": self.token_size,
            "entries": [
                {"key": e.key, "shape": list(e.shape), "layer": e.layer, "module": e.module, "kind": e.kind}
                for e in self.entries
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> LoraLayout:
        try:
            version = data.get("format_version", LAYOUT_FORMAT_VERSION)
            if version != LAYOUT_FORMAT_VERSION:
                raise LoragenError(f"unsupported LoRA layout format version {version!r}")
            entries = tuple(
                LayoutEntry(
                    key=str(e["key"]),
                    shape=_check_shape(str(e["key"]), e["shape"]),
                    layer=int(e["layer"]),
                    module=str(e["module"]),
                    kind=str(e["kind"]),
                )
                for e in data["entries"]
            )
            token_size = data["token_size"]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LoragenError(f"malformed LoRA layout: {exc!r}") from None
        return cls(token_size=token_size, entries=entries)

    # -- sizes and per-token metadata --------------------------------------

    @property
    def keys(self) -> list[str]:
        return [e.key for e in self.entries]

    @property
    def num_tokens(self) -> int:
        return self.token_offsets[-1] + self.token_counts[-1]

    @property
    def num_values(self) -> int:
        """Real (unpadded) values in one adapter."""
        return sum(e.numel for e in self.entries)

    @property
    def num_layers(self) -> int:
        return max(e.layer for e in self.entries) + 1

    @property
    def module_names(self) -> list[str]:
        """Sorted unique module+kind names; `module_index` points into this list."""
        return sorted({e.type_name for e in self.entries})

    @property
    def max_tokens_per_matrix(self) -> int:
        return max(self.token_counts)

    def _per_token(self, values: Sequence[int]) -> torch.Tensor:
        return torch.repeat_interleave(
            torch.tensor(values, dtype=torch.long), torch.tensor(self.token_counts, dtype=torch.long)
        )

    def matrix_index(self) -> torch.Tensor:
        """(num_tokens,) long: which entry of `entries` each token belongs to."""
        return self._per_token(range(len(self.entries)))

    def layer_index(self) -> torch.Tensor:
        """(num_tokens,) long: the transformer layer of each token."""
        return self._per_token([e.layer for e in self.entries])

    def module_index(self) -> torch.Tensor:
        """(num_tokens,) long: index into `module_names` (module + A/B) of each token."""
        lookup = {name: i for i, name in enumerate(self.module_names)}
        return self._per_token([lookup[e.type_name] for e in self.entries])

    def slice_index(self) -> torch.Tensor:
        """(num_tokens,) long: position of each token within its matrix (0, 1, ...)."""
        return torch.cat([torch.arange(c, dtype=torch.long) for c in self.token_counts])

    def value_mask(self) -> torch.Tensor:
        """(num_tokens, token_size) bool: True on real values, False on padding."""
        mask = torch.ones(self.num_tokens, self.token_size, dtype=torch.bool)
        for entry, offset, count in zip(self.entries, self.token_offsets, self.token_counts):
            used_in_last = entry.numel - (count - 1) * self.token_size
            mask[offset + count - 1, used_in_last:] = False
        return mask

    # -- checks -------------------------------------------------------------

    def check_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True) -> None:
        """Raise InvalidAdapter unless every layout key is present with its shape.

        strict: also reject keys the layout does not know.
        """
        missing = [k for k in self.keys if k not in state_dict]
        if missing:
            raise InvalidAdapter(
                f"adapter does not match the generator's layout: {len(missing)} missing tensor(s), "
                f"e.g. {missing[0]!r}"
            )
        if strict:
            known = set(self.keys)
            extra = [k for k in state_dict if k not in known]
            if extra:
                raise InvalidAdapter(
                    f"adapter does not match the generator's layout: {len(extra)} unexpected tensor(s), "
                    f"e.g. {extra[0]!r}"
                )
        for e in self.entries:
            value = state_dict[e.key]
            if not isinstance(value, torch.Tensor):
                raise InvalidAdapter(f"adapter entry {e.key!r} is not a tensor")
            if tuple(value.shape) != e.shape:
                raise InvalidAdapter(
                    f"adapter tensor {e.key!r} has shape {tuple(value.shape)}, layout expects {e.shape}"
                )
            if not value.is_floating_point():
                raise InvalidAdapter(f"adapter tensor {e.key!r} has dtype {value.dtype}; expected floating point")


@dataclass(frozen=True)
class NormStats:
    """Per-matrix mean and std used to z-score adapter tensors (key -> float)."""

    mean: dict[str, float]
    std: dict[str, float]

    @classmethod
    def fit(
        cls,
        state_dicts: Iterable[Mapping[str, torch.Tensor]],
        layout: LoraLayout,
        *,
        min_std: float = DEFAULT_MIN_STD,
    ) -> NormStats:
        """Mean and std of each matrix, each averaged over the given adapters (as RPG does).

        The std is floored at `min_std` so constant matrices (e.g. an untrained,
        all-zero lora_B) do not divide by zero.
        """
        mean_sum = {k: 0.0 for k in layout.keys}
        std_sum = {k: 0.0 for k in layout.keys}
        count = 0
        for sd in state_dicts:
            layout.check_state_dict(sd, strict=False)
            for key in layout.keys:
                value = sd[key].detach().to(device="cpu", dtype=torch.float64)
                if not torch.isfinite(value).all():
                    raise InvalidAdapter(f"adapter tensor {key!r} contains NaN or infinite values")
                mean_sum[key] += value.mean().item()
                std_sum[key] += value.std(correction=0).item()
            count += 1
        if count == 0:
            raise LoragenError("cannot fit normalization statistics on zero adapters")
        return cls(
            mean={k: mean_sum[k] / count for k in layout.keys},
            std={k: max(std_sum[k] / count, min_std) for k in layout.keys},
        )

    @classmethod
    def identity(cls, layout: LoraLayout) -> NormStats:
        """Mean 0, std 1 for every matrix: tokenization without normalization."""
        return cls(mean={k: 0.0 for k in layout.keys}, std={k: 1.0 for k in layout.keys})

    def to_dict(self) -> dict:
        return {"format_version": STATS_FORMAT_VERSION, "mean": dict(self.mean), "std": dict(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping) -> NormStats:
        try:
            version = data.get("format_version", STATS_FORMAT_VERSION)
            if version != STATS_FORMAT_VERSION:
                raise LoragenError(f"unsupported normalization stats format version {version!r}")
            mean = {str(k): float(v) for k, v in data["mean"].items()}
            std = {str(k): float(v) for k, v in data["std"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LoragenError(f"malformed normalization stats: {exc!r}") from None
        if set(mean) != set(std):
            raise LoragenError("malformed normalization stats: mean and std have different keys")
        bad = [k for k, s in std.items() if not (s > 0 and math.isfinite(s))]
        if bad:
            raise LoragenError(f"malformed normalization stats: std of {bad[0]!r} is not positive")
        return cls(mean=mean, std=std)

    def check_layout(self, layout: LoraLayout) -> None:
        missing = [k for k in layout.keys if k not in self.mean]
        if missing:
            raise LoragenError(f"normalization stats do not cover the layout, e.g. {missing[0]!r}")


def tokenize(
    state_dict: Mapping[str, torch.Tensor],
    layout: LoraLayout,
    stats: NormStats,
    *,
    strict: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapter -> (tokens, mask), both (num_tokens, token_size); tokens float32.

    Each matrix is z-scored, flattened row-major and laid into its own tokens;
    padding is 0 in `tokens` and False in `mask`. strict: reject unknown keys.
    """
    layout.check_state_dict(state_dict, strict=strict)
    stats.check_layout(layout)
    tokens = torch.zeros(layout.num_tokens, layout.token_size, dtype=torch.float32)
    for entry, offset, count in zip(layout.entries, layout.token_offsets, layout.token_counts):
        # float64 arithmetic so the only rounding is the final cast to float32
        value = state_dict[entry.key].detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        if not torch.isfinite(value).all():
            raise InvalidAdapter(f"adapter tensor {entry.key!r} contains NaN or infinite values")
        normalized = (value - stats.mean[entry.key]) / stats.std[entry.key]
        tokens[offset : offset + count].view(-1)[: entry.numel] = normalized.to(torch.float32)
    return tokens, layout.value_mask()


def detokenize(
    tokens: torch.Tensor,
    layout: LoraLayout,
    stats: NormStats,
    *,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """(num_tokens, token_size) tokens -> state dict in layout order; padding is ignored.

    Works on a detached float64 copy on the CPU (the exported adapter); `tokens_to_tensors`
    is the same arithmetic kept on the tokens' device and autograd graph, for training.
    """
    flat_tokens = _checked_tokens(tokens, layout, stats).detach().to(device="cpu", dtype=torch.float64)
    return {key: value.to(dtype).contiguous() for key, value in tokens_to_tensors(flat_tokens, layout, stats).items()}


def tokens_to_tensors(tokens: torch.Tensor, layout: LoraLayout, stats: NormStats) -> dict[str, torch.Tensor]:
    """Differentiable inverse of `tokenize`: (num_tokens, token_size) -> state dict, in the tokens' dtype and
    device, with gradients flowing back into `tokens` (padding values get none)."""
    tokens = _checked_tokens(tokens, layout, stats)
    state_dict = {}
    for entry, offset, count in zip(layout.entries, layout.token_offsets, layout.token_counts):
        values = tokens[offset : offset + count].reshape(-1)[: entry.numel]
        state_dict[entry.key] = (values * stats.std[entry.key] + stats.mean[entry.key]).reshape(entry.shape)
    return state_dict


def _checked_tokens(tokens: torch.Tensor, layout: LoraLayout, stats: NormStats) -> torch.Tensor:
    expected = (layout.num_tokens, layout.token_size)
    if tokens.dim() != 2 or tuple(tokens.shape) != expected:
        raise LoragenError(f"tokens have shape {tuple(tokens.shape)}, layout expects {expected}")
    stats.check_layout(layout)
    return tokens
