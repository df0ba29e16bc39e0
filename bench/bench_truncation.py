"""What cutting a generated blend back to the registry's rank costs in score (issue 20).

    python -m bench.bench_truncation --home /path/to/home --tasks verb_past_participle,verb_gerund --ranks 8,16,64

For each task (a bundled task; the generator is given its first description): the newest library generator's
coefficients are drawn once (seed 0), exported at each rank, and every export is scored with lm-eval on the task's
test split (--limit items). The largest rank asked for should be at least the blend's total rank for an exact
column (a blend of k library adapters of rank r has rank <= k r). Also reported: the share of the blend's squared
norm (summed over slots) each rank keeps, from the exported factors against the exact blend through the Gram.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from bench.harness import command_line, machine, open_registry


def kept_energy(generator, coefficients: torch.Tensor, state_dict: dict) -> float:
    """||cut||^2 / ||blend||^2, summed over slots (the cut is the blend's best low-rank part, so it is a share)."""
    from loragen.architectures import PEFT_PREFIX

    library, scale = generator.library, generator.checkpoint.lora["lora_alpha"] / generator.checkpoint.lora["r"]
    blend = torch.einsum("si,sij,sj->", coefficients.double(), library.grams, coefficients.double())
    cut = 0.0
    for slot in library.slots:
        a = state_dict[f"{PEFT_PREFIX}{slot}.lora_A.weight"].double()
        b = state_dict[f"{PEFT_PREFIX}{slot}.lora_B.weight"].double()
        cut += float(torch.einsum("ij,ji->", b.T @ b, a @ a.T)) * scale ** 2
    return cut / float(blend)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", required=True)
    parser.add_argument("--tasks", required=True, help="comma-separated bundled tasks")
    parser.add_argument("--ranks", default="8,16,64")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the summary JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from loragen.adapters import lora_config_dict, write_adapter_folder
    from loragen.config import load_settings
    from loragen.generator.sampling import export_blend, sample_coefficients
    from loragen.tasks.suite import get_task
    from loragen.workflows import base_condition, load_base, load_generator, score_on_base, text_encoder

    registry = open_registry(Path(args.home), add_bundled=False)
    generator = load_generator(registry)
    if generator.library is None:
        raise SystemExit("the newest generator is a raw-token generator: this measures library generators")
    label = generator.checkpoint.library[0]["base"]
    model, tokenizer, _ = load_base(registry, label)
    settings = load_settings().generator
    encoder, base = text_encoder(registry), base_condition(registry, label)
    ranks = [int(r) for r in args.ranks.split(",")]
    scale = generator.checkpoint.lora["lora_alpha"] / generator.checkpoint.lora["r"]
    targets = generator.checkpoint.lora["target_modules"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks.split(","):
            task = get_task(name)
            coefficients = sample_coefficients(generator, encoder.encode([task.descriptions[0]])[0], base, seed=0,
                                               method=settings.sample_method, steps=settings.sample_steps,
                                               eta=settings.eta)
            folders, energy = [], {}
            for rank in ranks:
                state_dict = export_blend(generator, coefficients, rank)
                energy[rank] = round(kept_energy(generator, coefficients, state_dict), 4)
                folders.append(write_adapter_folder(Path(tmp) / f"{name}-r{rank}", state_dict,
                                                    lora_config_dict(rank, scale * rank, targets)))
            scores = [s for [s] in score_on_base(model, tokenizer, [task], folders, limit=args.limit)]
            row = {"task": name, **{f"r{rank}": round(s.value, 4) for rank, s in zip(ranks, scores)},
                   "kept_energy": {f"r{rank}": energy[rank] for rank in ranks}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {"command": command_line(), "machine": machine(), "generator": generator.uid[:12],
               "library_size": generator.library.size, "limit": args.limit, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
