"""What the store hands out and takes in: plain data, never an ORM row (those stay inside loragen/registry)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StagedBlob:
    """A file copied into the blob store that no row references yet: gc may remove it until it is recorded."""

    source: Path
    sha256: str
    size: int
    media_type: str


@dataclass
class Registered:
    """The outcome of a registration: the row's id and whether it is new."""

    id: str
    created: bool


@dataclass
class Removed:
    """An adapter `rm` unregistered, and the generators whose library it leaves broken (only with --force)."""

    id: str
    broken_generators: list[str]


@dataclass(frozen=True)
class BaseVersionInfo:
    """A registered base version as plain data, for code outside the registry (no ORM object leaves it)."""

    id: int
    name: str                              # the base's name, e.g. smollm2-135m
    version: int
    architecture: str                      # transformers model_type
    gguf_file: str | None                  # the file to load when the version is a GGUF file
    weights_digest: str
    linear_shapes: dict[str, list[int]]    # module path -> [out_features, in_features]
    config: dict[str, Any]                 # the transformers config
    num_parameters: int

    @property
    def label(self) -> str:
        return f"{self.name}@v{self.version}"
