"""Issue 11's per-task scores: zero-shot and fine-tuned validation score of every bundled task, resumably.

    python -m bench.bench_corpus --home bench/out/home --steps 120 --threads 1

For each task (default: all bundled tasks, in name order) it scores the base
model zero-shot on the validation split, fine-tunes a LoRA on the train split,
scores that, and writes the row to --out (bench/out/corpus_scores.json) at once,
so an interrupted run continues where it stopped: tasks already in the file with
the same settings are skipped, and a fine-tune cut short resumes from its run
folder. A task whose gain is below --min-gain (0.05) is marked
`"learnable": false`. The adapters stay in the run folders and are not
registered: held-out tasks are scored too, and nothing of them may reach the
generator's training set.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

MIN_GAIN = 0.05
DEFAULT_HOME = Path("bench/out/home")
DEFAULT_OUT = Path("bench/out/corpus_scores.json")
DEFAULT_RUNS = DEFAULT_HOME / "corpus-runs"  # bench_generalization reads these rows and runs


def score_tasks(model, tokenizer, tasks, *, out: Path, runs: Path, lora, config, limit: int | None,
                batch_size: int = 16, min_gain: float = MIN_GAIN, held_out: frozenset[str] = frozenset(),
                extra: dict | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Score each task zero-shot and fine-tuned on its validation split; return all rows in `out` of this call's
    settings.

    Rows already in `out` whose settings match this call's are kept and not
    recomputed; rows of other settings stay in the file but are not returned.
    Every new row is written before the next task starts, merged under a lock into the file as it is then, so
    processes scoring other tasks into the same `out` (bench_generalization's corpus --shard K/N) lose nothing.
    """
    from bench.harness import score_columns
    from loragen.workflows import finetune_unregistered

    settings = {"lora": asdict(lora), "finetune": asdict(config), "limit": limit, "split": "validation",
                "min_gain": min_gain, **(extra or {})}
    rows = {r["task"]: r for r in _read_rows(out) if r.get("settings") == settings}
    for task in tasks:
        if task.name in rows:
            log(f"{task.name}: already scored")
            continue
        began = time.perf_counter()
        options = {"split": "validation", "limit": limit, "batch_size": batch_size}
        [(_, zero, _)] = score_columns(model, tokenizer, task, {"zero_shot": None}, **options)
        # Named by everything that changes the weights, so other settings never resume (or reuse) this run.
        run_dir = runs / (f"{task.name}-s{config.seed}-n{config.steps}-lr{config.learning_rate}-b{config.batch_size}"
                          f"-r{lora.r}-{(extra or {}).get('base', 'base').replace('@', '_')}")
        result = finetune_unregistered(model, tokenizer, task, lora, config, run_dir)  # held-out tasks too: never registered
        [(_, trained, _)] = score_columns(model, tokenizer, task, {"fine_tuned": result.checkpoints[-1].path}, **options)
        gain = trained.value - zero.value
        row = {
            "task": task.name, "family": task.family, "kind": task.kind, "held_out": task.name in held_out,
            "metric": zero.metric, "zero_shot": zero.value, "fine_tuned": trained.value, "gain": round(gain, 4),
            "learnable": gain >= min_gain, "examples": zero.num_examples,
            "finetune_s": round(result.wall_time_s, 1), "final_loss": round(result.checkpoints[-1].loss, 4),
            "run_dir": str(run_dir), "total_s": round(time.perf_counter() - began, 1), "settings": settings,
        }
        _add_row(out, row)
        log(f"{task.name:24s} {zero.metric:12s} zero-shot {zero.value:.3f}  fine-tuned {trained.value:.3f}  "
            f"gain {gain:+.3f}{'' if gain >= min_gain else '  (not learnable)'}")
    return sorted((r for r in _read_rows(out) if r.get("settings") == settings), key=lambda r: r["task"])


def _add_row(path: Path, row: dict) -> None:
    """Put `row` into the file as it is now (replacing its task's row of the same settings), under a lock: rows of
    other settings first, then this settings' rows by task."""
    from filelock import FileLock

    with FileLock(f"{path}.lock", timeout=600):
        earlier = [r for r in _read_rows(path)
                   if not (r.get("settings") == row["settings"] and r["task"] == row["task"])]
        same = sorted([r for r in earlier if r.get("settings") == row["settings"]] + [row], key=lambda r: r["task"])
        _write_rows(path, [r for r in earlier if r.get("settings") != row["settings"]] + same)


def _read_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def _write_rows(path: Path, rows: list[dict]) -> None:
    """Write all rows at once (write_json: a kill mid-write leaves the previous file whole)."""
    from bench.harness import write_json

    write_json(path, {"rows": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME)
    parser.add_argument("--tasks", default="", help="comma-separated; default all bundled tasks")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--limit", type=int, default=100, help="validation examples per task (0: all)")
    parser.add_argument("--min-gain", type=float, default=MIN_GAIN)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when the machine is shared)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--summary", type=Path, default=Path("bench/results/corpus_scores.json"),
                        help="the committed summary: command, machine and the rows of the tasks asked for")
    args = parser.parse_args()

    import torch

    from bench.harness import BASE, command_line, machine, open_registry, write_summary
    from loragen.config import FinetuneConfig, LoraConfig
    from loragen.tasks.split import load_split
    from loragen.tasks.suite import get_task, list_tasks
    from loragen.workflows import load_base

    torch.set_num_threads(args.threads)
    registry = open_registry(args.home)
    tasks = [get_task(t) for t in args.tasks.split(",") if t] or list_tasks()
    model, tokenizer, version = load_base(registry, BASE)
    config = FinetuneConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                            checkpoints=1, checkpoint_every=args.steps, seed=args.seed)
    rows = score_tasks(model, tokenizer, tasks, out=args.out, runs=args.home / "corpus-runs", lora=LoraConfig(),
                       config=config, limit=args.limit or None, min_gain=args.min_gain,
                       held_out=frozenset(load_split().held_out_tasks), extra={"base": version.label})
    weak = [r["task"] for r in rows if not r["learnable"]]
    asked = {t.name for t in tasks}
    write_summary(args.summary, {"command": command_line(), "machine": machine(), "tasks_total": len(list_tasks()),
                              "tasks_scored": len([r for r in rows if r["task"] in asked]),
                              "rows": [r for r in rows if r["task"] in asked]})
    print(f"{len(rows)} tasks scored on {machine()['cpu']}; gain < {args.min_gain} on {len(weak)}: {', '.join(weak)}")


if __name__ == "__main__":
    main()
