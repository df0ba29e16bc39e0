"""Issue 4's headline experiment: refresh every task's adapter for an unseen evolved version of SmolLM2.

    python -m bench.evolve_base --home bench/out/home          # makes smollm2-135m@v2 and @v3 first
    python -m bench.bench_refresh --home bench/out/home

In one run, on the registry at --home (which bench_tasks.py filled with v1 adapters):
  1. fine-tunes each task on v2 (the generator's second version to learn from);
  2. trains a generator on the v1 and v2 adapters (v3 is never seen);
  3. `refresh`es to v3 (the library call behind `loragen refresh`), timed;
  4. fine-tunes each task directly on v3 (the ceiling), timed;
  5. scores on v3: zero-shot, the v2 adapter carried over unchanged, the regenerated
     adapter and the v3 fine-tuned adapter.
Steps already done in an earlier run are reused (fine-tuning runs resume or are
skipped; the generator run resumes). The table prints and goes to bench/out/refresh.json.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.common import BASE, command_line, git_revision, machine, open_registry, write_json

# The tasks where fine-tuning clearly beats zero-shot on v1 (BENCHMARKS.md, issue 3): on the
# translations a LoRA adds at most 0.10, too little to tell carried-over from regenerated.
DEFAULT_TASKS = "antonyms,country_region,element_symbol,hypernym_choice,noun_singular,verb_base_form"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("bench/out/home"))
    parser.add_argument("--tasks", default=DEFAULT_TASKS)
    parser.add_argument("--finetune-steps", type=int, default=120)
    parser.add_argument("--generator-steps", type=int, default=None, help="default: loragen.toml's")
    parser.add_argument("--limit", type=int, default=100, help="test examples per evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/out/refresh.json"))
    args = parser.parse_args()

    from loragen.config import FinetuneConfig, LoraConfig, load_settings
    from loragen.evaluation import attached, evaluate
    from loragen.tasks.suite import get_task
    from loragen.workflows import BaseLoader, finetune_task, refresh, train

    torch.set_num_threads(args.threads)
    registry = open_registry(args.home)
    versions = sorted(row["version"] for row in registry.list_bases() if row["base"] == BASE)
    if versions[-1] < 3:
        raise SystemExit(f"{BASE} has versions {versions}; run `python -m bench.evolve_base` first to make v2 and v3")
    seen, unseen = [f"{BASE}@v1", f"{BASE}@v2"], f"{BASE}@v3"
    tasks = [get_task(name) for name in args.tasks.split(",")]
    names = [t.name for t in tasks]
    lora = LoraConfig()
    # The settings bench_tasks used for the v1 adapters, so every version's adapters are made alike.
    finetune_config = FinetuneConfig(steps=args.finetune_steps, batch_size=8, learning_rate=2e-3, checkpoints=5,
                                     checkpoint_every=10, seed=args.seed)

    print(f"1. fine-tune {len(tasks)} tasks on {seen[1]}", flush=True)
    loader = BaseLoader(registry)
    for task in tasks:
        outcome = finetune_task(registry, task, seen[1], lora, finetune_config, loader=loader)
        print(f"   {task.name:18s} {outcome.train_s:6.1f} s", flush=True)

    print(f"2. train the generator on {', '.join(seen)}", flush=True)
    settings = load_settings().generator
    settings = replace(settings, seed=args.seed, steps=args.generator_steps or settings.steps)
    earlier = [g for g in registry.list_generators() if sorted(g["tasks"]) == sorted(names) and g["bases"] == seen]
    if earlier:  # trained by an earlier run of this benchmark: reuse it (refresh takes the newest generator)
        generator, summary = earlier[-1], {"adapters": earlier[-1]["adapters"], "final_loss": earlier[-1]["final_loss"],
                                           "reused": True}
        print(f"   reusing generator {generator['id']} (final loss {generator['final_loss']:.4f})", flush=True)
    else:
        registered, summary = train(registry, settings, tasks=names, bases=seen)
        generator = {"id": registered.id}
        print(f"   generator {registered.id}: {summary['adapters']} adapters, final loss {summary['final_loss']:.4f}, "
              f"{summary['wall_time_s']:.0f} s", flush=True)

    print(f"3. refresh to {unseen}", flush=True)
    began = time.perf_counter()
    items = refresh(registry, settings, base=BASE, tasks=names, seed=args.seed, validate=False)  # one sample, no selection
    refresh_s = time.perf_counter() - began
    if any(item.action != "generated" for item in items):
        refresh_s = None  # some were made by an earlier run ("skip: ..."): this time is not the whole refresh
    print(f"   {len(items)} adapters in {refresh_s if refresh_s is None else round(refresh_s, 1)} s", flush=True)

    print(f"4. fine-tune {len(tasks)} tasks on {unseen} (the ceiling)", flush=True)
    ceiling, finetune_s = {}, {}
    for task in tasks:
        outcome = finetune_task(registry, task, unseen, lora, finetune_config, loader=loader)
        ceiling[task.name], finetune_s[task.name] = outcome.checkpoints[-1].id, outcome.train_s
        print(f"   {task.name:18s} {finetune_s[task.name]:6.1f} s", flush=True)

    print(f"5. score on {unseen}", flush=True)
    # Not through evaluate_targets: the carried-over adapter runs on a version it was not made for, and
    # these scores stay out of the registry's comparison (as refresh --eval keeps them out).
    model, tokenizer, _ = loader.get(unseen)
    rows = []
    for item in items:
        task = get_task(item.task)
        [zero] = evaluate(model, tokenizer, [task], limit=args.limit)
        row = {"task": task.name, "metric": zero.metric, "examples": zero.num_examples, "zero_shot": zero.value,
               "carried_over": item.replaces, "regenerated": item.id, "finetuned": ceiling[task.name]}
        for column in ("carried_over", "regenerated", "finetuned"):
            with attached(model, registry.adapter_folder(row[column])) as peft_model:
                [score] = evaluate(peft_model, tokenizer, [task], limit=args.limit)
            row[column] = {"adapter": row[column], "score": score.value}
        row["v1_zero_shot"] = _v1_zero_shot(registry, task.name)
        rows.append(row)
        print(f"   {task.name:18s} zero-shot {zero.value:.3f}  carried over {row['carried_over']['score']:.3f}  "
              f"regenerated {row['regenerated']['score']:.3f}  fine-tuned {row['finetuned']['score']:.3f}", flush=True)

    finetune_all = sum(finetune_s.values())
    totals = {"refresh_s": None if refresh_s is None else round(refresh_s, 1), "finetune_all_s": round(finetune_all, 1),
              "speedup": None if refresh_s is None else round(finetune_all / refresh_s, 1)}
    for column in ("zero_shot", "carried_over", "regenerated", "finetuned"):
        values = [r[column] if column == "zero_shot" else r[column]["score"] for r in rows]
        totals[f"mean_{column}"] = round(sum(values) / len(values), 4)
    print(totals)
    write_json(args.out, {"command": command_line(), "machine": machine(), "revision": git_revision(),
                          "settings": vars(args), "generator": {**generator, **summary}, "rows": rows,
                          "summary": totals})


def _v1_zero_shot(registry, task: str) -> float | None:
    """The task's zero-shot score on v1, as bench_tasks recorded it (to show how far v3 drifted)."""
    from loragen.evaluation import comparison

    rows = [r for r in comparison(registry.eval_results())
            if r["task"] == task and r["base"] == f"{BASE}@v1" and r["zero_shot"]]
    return rows[-1]["zero_shot"]["mean"] if rows else None


if __name__ == "__main__":
    main()
