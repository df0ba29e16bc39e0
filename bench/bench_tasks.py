"""Issue 3's benchmark: per task, zero-shot vs a fine-tuned LoRA on the real SmolLM2-135M, with fine-tuning time.

    python bench/bench_tasks.py --home bench/out/home --steps 120 --limit 100

Every adapter and score lands in the registry at --home (reused by bench_generator.py);
the table is printed and written to bench/out/tasks.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.harness import BASE, code_revision, command_line, machine, open_registry, write_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("bench/out/home"))
    parser.add_argument("--tasks", default="", help="comma-separated; default all bundled tasks")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--limit", type=int, default=100, help="test examples per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when the machine is shared)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/tasks.json"))
    args = parser.parse_args()

    from loragen.config import FinetuneConfig, LoraConfig
    from loragen.tasks.suite import get_task, list_tasks
    from loragen.workflows import BaseLoader, evaluate_adapters, evaluate_base, finetune_task

    torch.set_num_threads(args.threads)
    registry = open_registry(args.home)
    tasks = [get_task(t) for t in args.tasks.split(",") if t] or list_tasks()
    loader = BaseLoader(registry)  # the base is loaded once for every task's evaluations and fine-tuning
    lora = LoraConfig()
    config = FinetuneConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                            checkpoints=args.checkpoints, checkpoint_every=args.checkpoint_every, seed=args.seed)
    rows = []
    for task in tasks:
        began = time.perf_counter()
        options = {"limit": args.limit, "details": {"bench": "bench_tasks"}, "loader": loader}
        [zero] = evaluate_base(registry, BASE, tasks=[task], **options)
        outcome = finetune_task(registry, task, BASE, lora, config, loader=loader)
        final = outcome.checkpoints[-1]
        [trained] = evaluate_adapters(registry, [final.id], tasks=[task], **options)
        finetune_s = outcome.train_s
        row = {"task": task.name, "kind": task.kind, "metric": zero.metric, "zero_shot": zero.value,
               "trained": trained.value, "examples": zero.num_examples, "finetune_s": round(finetune_s, 1),
               "final_loss": round(final.loss, 4), "adapters": [c.id for c in outcome.checkpoints],
               "total_s": round(time.perf_counter() - began, 1)}
        rows.append(row)
        print(f"{task.name:20s} {zero.metric:12s} zero-shot {zero.value:.3f}  trained {trained.value:.3f}  "
              f"fine-tune {finetune_s:6.1f} s", flush=True)
    # Runs on a subset of tasks update their rows and keep the others (each row says which run made it).
    previous = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    run = {"command": command_line(), "machine": machine(), "revision": code_revision()}
    for row in rows:
        row["run"] = run
    rows = sorted([r for r in previous if r["task"] not in {row["task"] for row in rows}] + rows, key=lambda r: r["task"])
    wins = sum(r["trained"] > r["zero_shot"] for r in rows)
    print(f"trained beats zero-shot on {wins}/{len(rows)} tasks")
    write_summary(args.out, {"command": command_line(), "machine": machine(),
                          "settings": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
