"""Generation vs fine-tuning wall time for the same adapter, measured in one process (issue 6's speed goal).

    python -m bench.bench_speed --home bench/out/home --task antonyms

Fine-tunes the task on v1 as bench_tasks does (120 steps, batch 8, lr 2e-3; a seed no
other benchmark used, so it really trains and nothing is registered), then samples the
task's adapter with the newest registered generator at several DDIM step counts, timed
(prototypes, sampling and detokenising; not writing the folder, which both sides would
pay). Also reports how close each step count's sample is to the 20-step one.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.harness import BASE, command_line, machine, open_registry, write_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("bench/out/home"))
    parser.add_argument("--task", default="antonyms")
    parser.add_argument("--finetune-steps", type=int, default=120)
    parser.add_argument("--sample-steps", default="20,10,5")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/out/speed.json"))
    args = parser.parse_args()

    from loragen.config import FinetuneConfig, LoraConfig
    from loragen.tasks.suite import get_task
    from loragen.workflows import (
        base_condition,
        finetune_unregistered,
        load_base,
        load_generator,
        sample_state_dict,
        text_encoder,
    )

    torch.set_num_threads(args.threads)
    registry = open_registry(args.home)
    task = get_task(args.task)
    label = f"{BASE}@v1"
    generator = load_generator(registry)
    text = text_encoder(registry).encode([task.descriptions[0]])[0]
    base = base_condition(registry, label)

    def flat(state_dict):
        return torch.cat([state_dict[k].flatten() for k in sorted(state_dict)])

    sampling, reference = {}, None
    for steps in (int(s) for s in args.sample_steps.split(",")):
        times = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            sample = sample_state_dict(generator, text, base, seed=0, method="ddim", steps=steps, eta=0.0)
            times.append(time.perf_counter() - began)
        vector = flat(sample)
        reference = vector if reference is None else reference
        sampling[steps] = {"seconds_median": round(statistics.median(times), 3), "seconds": [round(t, 3) for t in times],
                           "cos_to_first": round(torch.nn.functional.cosine_similarity(vector, reference, dim=0).item(), 6)}
        print(f"DDIM {steps:3d} steps: {sampling[steps]['seconds_median']:.2f} s (median of {args.repeats}), "
              f"cosine to the {args.sample_steps.split(',')[0]}-step sample {sampling[steps]['cos_to_first']:.6f}", flush=True)

    model, tokenizer, _ = load_base(registry, label)
    config = FinetuneConfig(steps=args.finetune_steps, batch_size=8, learning_rate=2e-3, checkpoints=1,
                            checkpoint_every=10, seed=12345)
    with tempfile.TemporaryDirectory(prefix="bench-speed-", dir=args.home) as tmp:
        result = finetune_unregistered(model, tokenizer, task, LoraConfig(), config, Path(tmp) / "run")
    print(f"fine-tuning {args.finetune_steps} steps: {result.wall_time_s:.1f} s", flush=True)
    ratios = {steps: round(result.wall_time_s / row["seconds_median"], 1) for steps, row in sampling.items()}
    print("fine-tuning / generation:", ", ".join(f"{ratio}x at {steps} steps" for steps, ratio in ratios.items()))
    write_summary(args.out, {"command": command_line(), "machine": machine(),
                          "generator": generator.uid[:12], "task": task.name, "finetune_s": round(result.wall_time_s, 1),
                          "sampling": sampling, "speedup": ratios})


if __name__ == "__main__":
    main()
