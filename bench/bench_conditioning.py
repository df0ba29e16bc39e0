"""Does the generator use its condition? A fast check on the real adapters, with no lm-eval.

    python -m bench.bench_conditioning --home bench/out/home --steps 800 [--d-model 256 ...]

Trains a generator (the settings of loragen.toml, overridable here) on the trained adapters in --home
(workflows.train, which registers it there), then samples one adapter per training task from that task's
description and compares the sampled residual (adapter minus the mean training adapter) with every task's mean
residual. A generator that reads its condition lands nearest its own task; one that ignores it lands nowhere in
particular. Also prints the share of the residual's variance that lies between tasks (the part only the condition
can explain) in the generator's normalised token space.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.harness import BASE, command_line, machine, open_registry, write_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("bench/out/home"))
    parser.add_argument("--bases", default=f"{BASE}@v1")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--d-model", type=int, default=None)
    parser.add_argument("--n-layers", type=int, default=None)
    parser.add_argument("--prototype-dim", type=int, default=None)
    parser.add_argument("--tokens-per-step", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--memory-slots", type=int, default=None)
    parser.add_argument("--direct-readout", type=int, choices=(0, 1), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/out/conditioning.json"))
    args = parser.parse_args()

    from loragen.config import load_settings
    from loragen.generator.tokenizer import NormStats, tokenize
    from loragen.generator.training import common_layout, mean_adapter, subtract
    from loragen.workflows import collect_training_set, load_generator, sample_state_dict, train

    torch.set_num_threads(args.threads)
    registry = open_registry(args.home)
    overrides = {"steps": args.steps, "d_model": args.d_model, "n_layers": args.n_layers,
                 "prototype_dim": args.prototype_dim, "tokens_per_step": args.tokens_per_step,
                 "batch_size": args.batch_size, "learning_rate": args.lr, "memory_slots": args.memory_slots,
                 "direct_readout": None if args.direct_readout is None else bool(args.direct_readout)}
    settings = replace(load_settings().generator, seed=args.seed, **{k: v for k, v in overrides.items() if v is not None})
    bases = args.bases.split(",")
    data = collect_training_set(registry, bases=bases)  # what workflows.train collects too, read for the analysis
    tasks = sorted(data.task_descriptions)

    # Share of variance between tasks, in the token space the generator is trained in.
    layout = common_layout(data.adapters, settings.token_size)
    anchor = mean_adapter(data.adapters)
    stats = NormStats.fit([a.state_dict for a in data.adapters], layout)
    tokens = {a.uid: tokenize(subtract(a.state_dict, anchor), layout, stats)[0] for a in data.adapters}
    task_mean = {t: torch.stack([tokens[a.uid] for a in data.adapters if a.task == t]).mean(0) for t in tasks}
    total = torch.stack([tokens[a.uid].pow(2).mean() for a in data.adapters]).mean().item()
    within = torch.stack([(tokens[a.uid] - task_mean[a.task]).pow(2).mean() for a in data.adapters]).mean().item()

    began = time.perf_counter()
    registered, _ = train(registry, settings, bases=bases)
    train_s = time.perf_counter() - began
    generator = load_generator(registry, registered.id)
    checkpoint = generator.checkpoint

    rows, hits = [], 0
    for task in tasks:
        text = data.text_embeddings[task][0]
        base = data.base_embeddings[data.adapters[[a.task for a in data.adapters].index(task)].base]
        sampled = sample_state_dict(generator, text, base, seed=0, method="ddim", steps=settings.sample_steps, eta=0.0)
        residual = tokenize(subtract(sampled, anchor), layout, stats)[0].flatten()
        cosines = {t: torch.nn.functional.cosine_similarity(residual, m.flatten(), dim=0).item()
                   for t, m in task_mean.items()}
        nearest = max(cosines, key=cosines.get)
        hits += nearest == task
        others = [c for t, c in cosines.items() if t != task]
        rows.append({"task": task, "cos_own": cosines[task], "cos_other_mean": sum(others) / len(others),
                     "nearest": nearest, "norm_ratio": (residual.norm() / task_mean[task].norm()).item()})
        print(f"{task:18s} cos to own task's mean residual {cosines[task]:+.3f}  to others {rows[-1]['cos_other_mean']:+.3f}"
              f"  nearest {nearest}", flush=True)
    summary = {"between_task_share": round(1 - within / total, 4), "identified": f"{hits}/{len(tasks)}",
               "final_loss": checkpoint.training["final_loss"], "train_s": round(train_s, 1),
               "settings": {k: getattr(settings, k) for k in overrides}}
    print(summary)
    write_summary(args.out, {"command": command_line(), "machine": machine(),
                             "summary": summary, "rows": rows})


if __name__ == "__main__":
    main()
