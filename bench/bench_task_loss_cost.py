"""Where one task-loss step's time goes, on a registry's real training set (issue 11: on SmolLM2 a step cost
about 40 s on one core, whatever the examples per adapter).

    python -m bench.bench_task_loss_cost                     # the generalization benchmark's training set and
                                                             # its task-loss generator's settings, 1 thread
    python -m bench.bench_task_loss_cost --batch-sizes 1,4 --repeats 2 --json

A task-loss step (loragen.generator.training.TaskLossStep) draws `batch_size` adapters x `task_descriptions_per_step`
descriptions: one row each. For every row the generator predicts x0 for EVERY token of the adapter, and the adapter
runs the frozen base on `task_examples_per_step` examples. This times, per batch size, after one warm-up step:
the step's forward (and within it the generator's x0), its backward, and the generator's x0 forward and backward
alone on the same number of rows (a surrogate loss); what is left is the base passes. The generator is untrained
(its cost does not depend on its weights).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.harness import command_line, machine


def measure(data, settings, batch_size: int, repeats: int, seed: int = 0) -> dict:
    """Seconds of one task-loss step on `data` at `batch_size` adapters, split into generator and base parts."""
    from loragen.generator import task_loss as task_loss_module
    from loragen.generator.training import TaskLossStep, prepare_training

    settings = replace(settings, batch_size=batch_size)
    prepared = prepare_training(data, settings)
    model, step = prepared.model, TaskLossStep(data, settings, prepared.layout, prepared.stats, prepared.anchor)
    sampler = torch.Generator().manual_seed(seed)
    rows = batch_size * settings.task_descriptions_per_step
    inner = task_loss_module.predicted_tokens
    timed = {"x0": 0.0}

    def predicted_tokens(*args, **kwargs):  # the step's own x0, timed inside its forward
        began = time.perf_counter()
        out = inner(*args, **kwargs)
        timed["x0"] += time.perf_counter() - began
        return out

    def one() -> dict:
        timed["x0"] = 0.0
        began = time.perf_counter()
        loss = step(model, prepared.schedule, prepared.tokens, prepared.base_rows, prepared.positions, sampler)
        forward = time.perf_counter() - began
        began = time.perf_counter()
        loss.backward()
        backward = time.perf_counter() - began
        model.zero_grad(set_to_none=True)
        picks = torch.arange(rows) % len(data.adapters)
        text = torch.stack([data.text_embeddings[data.adapters[i].task][0] for i in picks.tolist()])
        began = time.perf_counter()
        x0 = inner(model, prepared.schedule, prepared.positions, text, prepared.base_rows[picks], None,
                   timestep="sampled", clean=prepared.tokens[picks], generator=sampler)
        x0_forward = time.perf_counter() - began
        began = time.perf_counter()
        x0.square().mean().backward()
        x0_backward = time.perf_counter() - began
        model.zero_grad(set_to_none=True)
        return {"forward_s": forward, "forward_x0_s": timed["x0"], "backward_s": backward,
                "x0_alone_forward_s": x0_forward, "x0_alone_backward_s": x0_backward}

    task_loss_module.predicted_tokens = predicted_tokens
    try:
        one()  # warm-up: loads the base, encodes the examples
        runs = [one() for _ in range(repeats)]
    finally:
        task_loss_module.predicted_tokens = inner
    best = min(runs, key=lambda r: r["forward_s"] + r["backward_s"])
    total = best["forward_s"] + best["backward_s"]
    generator = best["x0_alone_forward_s"] + best["x0_alone_backward_s"]
    return {"batch_size": batch_size, "rows": rows, "tokens_per_row": prepared.layout.num_tokens,
            "examples_per_row": settings.task_examples_per_step, "step_s": round(total, 2),
            "generator_x0_s": round(generator, 2), "base_passes_s": round(max(0.0, total - generator), 2),
            "generator_share": round(min(1.0, generator / total), 3), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default="bench/out/generalization/home", help="the registry to read adapters from")
    parser.add_argument("--generators", default="bench/out/generalization/generators.json",
                        help="bench_generalization's record of its generators: their settings are used")
    parser.add_argument("--column", default="generated", help="which generator's settings (the task-loss one)")
    parser.add_argument("--batch-sizes", default="1,4", help="adapters per task-loss step, comma-separated")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bench.harness import open_registry
    from loragen.config import load_settings
    from loragen.tasks.split import load_split
    from loragen.workflows import collect_training_set

    record = Path(args.generators)
    if not record.is_file():
        parser.error(f"{record} does not exist: run `python -m bench.bench_generalization` first, or give --generators")
    made = json.loads(record.read_text())
    if args.column not in made:
        parser.error(f"--column: {args.column!r} not in {record} (it has {', '.join(made)})")
    defaults = load_settings().generator
    settings = replace(defaults, **{k: v for k, v in made[args.column]["settings"].items() if hasattr(defaults, k)})
    if not settings.task_loss_weight:
        parser.error(f"--column {args.column}: that generator was trained without the task loss")
    data = collect_training_set(open_registry(Path(args.home)), split=load_split())
    results = [measure(data, settings, int(b), args.repeats) for b in args.batch_sizes.split(",") if b]
    if args.json:
        print(json.dumps({"command": command_line(), "machine": machine(), "adapters": len(data.adapters),
                          "results": results}, indent=2))
        return
    print(f"{len(data.adapters)} training adapters; {results[0]['tokens_per_row']} tokens each; "
          f"{results[0]['examples_per_row']} examples per row; best of {args.repeats}")
    print(f"{'adapters':>8} {'rows':>5} {'step s':>8} {'generator x0 s':>15} {'base passes s':>14} {'generator':>10}")
    for r in results:
        print(f"{r['batch_size']:>8} {r['rows']:>5} {r['step_s']:>8.1f} {r['generator_x0_s']:>15.1f} "
              f"{r['base_passes_s']:>14.1f} {r['generator_share']:>10.0%}")


if __name__ == "__main__":
    main()
