"""Issue 6's benchmark: the ORAL generator on the real SmolLM2-135M and the bundled tasks.

    python -m bench.bench_generator --home bench/out/home --held-out translate_en_pt,element_symbol

Needs the trained adapters that bench/bench_tasks.py registered in --home. In one run:
  * trains a generator on every task but the held-out ones (--held-out plus the committed split's),
    each seen task's split-held-out description withheld (workflows.train: registered in --home, held-out
    tasks recorded);
  * per task: generated adapter (seen description / held-out description / held-out task),
    ablations with a random text or random base embedding (ORAL fig. 3), and the
    memorisation baselines of Zeng et al. 2025: (a) nearest training adapter by
    condition, (b) mean of the nearest task's adapters, (c) a training adapter plus
    Gaussian noise of the norm that separates the generated adapter from it;
  * cosine similarity of each generated adapter to its nearest training adapter;
  * generation time vs the fine-tuning time of the same adapter.
Results print as a table and go to bench/out/generator.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.harness import BASE, command_line, machine, open_registry, score_columns, write_summary


def flat(state_dict, keys):
    return torch.cat([state_dict[k].flatten().float() for k in keys])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("bench/out/home"))
    parser.add_argument("--held-out", default="translate_en_pt,element_symbol")
    parser.add_argument("--steps", type=int, default=800, help="generator training steps")
    parser.add_argument("--limit", type=int, default=50, help="test examples per evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when the machine is shared)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/generator.json"))
    args = parser.parse_args()

    from loragen.adapters import lora_config_dict, write_adapter_folder
    from loragen.config import load_settings
    from loragen.evaluation import comparison
    from loragen.tasks.split import load_split
    from loragen.tasks.suite import get_task, list_tasks
    from loragen.workflows import (
        base_condition,
        collect_training_set,
        load_base,
        load_generator,
        sample_state_dict,
        text_encoder,
        train,
    )

    torch.set_num_threads(args.threads)
    registry = open_registry(args.home)
    settings = replace(load_settings().generator, steps=args.steps, seed=args.seed)
    v1 = f"{BASE}@v1"  # the version bench_tasks fine-tuned on (bench_refresh adds evolved ones)
    bundled = {t.name for t in list_tasks()}  # adapters of retired tasks (country_capital) stay out
    everything = collect_training_set(registry, tasks=sorted(bundled), bases=[v1])
    tasks = sorted(everything.task_descriptions)
    # Held out: the tasks named here plus every task the committed split holds out.
    split = load_split()
    held_out = sorted({t for t in args.held_out.split(",") if t} | (set(split.held_out_tasks) & set(tasks)))
    seen = [t for t in tasks if t not in held_out]

    # Training set: seen tasks only, each without the description the split holds out (what workflows.train
    # collects from the same arguments; read here too for the baselines).
    data = collect_training_set(registry, tasks=seen, bases=[v1], split=split)
    withheld = {t: split.held_out_description(t) for t in data.task_descriptions if t in split.held_out_descriptions}
    began = time.perf_counter()
    registered, _ = train(registry, settings, tasks=seen, bases=[v1], held_out=held_out, split=split)
    train_seconds = time.perf_counter() - began
    generator = load_generator(registry, registered.id)
    checkpoint = generator.checkpoint
    keys = checkpoint.layout.keys
    print(f"generator: {len(data.adapters)} adapters of {len(seen)} tasks, {checkpoint.layout.num_tokens} tokens of "
          f"{checkpoint.config.token_size}, trained {train_seconds:.0f} s, final loss {checkpoint.training['final_loss']:.4f}",
          flush=True)

    encoder = text_encoder(registry)
    base = base_condition(registry, v1)
    by_task = {t: [a for a in everything.adapters if a.task == t] for t in tasks}
    training_vectors = {a.uid: flat(a.state_dict, keys) for a in data.adapters}
    task_of = {a.uid: a.task for a in data.adapters}
    seen_text = {t: data.text_embeddings[t].mean(0) for t in seen}
    lora = lora_config_dict(checkpoint.lora["r"], checkpoint.lora["lora_alpha"], checkpoint.lora["target_modules"])
    rng = torch.Generator().manual_seed(1234)
    random_text = torch.nn.functional.normalize(torch.randn(384, generator=rng), dim=0)
    random_base = base + torch.randn(base.shape, generator=rng) * base.std()
    model, tokenizer, version = load_base(registry, v1)
    zero_shot = {r["task"]: r["zero_shot"]["mean"] for r in comparison(registry.eval_results())
                 if r["zero_shot"] and r["base"] == v1}

    def score(task_name, state_dicts: dict, tmp) -> dict[str, float]:
        """Each column's adapter (its LoRA tensors) scored on the task's test split."""
        folders = {column: write_adapter_folder(Path(tmp) / task_name / column, state_dict, lora)
                   for column, state_dict in state_dicts.items()}
        return {column: result.value for column, result, _ in
                score_columns(model, tokenizer, get_task(task_name), folders, limit=args.limit)}

    def nearest_training(vector):
        sims = {uid: torch.nn.functional.cosine_similarity(vector, v, dim=0).item() for uid, v in training_vectors.items()}
        uid = max(sims, key=sims.get)
        return uid, sims[uid]

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-generator-", dir=args.home) as tmp:
        for task in tasks:
            task_obj = get_task(task)
            is_seen = task in seen
            own = by_task[task][-1]  # the task's last fine-tuning checkpoint (the "trained" adapter)
            description = task_obj.descriptions[0]
            text = encoder.encode([description])[0]
            row = {"task": task, "split": "seen" if is_seen else "held-out task", "metric": "",
                   "zero_shot": zero_shot.get(task)}
            t0 = time.perf_counter()
            generated = sample_state_dict(generator, text, base, seed=args.seed, method=settings.sample_method,
                                          steps=settings.sample_steps, eta=settings.eta)
            row["generate_s"] = round(time.perf_counter() - t0, 2)
            adapters = {"trained": own.state_dict, "generated": generated}  # column -> LoRA tensors, scored below
            gen_vector = flat(generated, keys)
            near_uid, near_cos = nearest_training(gen_vector)
            row["nearest_training_task"], row["cosine_to_nearest"] = task_of[near_uid], round(near_cos, 4)
            if is_seen and task in withheld:
                adapters["generated_heldout_description"] = sample_state_dict(
                    generator, encoder.encode([withheld[task]])[0], base, seed=args.seed,
                    method=settings.sample_method, steps=settings.sample_steps, eta=settings.eta)
            adapters["ablation_random_text"] = sample_state_dict(
                generator, random_text, base, seed=args.seed, method=settings.sample_method,
                steps=settings.sample_steps, eta=settings.eta)
            adapters["ablation_random_base"] = sample_state_dict(
                generator, text, random_base, seed=args.seed, method=settings.sample_method,
                steps=settings.sample_steps, eta=settings.eta)
            # Memorisation baselines, conditioned the way the generator is: by the description.
            nearest_task = max(seen, key=lambda t: torch.dot(seen_text[t], text).item())
            neighbours = by_task[nearest_task]
            row["baseline_nearest_task"] = nearest_task
            nearest_adapter = neighbours[-1].state_dict
            if nearest_task != task:  # else baseline (a) is the task's own adapter, scored as "trained"
                adapters["baseline_a_nearest"] = nearest_adapter
            adapters["baseline_b_mean"] = {k: torch.stack([a.state_dict[k] for a in neighbours]).mean(0) for k in keys}
            distance = (gen_vector - flat(nearest_adapter, keys)).norm()
            noise = torch.randn(gen_vector.shape, generator=rng)
            noise = noise / noise.norm() * distance
            noisy, offset = {}, 0
            for k in keys:
                size = nearest_adapter[k].numel()
                noisy[k] = nearest_adapter[k] + noise[offset:offset + size].view_as(nearest_adapter[k])
                offset += size
            adapters["baseline_c_noise"] = noisy
            row.update(score(task, adapters, tmp))
            row.setdefault("baseline_a_nearest", row["trained"])
            row["finetune_s"] = registry.get_adapter(own.uid[:12])["provenance"].get("wall_time_s")
            row["metric"] = "acc" if task_obj.kind == "multiple_choice" else "exact_match"
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    def mean(values):
        values = [v for v in values if v is not None]
        return round(statistics.mean(values), 4) if values else None

    seen_rows = [r for r in rows if r["split"] == "seen"]
    held_rows = [r for r in rows if r["split"] != "seen"]
    summary = {
        "generated_over_trained_seen": mean([r["generated"] / r["trained"] for r in seen_rows if r["trained"]]),
        "heldout_description_over_trained_seen": mean(
            [r["generated_heldout_description"] / r["trained"] for r in seen_rows if r["trained"]]),
        "heldout_task_generated": mean([r["generated"] for r in held_rows]),
        "heldout_task_zero_shot": mean([r["zero_shot"] for r in held_rows]),
        "generation_s_mean": mean([r["generate_s"] for r in rows]),
        "finetune_s_mean": mean([r["finetune_s"] for r in rows]),
        "train_generator_s": round(train_seconds, 1),
    }
    if summary["generation_s_mean"] and summary["finetune_s_mean"]:
        summary["speedup_generate_vs_finetune"] = round(summary["finetune_s_mean"] / summary["generation_s_mean"], 1)
    print(summary)
    write_summary(args.out, {"command": command_line(), "machine": machine(),
                          "settings": {**vars(args), "generator": settings.__dict__}, "held_out": held_out,
                          "withheld_descriptions": withheld, "rows": rows, "summary": summary,
                          "generator_training": checkpoint.training})


if __name__ == "__main__":
    main()
