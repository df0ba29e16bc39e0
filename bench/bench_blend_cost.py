"""What the library generator costs on the real base, against a LoRA training step (issue 20's time goals).

    python -m bench.bench_blend_cost --home bench/out/generalization/home --task verb_past_participle

On a registry with a trained library generator (the newest, or --generator), on its base, one process, --threads:
  generate      draw the coefficients (DDIM, the settings' steps) and export them at the registry's rank
  task_step     one task-loss step of the generator: 2 descriptions of one task, --examples examples each, through
                the blended base (forward + backward into the generator)
  refine_step   one refinement step (forward + backward into the slot-shared shift) on --examples examples
  lora_step     one LoRA fine-tuning step (peft, the registry's rank and targets) on the same examples, the yardstick
Each is timed --repeats times after one warm-up; medians are printed, and each as a ratio to lora_step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.harness import command_line, machine, open_registry


def timed(action, repeats: int) -> float:
    action()  # warm-up: lazy imports, first allocations
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", required=True, help="a registry with a trained library generator")
    parser.add_argument("--generator", default=None, help="generator id (default: the newest)")
    parser.add_argument("--task", default="verb_past_participle", help="a bundled task: its description and examples")
    parser.add_argument("--examples", type=int, default=4, help="examples per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from peft import LoraConfig, get_peft_model

    from loragen.config import load_settings
    from loragen.generator.blend_training import predict_x0
    from loragen.generator.refine import blend_loss, example_batch
    from loragen.generator.sampling import export_blend, sample_coefficients
    from loragen.tasks.suite import get_task
    from loragen.workflows import base_condition, load_base, load_generator, text_encoder

    registry = open_registry(Path(args.home), add_bundled=False)
    generator = load_generator(registry, args.generator)
    if generator.library is None:
        raise SystemExit(f"generator {generator.uid[:12]} is a raw-token generator: this measures library generators")
    label = generator.checkpoint.library[0]["base"]
    model, tokenizer, _ = load_base(registry, label)
    model.requires_grad_(False)
    settings = load_settings().generator
    task = get_task(args.task)
    text = text_encoder(registry).encode(task.descriptions[:2])
    base = base_condition(registry, label)
    batch = example_batch(tokenizer, task.examples("train")[:args.examples])
    library = generator.library

    def generate():
        coefficients = sample_coefficients(generator, text[0], base, seed=0, method=settings.sample_method,
                                           steps=settings.sample_steps, eta=settings.eta)
        export_blend(generator, coefficients)

    network = generator.model
    network.train()
    checkpoint = generator.checkpoint
    slots, size = len(library.slots), library.size

    def task_step():
        network.zero_grad(set_to_none=True)
        x0 = torch.full((2, slots, size), 1.0 / size)
        allowed = torch.ones(2, size, dtype=torch.bool)
        predicted = predict_x0(network, checkpoint.schedule, checkpoint.slot_positions(), text, base.expand(2, -1), x0,
                               allowed, torch.Generator().manual_seed(0))
        loss = sum(blend_loss(model, library, coefficients, batch) for coefficients in predicted) / 2
        loss.backward()

    shift = torch.zeros(size, requires_grad=True)
    start = torch.full((slots, size), 1.0 / size)

    def refine_step():
        shift.grad = None
        blend_loss(model, library, start + shift[None, :], batch).backward()

    results = {"generate": timed(generate, args.repeats), "task_step": timed(task_step, args.repeats),
               "refine_step": timed(refine_step, args.repeats)}

    # Last: peft wraps the base's linear layers in place, where the blend's hooks expect plain ones.
    lora = checkpoint.lora
    peft_model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"],
                                                  target_modules=list(lora["target_modules"])))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)

    def lora_step():
        optimizer.zero_grad(set_to_none=True)
        peft_model(**batch).loss.backward()
        optimizer.step()

    results["lora_step"] = timed(lora_step, args.repeats)
    summary = {"command": command_line(), "machine": machine(), "generator": generator.uid[:12],
               "library_size": size, "slots": slots, "examples": args.examples,
               "seconds": {k: round(v, 3) for k, v in results.items()},
               "ratio_to_lora_step": {k: round(v / results["lora_step"], 2) for k, v in results.items()}}
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    print(f"library of {size} adapters over {slots} slots, {args.examples} examples, {args.threads} thread(s)")
    for name, seconds in results.items():
        print(f"  {name:12s} {seconds:8.3f} s   {seconds / results['lora_step']:6.2f} x lora_step")


if __name__ == "__main__":
    main()
