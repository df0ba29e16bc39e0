"""Diffusion loss alone vs diffusion + task loss, on the tiny setup (a random tiny Llama, two toy tasks).

    python -m bench.bench_task_loss --steps 120 --seeds 0 1 2

The training adapters are random LoRAs that do not help the tasks, so any drop of the
base's loss on the tasks' answers comes from the task loss. For every setting it trains
a tiny generator, samples one adapter per (task, description) with the settings' DDIM
sampler, and prints the base's mean answer loss with it (lower is better), next to
the base alone and to the training adapters themselves. No SmolLM2: numbers here say
whether the objective works and which timestep transfers to sampling, nothing about scale.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

SETTINGS = {
    "diffusion only": {},
    "+task w1 sampled": {"task_loss_weight": 1.0, "task_loss_timestep": "sampled"},
    "+task w5 sampled": {"task_loss_weight": 5.0, "task_loss_timestep": "sampled"},
    "+task w5 noise": {"task_loss_weight": 5.0, "task_loss_timestep": "noise"},
}


def main() -> None:
    from loragen.config import GeneratorSettings
    from loragen.finetune import collate, encode_examples
    from loragen.generator.task_loss import base_loss
    from loragen.workflows import train_on
    from tests.helpers import TINY_GENERATOR
    from tests.test_task_loss import held_in_loss, tiny_task_set
    from tests.tiny import make_tiny_llama

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="bench-task-loss-"))
    base = make_tiny_llama(folder / "base", seed=0)
    data = tiny_task_set(base, folder)
    model, tokenizer = data.load_base("tiny@v1")
    scale = data.lora["lora_alpha"] / data.lora["r"]
    batches = {task: collate(encode_examples(tokenizer, pairs), tokenizer.pad_token_id)
               for task, pairs in data.task_examples.items()}
    alone = sum(base_loss(model, b, None, scale) for b in batches.values()) / len(batches)
    own = sum(base_loss(model, batches[a.task], a.state_dict, scale) for a in data.adapters) / len(data.adapters)
    print(f"base alone {alone:.4f}   training adapters on their own tasks {own:.4f}")
    print(f"{'setting':<20} " + " ".join(f"seed {s:<3}" for s in args.seeds) + "   mean")
    for name, overrides in SETTINGS.items():
        losses = []
        for seed in args.seeds:
            settings = GeneratorSettings(**dict(TINY_GENERATOR, memory_slots=2, sample_steps=10, steps=args.steps,
                                                task_examples_per_step=8, seed=seed, **overrides))
            checkpoint = train_on(data, settings, folder / f"{name}-{seed}".replace(" ", "_"))
            losses.append(held_in_loss(checkpoint, data))
        print(f"{name:<20} " + " ".join(f"{v:<8.4f}" for v in losses) + f"   {sum(losses) / len(losses):.4f}",
              flush=True)


if __name__ == "__main__":
    main()
