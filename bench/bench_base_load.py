"""Loading a GGUF base: dequantized from the GGUF each time, against the float32 copy loragen keeps after the first
load (loragen.bases.load_model, `snapshots/converted/`), and that the copy is the same model.

    python -m bench.bench_base_load --threads 1          # both bundled bases, in a registry of their own

For each base, in one process: a load straight from the GGUF, the first load_base (which converts and writes the
copy), and a second load_base (from the copy); then the weights, the tokenizer on a few texts, its chat template
and the logits of one prompt, compared between the GGUF's load and the copy's. Writes bench/results/base_load.json.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from bench.harness import BASE, GEMMA_BASE, command_line, machine, open_registry, write_summary

TEXTS = ("Hello, World: 42!\n  tabs\tand ünïcödé 日本語", "Translate to Portuguese: the house",
         "Q: What is the capital of France?\nA:")


def measure(registry, base: str) -> dict:
    import torch

    from loragen.bases import _load_model
    from loragen.workflows import load_base

    version = registry.version(base)
    converted = registry.converted_folder(version)
    shutil.rmtree(converted, ignore_errors=True)  # time the first load as a new registry sees it
    began = time.perf_counter()
    direct_model, direct_tokenizer = _load_model(registry.base_folder(version), version.gguf_file, "float32")
    direct_s = time.perf_counter() - began
    began = time.perf_counter()
    load_base(registry, base)
    first_s = time.perf_counter() - began
    began = time.perf_counter()
    model, tokenizer, _ = load_base(registry, base)
    cached_s = time.perf_counter() - began

    ours, theirs = direct_model.state_dict(), model.state_dict()
    prompt = direct_tokenizer(TEXTS[-1], return_tensors="pt").input_ids
    with torch.no_grad():
        same_logits = torch.equal(direct_model(prompt).logits, model(prompt).logits)
    return {
        "version": version.label,
        "gguf_load_s": round(direct_s, 1), "first_load_converting_s": round(first_s, 1),
        "converted_load_s": round(cached_s, 1), "gguf_over_converted": round(direct_s / cached_s, 1),
        "same_weights": ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours),
        "same_tokens": all(direct_tokenizer(t).input_ids == tokenizer(t).input_ids for t in TEXTS),
        "same_chat_template": direct_tokenizer.chat_template == tokenizer.chat_template,
        "same_logits": same_logits,
        "converted_bytes": sum(p.stat().st_size for p in converted.iterdir()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default="bench/out/base_load/home", help="this benchmark's own registry")
    parser.add_argument("--bases", default=f"{BASE},{GEMMA_BASE}", help="bundled bases, comma-separated")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when the machine is shared)")
    parser.add_argument("--summary", default="bench/results/base_load.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    bases = tuple(b.strip() for b in args.bases.split(",") if b.strip())
    registry = open_registry(Path(args.home), add_bundled=True, bases=bases)
    results = {}
    for base in bases:
        results[base] = measure(registry, base)
        print(base, results[base], flush=True)
    write_summary(Path(args.summary), {"command": command_line(), "machine": machine(), "bases": results})


if __name__ == "__main__":
    main()
