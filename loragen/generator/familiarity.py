"""How familiar a task description is to a generator: its nearest training tasks, and whether it is far from all.

A generator has only seen the tasks it trained on, each by a few descriptions. A description close to one of
them is in the region the generator learnt; one far from all of them (nonsense, or a kind of task the corpus
never had) gets an adapter the generator had no example of, and the user should be told so.

A task's similarity to the description is the highest cosine similarity between the description's embedding
and any of the task's description embeddings (the text encoder's, loragen.generator.conditioning), so a task
described five ways is as near as its nearest wording. Pure math on tensors: the caller encodes the texts and
picks the threshold (loragen.config.FAMILIARITY_THRESHOLD, measured by bench/bench_familiarity.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

NEAREST_TASKS = 3  # the nearest tasks shown to the user and kept in provenance


@dataclass(frozen=True)
class NearTask:
    task: str
    similarity: float  # cosine, -1 .. 1


@dataclass(frozen=True)
class Familiarity:
    """The description's nearest training tasks, nearest first, and the threshold it is judged by."""

    nearest: tuple[NearTask, ...]
    threshold: float

    @property
    def best(self) -> float:
        return self.nearest[0].similarity

    @property
    def familiar(self) -> bool:
        """Whether some training task is at least `threshold` similar."""
        return self.best >= self.threshold

    def record(self) -> dict[str, Any]:
        """The form provenance and --json keep."""
        return {"nearest_tasks": [{"task": near.task, "similarity": near.similarity} for near in self.nearest],
                "familiar": self.familiar, "threshold": self.threshold}


def task_similarities(condition: torch.Tensor, known: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Each known task's similarity to the condition: the largest cosine between the condition (dim,) and the
    rows of the task's description embeddings (n, dim)."""
    query = torch.nn.functional.normalize(condition.to(torch.float32).reshape(-1), dim=0)
    similarities = {}
    for task, embeddings in known.items():
        rows = torch.nn.functional.normalize(embeddings.to(torch.float32).reshape(-1, query.numel()), dim=1)
        if rows.shape[0] == 0:
            raise ValueError(f"task {task!r} has no description embeddings")
        similarities[task] = float((rows @ query).max())
    return similarities


def familiarity(condition: torch.Tensor, known: Mapping[str, torch.Tensor], threshold: float,
                k: int = NEAREST_TASKS) -> Familiarity:
    """The k known tasks nearest the condition (ties by name, so the order never depends on the mapping's),
    judged against `threshold`. Similarities are kept to 4 places, so that `familiar` agrees with the record."""
    if not known:
        raise ValueError("no known tasks to compare the description with")
    if k < 1:
        raise ValueError(f"k must be at least 1 (got {k})")
    similarities = task_similarities(condition, known)
    ranked = sorted(((task, round(value, 4)) for task, value in similarities.items()),
                    key=lambda item: (-item[1], item[0]))[:k]
    return Familiarity(nearest=tuple(NearTask(task, similarity) for task, similarity in ranked), threshold=threshold)
