"""Where `generate` should warn that a description is far from every task the generator knows (issue 20, item 5).

    python bench/bench_familiarity.py [--percentile 5] [--threads 1]

The known tasks are the committed split's seen tasks, each with its training descriptions (all but its held-out
one), as `loragen train --split` gives them to the generator. Each description below is compared with them
(loragen.generator.familiarity: the highest cosine similarity to any description of a task, best task first):

  held_out_tasks         every description of every held-out task (tasks, some of whole families, never seen);
  held_out_descriptions  each seen task's held-out description (a known task in unseen words);
  nonsense               a fixed list of gibberish and off-domain requests (NONSENSE below).

The threshold is the --percentile-th percentile of the real held-out descriptions' best similarity (both groups
together), rounded down to 2 places: real suite tasks described in new words warn about that often, and the
nonsense rate says what the warning catches. Needs only the bundled text model; no registry. Writes
bench/results/familiarity.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from bench.harness import command_line, machine, write_summary

# Requests a generator of word-level suite tasks has no business answering, from gibberish to real tasks of
# another kind (long-form writing, documents, code, images).
NONSENSE = (
    "asdf qwerty",
    "zxcv bnm lkjh poiu",
    "aaaaaaaaaaaaaaaa",
    "1234 5678 90",
    "!!! ??? ...",
    "blorp fizzle wug dax",
    "the the the the the",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "Write a sonnet about the sea",
    "Summarize a legal contract",
    "Compose a haiku about autumn leaves",
    "Draft a cover letter for a software engineering job",
    "Write a Python function that sorts a linked list",
    "Fix the bug in this SQL query",
    "Describe what is happening in this photo",
    "Generate an image of a cat wearing a hat",
    "Plan a three-day trip to Rome",
    "Give me a recipe for chocolate cake",
    "Predict tomorrow's stock price of Apple",
    "Explain quantum entanglement to a child",
    "Diagnose the patient's symptoms from the medical record",
    "Play chess against me",
)


def best_similarities(encoder, texts: list[str], known: dict[str, torch.Tensor]) -> list[dict]:
    from loragen.generator.familiarity import familiarity

    embeddings = encoder.encode(texts)
    rows = []
    for text, embedding in zip(texts, embeddings):
        near = familiarity(embedding, known, threshold=0.0, k=1).nearest[0]
        rows.append({"text": text, "nearest": near.task, "similarity": round(near.similarity, 4)})
    return rows


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile by linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary_of(rows: list[dict], threshold: float) -> dict:
    values = [row["similarity"] for row in rows]
    warned = sum(value < threshold for value in values)
    return {"count": len(values), "min": min(values), "median": round(statistics.median(values), 4),
            "max": max(values), "warned": warned, "warn_rate": round(warned / len(values), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--percentile", type=float, default=5.0,
                        help="the real held-out descriptions that may warn, in percent")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 when the machine is shared)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/familiarity.json"))
    args = parser.parse_args()
    if not 0 <= args.percentile <= 100:
        parser.error("--percentile must be between 0 and 100")

    from loragen.generator.conditioning import TextEncoder
    from loragen.tasks.split import load_split
    from loragen.tasks.suite import get_task

    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    split = load_split()
    encoder = TextEncoder()  # no cache file: every text is embedded here, by the bundled model
    known = {name: encoder.encode(split.training_descriptions(get_task(name))) for name in split.seen_tasks}
    groups = {
        "held_out_tasks": best_similarities(
            encoder, [text for name in split.held_out_tasks for text in get_task(name).descriptions], known),
        "held_out_descriptions": best_similarities(
            encoder, [split.held_out_description(name) for name in split.seen_tasks], known),
        "nonsense": best_similarities(encoder, list(NONSENSE), known),
    }
    # Whether a known task in new words is nearest its own task: if so, a description could pick between looking a
    # task up and composing one (the generator's leave_one_out); measured, it mostly is not.
    for row, name in zip(groups["held_out_descriptions"], split.seen_tasks):
        row["task"] = name
    own_nearest = sum(row["nearest"] == row["task"] for row in groups["held_out_descriptions"])
    real = [row["similarity"] for group in ("held_out_tasks", "held_out_descriptions") for row in groups[group]]
    threshold = math.floor(percentile(real, args.percentile) * 100) / 100
    summaries = {group: summary_of(rows, threshold) for group, rows in groups.items()}
    seconds = time.perf_counter() - began

    print(f"known: {len(known)} seen tasks, {sum(len(v) for v in known.values())} training descriptions")
    print(f"threshold {threshold:.2f} (the {args.percentile:g}th percentile of the real held-out descriptions' "
          "best similarity, rounded down)")
    for group, summary in summaries.items():
        print(f"{group:22s} n={summary['count']:3d}  min {summary['min']:.3f}  median {summary['median']:.3f}  "
              f"max {summary['max']:.3f}  warned {summary['warned']}/{summary['count']} ({summary['warn_rate']:.0%})")
    print(f"held_out_descriptions nearest their own task: {own_nearest}/{len(groups['held_out_descriptions'])}")
    for row in sorted(groups["nonsense"], key=lambda row: -row["similarity"]):
        flag = "warns" if row["similarity"] < threshold else "passes"
        print(f"  {row['similarity']:.3f} {flag:6s} {row['text']!r} (nearest {row['nearest']})")
    write_summary(args.out, {
        "command": command_line(), "date": machine()["date"], "machine": machine(),
        "text_model": encoder.model_id, "known_tasks": len(known), "percentile": args.percentile,
        "threshold": threshold, "summary": summaries, "own_task_nearest": own_nearest, "seconds": round(seconds, 1),
        "rows": groups})
    print(f"wrote {args.out} in {seconds:.0f} s")


if __name__ == "__main__":
    main()
