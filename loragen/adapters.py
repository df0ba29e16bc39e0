"""PEFT LoRA adapter folders: read, validate against a base architecture, write.

A folder is `adapter_config.json` + `adapter_model.safetensors`, exactly what
`peft.PeftModel.from_pretrained` loads. Everything is checked before anything is
registered: a bad folder is refused with one line saying why.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loragen.architectures import LORA_KEY_PATTERN
from loragen.atomic import staged_folder
from loragen.errors import InvalidAdapter

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
KEY_PATTERN = LORA_KEY_PATTERN
DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
# Beyond any LoRA anyone trains (ranks are a few to a few hundred; alpha a small multiple of the rank), and
# within what a database column keeps exactly: larger values are a damaged or hostile config, not a model.
MAX_RANK = 1 << 16
MAX_ALPHA = 1e6


@dataclass
class AdapterFolder:
    """An adapter folder that passed the file-level checks (config and header), not yet the base check."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, tuple[str, list[int]]]  # key -> (dtype, shape), from the safetensors header

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_NAME

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    @property
    def alpha(self) -> float:
        return float(self.config.get("lora_alpha", self.rank))

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(shape) for _, shape in self.tensors.values())

    def modules(self) -> dict[str, dict[str, list[int]]]:
        """module path -> {"lora_A": shape, "lora_B": shape}."""
        found: dict[str, dict[str, list[int]]] = {}
        for key, (_, shape) in self.tensors.items():
            match = KEY_PATTERN.match(key)
            assert match is not None  # checked in read_adapter_folder
            found.setdefault(match["module"], {})[match["kind"]] = shape
        return found

    def target_leaf_names(self) -> list[str]:
        return sorted({module.rsplit(".", 1)[-1] for module in self.modules()})


def read_safetensors_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Parse and check a safetensors header without trusting it: sizes, offsets, dtypes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise InvalidAdapter(f"{path}: truncated safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len == 0 or header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise InvalidAdapter(f"{path}: corrupt safetensors header (declares {header_len} header bytes, file has {size})")
            raw = fh.read(header_len)
    except OSError as err:
        raise InvalidAdapter(f"{path}: cannot read: {err.strerror}") from None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, a number past int()'s digit limit, nested too deep
        raise InvalidAdapter(f"{path}: corrupt safetensors header (not JSON loragen can read)") from None
    if not isinstance(header, dict):
        raise InvalidAdapter(f"{path}: corrupt safetensors header (not a JSON object)")
    data_size = size - 8 - header_len
    tensors: dict[str, tuple[str, list[int]]] = {}
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise InvalidAdapter(f"{path}: corrupt safetensors header entry for '{key}'")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise InvalidAdapter(f"{path}: tensor '{key}' has dtype {dtype}; LoRA weights must be F32, F16 or BF16")
        if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)):
            raise InvalidAdapter(f"{path}: corrupt safetensors header entry for '{key}'")
        begin, end = offsets
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if not 0 <= begin <= end <= data_size or end - begin != expected:
            raise InvalidAdapter(
                f"{path}: tensor '{key}' declares shape {shape} ({expected} bytes) but its data span is "
                f"{begin}..{end} of {data_size} bytes: truncated or corrupt file")
        spans.append((begin, end))
        tensors[key] = (dtype, shape)
    spans.sort()
    for (_, end_a), (begin_b, _) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise InvalidAdapter(f"{path}: corrupt safetensors file (tensor data overlaps)")
    if not tensors:
        raise InvalidAdapter(f"{path}: the safetensors file holds no tensors")
    return tensors


def read_adapter_folder(path: Path) -> AdapterFolder:
    """Check the folder's files: a LoRA config peft understands and a sound safetensors file."""
    path = Path(path)
    if not path.is_dir():
        raise InvalidAdapter(f"{path}: not a folder (expected a PEFT adapter folder)")
    config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not config_path.is_file():
        raise InvalidAdapter(f"{path}: missing {CONFIG_NAME}")
    if not weights_path.is_file():
        other = " (only adapter_model.bin found: convert it to safetensors)" if (path / "adapter_model.bin").exists() else ""
        raise InvalidAdapter(f"{path}: missing {WEIGHTS_NAME}{other}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # ValueError: bad JSON or UTF-8, or a number of thousands of digits
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err).splitlines()[0][:200]
        raise InvalidAdapter(f"{config_path}: not valid JSON ({reason})") from None
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{config_path}: not a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise InvalidAdapter(f"{config_path}: peft_type is {config.get('peft_type')}, only LORA adapters are supported")
    for feature in ("use_dora", "use_rslora"):
        if config.get(feature):
            raise InvalidAdapter(f"{config_path}: {feature} adapters are not supported")
    _check_numbers(config, config_path)
    _targets(config)  # a target_modules regex that does not compile is refused here, not when it is matched
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise InvalidAdapter(f"{config_path}: per-module ranks (rank_pattern/alpha_pattern) are not supported")
    tensors = read_safetensors_header(weights_path)
    for key in tensors:
        if not KEY_PATTERN.match(key):
            raise InvalidAdapter(f"{weights_path}: unexpected tensor '{key}' (a plain LoRA has only lora_A/lora_B weights)")
    folder = AdapterFolder(path=path, config=config, tensors=tensors)
    for module, pair in folder.modules().items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise InvalidAdapter(f"{weights_path}: module '{module}' has {', '.join(pair)} but not both lora_A and lora_B")
    return folder


