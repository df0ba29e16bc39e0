"""What every workflow starts from: base versions loaded from the store, tasks found by name or folder, and the
generator's two conditions (the text encoder for descriptions, a base version's embedding)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from loragen.registry.store import BaseVersionInfo, Registry
from loragen.tasks.suite import find_task  # noqa: F401  (the workflows' name for it; one definition, in tasks)

if TYPE_CHECKING:
    from loragen.tasks.suite import Task

Progress = Callable[[int, int, float], None]
Notify = Callable[[str], None]  # one status line for people ("loading smollm2-135m@v1 …")


class LoadedBase(NamedTuple):
    model: Any            # a transformers causal LM, in eval mode
    tokenizer: Any
    version: BaseVersionInfo


def load_base(registry: Registry, ref: str | BaseVersionInfo, dtype: str = "float32") -> LoadedBase:
    """A registered base version loaded from the store (a GGUF file is dequantized to `dtype`)."""
    from loragen.bases import load_model

    version = ref if isinstance(ref, BaseVersionInfo) else registry.version(ref)
    model, tokenizer = load_model(registry.base_folder(version), version.gguf_file, dtype=dtype,
                                  converted=registry.converted_folder(version))
    return LoadedBase(model, tokenizer, version)


class BaseLoader:
    """Hands out loaded bases to a sequence of jobs, loading a version only when it differs from the last one.

    Only the last base is kept (SmolLM2-135M is about 0.5 GB in float32), so callers group their work by base.
    Pass one loader to several workflow calls to share a loaded base between them.
    """

    def __init__(self, registry: Registry):
        self.registry = registry
        self._loaded: LoadedBase | None = None

    def get(self, ref: str, notify: Notify | None = None) -> LoadedBase:
        version = self.registry.version(ref)
        if self._loaded is None or self._loaded.version.id != version.id:
            self._loaded = None  # let the previous base go before the next one is read
            if notify:
                notify(f"loading {version.label} …")
            self._loaded = load_base(self.registry, version)
        return self._loaded


def bundled_task(name: str) -> Task | None:
    """The bundled task called `name` (or by its lm-eval name), or None."""
    from loragen.errors import NotFound
    from loragen.tasks.suite import get_task

    try:
        return get_task(name)
    except NotFound:
        return None


def member_tasks(view: dict[str, Any]) -> list[str] | None:
    """A multi-task adapter's member tasks (from its provenance); None for a single task's adapter."""
    return (view.get("provenance") or {}).get("member_tasks")


def text_encoder(registry: Registry):
    from loragen.generator.conditioning import TextEncoder

    return TextEncoder(cache_path=registry.home / "cache" / "text-embeddings.safetensors")


def base_condition(registry: Registry, label: str):
    """The base-model condition of a version: computed from its weights once, kept in the registry with
    its embedding format, and computed again when the format has changed since."""
    import torch

    from loragen.generator.conditioning import BASE_EMBED_DIM, BASE_EMBED_FORMAT_VERSION, base_embedding_from_model

    cached = registry.cached_base_embedding(label, BASE_EMBED_FORMAT_VERSION)
    if cached is not None and len(cached) == BASE_EMBED_DIM:
        return torch.tensor(cached, dtype=torch.float32)
    model, _, version = load_base(registry, label)
    embedding = base_embedding_from_model(model).float()
    registry.store_base_embedding(version.label, embedding.tolist(), BASE_EMBED_FORMAT_VERSION)
    return embedding