def _check_numbers(config: dict[str, Any], config_path: Path) -> None:
    """r, lora_alpha and lora_dropout as peft reads them, refused when not finite, not positive or absurd
    (NaN would be stored as NULL and Inf overflows the scale alpha / r)."""
    rank = config.get("r")
    if not _is_int(rank) or not 0 < rank <= MAX_RANK:
        raise InvalidAdapter(f"{config_path}: 'r' must be an integer from 1 to {MAX_RANK} (got {_short(rank)})")
    alpha = config.get("lora_alpha", rank)
    if not _is_number(alpha) or not 0 < alpha <= MAX_ALPHA:
        raise InvalidAdapter(f"{config_path}: 'lora_alpha' must be a number above 0 and at most {MAX_ALPHA:g} "
                             f"(got {_short(alpha)})")
    dropout = config.get("lora_dropout", 0.0)
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise InvalidAdapter(f"{config_path}: 'lora_dropout' must be a number in [0, 1) (got {_short(dropout)})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)  # isfinite() of a huge int overflows; an int is finite


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:60]}… ({len(text)} characters)"


def _targets(config: dict[str, Any]) -> list[str] | str:
    targets = config.get("target_modules")
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except (re.error, RecursionError, OverflowError) as err:
            raise InvalidAdapter(f"adapter_config.json: target_modules {_short(targets)} is not a valid "
                                 f"regular expression ({err})") from None
        return targets
    if isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        return targets
    raise InvalidAdapter(f"adapter_config.json: target_modules must be a non-empty list or a regex string "
                         f"(got {_short(targets)})")


def targeted_modules(config: dict[str, Any], linear_shapes: dict[str, list[int]]) -> list[str]:
    """The base's linear modules that the config's target_modules select (as peft matches them)."""
    targets = _targets(config)
    if isinstance(targets, str):
        return sorted(path for path in linear_shapes if re.fullmatch(targets, path))
    wanted = set(targets)
    return sorted(path for path in linear_shapes if path.rsplit(".", 1)[-1] in wanted or path in wanted)


def check_against_base(folder: AdapterFolder, linear_shapes: dict[str, list[int]], base_label: str) -> None:
    """Every LoRA tensor must sit on a linear module of the base, with shapes that fit it and one rank."""
    modules = folder.modules()
    expected = set(targeted_modules(folder.config, linear_shapes))
    if not expected:
        raise InvalidAdapter(f"target_modules {folder.config.get('target_modules')} match no linear module of {base_label}")
    unknown = sorted(set(modules) - set(linear_shapes))
    if unknown:
        raise InvalidAdapter(f"module '{unknown[0]}' does not exist in {base_label} ({len(unknown)} unknown modules)")
    missing = sorted(expected - set(modules))
    if missing:
        raise InvalidAdapter(f"target module '{missing[0]}' of {base_label} has no LoRA weights ({len(missing)} missing)")
    stray = sorted(set(modules) - expected)
    if stray:
        raise InvalidAdapter(f"module '{stray[0]}' has LoRA weights but is not in target_modules")
    rank = folder.rank
    for module, pair in sorted(modules.items()):
        out_features, in_features = linear_shapes[module]
        if pair["lora_A"] != [rank, in_features] or pair["lora_B"] != [out_features, rank]:
            raise InvalidAdapter(
                f"module '{module}': lora_A {pair['lora_A']} / lora_B {pair['lora_B']} do not fit "
                f"{base_label}'s [{out_features}, {in_features}] at rank {rank}")


def load_weights(path: Path, check_finite: bool = True):
    """Load the tensors (after the header check) and refuse NaN or Inf values."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise InvalidAdapter(f"{path}: cannot read the tensors: {err}") from None
    if check_finite:
        for key, tensor in tensors.items():
            if not torch.isfinite(tensor).all():
                raise InvalidAdapter(f"{path}: tensor '{key}' contains NaN or Inf values")
    return tensors


def state_dict_digest(state_dict: dict) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order (any dtype, bfloat16 included)."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def lora_config_dict(rank: int, alpha: float, target_modules: list[str], base_name: str = "") -> dict[str, Any]:
    """A minimal adapter_config.json that peft 0.21 loads.

    Generated adapters leave `base_name` empty: a base's folder is a path on one machine, so whatever a stored
    config says, `Registry.export` sets it (config_with_base) to this machine's copy when an adapter leaves.
    """
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
    }


def config_with_base(config_text: str, base_name_or_path: str) -> str:
    """An adapter_config.json's text with `base_model_name_or_path` set, every other key kept as it was."""
    config = json.loads(config_text)
    config["base_model_name_or_path"] = base_name_or_path
    return json.dumps(config, indent=2) + "\n"


def write_adapter_folder(out_dir: Path, state_dict: dict, config: dict[str, Any]) -> Path:
    """Write a PEFT folder atomically: into a sibling temp folder, then rename into place."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidAdapter(f"{out_dir}: is a file, not a folder (an adapter is written as a folder)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InvalidAdapter(f"{out_dir}: already exists and is not empty")
    with staged_folder(out_dir) as staging:
        tensors = {key: value.detach().contiguous().cpu() for key, value in state_dict.items()}
        save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir
