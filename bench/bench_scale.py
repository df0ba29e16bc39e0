"""Issue 5's scale benchmark: generator time and memory per generated adapter as the adapter grows.

    python -m bench.bench_scale --steps 2

Adapter shapes come from real base configurations (built on the meta device, no weights):
SmolLM2-135M, a 1B-class Llama (Llama-3.2-1B's shape) and a 7B-class Mistral, with LoRA
r=8 on q,v and r=64 on every linear layer of the blocks. Each case runs in a fresh process
with the default generator (loragen.toml) and samples one adapter: the Mamba pass once,
then --steps DDIM steps (time per step is reported, and the 20-step default extrapolated).
Peak memory is the process's maximum resident set. Results: table, bench/out/scale.json
and bench/out/scale.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.harness import command_line, machine, write_summary
from loragen.architectures import LLAMA

BASES = {
    "SmolLM2-135M": dict(model_type="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, vocab_size=49152),
    "Llama-1B-class": dict(model_type="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                           num_key_value_heads=8, intermediate_size=8192, vocab_size=128256),
    "Mistral-7B-class": dict(model_type="mistral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                             num_key_value_heads=8, intermediate_size=14336, vocab_size=32000),
}
LORAS = {"r8-qv": (8, ["q_proj", "v_proj"]),
         "r64-all": (64, list(LLAMA.projections))}  # every projection of a Llama layer (loragen.architectures)


def lora_shapes(base: dict, rank: int, targets: list[str]) -> dict[str, tuple[int, int]]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**base)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets and ".layers." in name:
            out_features, in_features = module.weight.shape
            shapes[f"base_model.model.{name}.lora_A.weight"] = (rank, in_features)
            shapes[f"base_model.model.{name}.lora_B.weight"] = (out_features, rank)
    return shapes


def one_case(base_name: str, lora_name: str, steps: int) -> dict:
    """Runs inside its own process so that its peak memory is its own."""
    import resource
    import time
    from dataclasses import replace

    import torch

    from loragen.config import load_settings
    from loragen.generator.conditioning import BASE_EMBED_DIM, TEXT_EMBED_DIM
    from loragen.generator.diffusion import DDPMSchedule
    from loragen.generator.model import ORALGenerator, generator_config_from_settings
    from loragen.generator.sampling import sample_tokens
    from loragen.generator.tokenizer import LoraLayout

    torch.set_num_threads(2)
    rank, targets = LORAS[lora_name]
    # The scalable configuration, as recorded in BENCHMARKS.md: prototype 256, no token memory (its
    # tables hold slots x tokens x prototype values, i.e. grow with the adapter) and no direct readout.
    settings = replace(load_settings().generator, prototype_dim=256, memory_slots=0, direct_readout=False,
                       permutation_states=False)
    layout = LoraLayout.from_shapes(lora_shapes(BASES[base_name], rank, targets), settings.token_size)
    model = ORALGenerator(generator_config_from_settings(settings, layout, text_dim=TEXT_EMBED_DIM,
                                                         base_dim=BASE_EMBED_DIM, num_adapters=0)).eval()
    positions = (layout.layer_index(), layout.module_index(), layout.slice_index())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    began = time.perf_counter()
    with torch.no_grad():
        model.prototypes(*positions, torch.zeros(1, TEXT_EMBED_DIM), torch.zeros(1, BASE_EMBED_DIM))
    backbone_s = time.perf_counter() - began
    began = time.perf_counter()
    sample_tokens(model, DDPMSchedule(prediction_type=settings.prediction_type), positions,
                  torch.zeros(TEXT_EMBED_DIM), torch.zeros(BASE_EMBED_DIM), None,
                  method="ddim", steps=steps, eta=0.0, generator=torch.Generator().manual_seed(0))
    sample_s = time.perf_counter() - began
    step_s = max(0.0, sample_s - backbone_s) / steps
    return {"base": base_name, "lora": lora_name, "values": layout.num_values, "tokens": layout.num_tokens,
            "generator_params": sum(p.numel() for p in model.parameters()),
            "backbone_s": round(backbone_s, 2), "ddim_step_s": round(step_s, 2),
            "adapter_20_steps_s": round(backbone_s + 20 * step_s, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "rss_before_sampling_gb": round(rss_before, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps actually run per case")
    parser.add_argument("--case", nargs=2, metavar=("BASE", "LORA"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("bench/out/scale.json"))
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(*args.case, args.steps)))
        return
    rows = []
    for base_name in BASES:
        for lora_name in LORAS:
            done = subprocess.run([sys.executable, "-m", "bench.bench_scale", "--steps", str(args.steps),
                                   "--case", base_name, lora_name], capture_output=True, text=True)
            if done.returncode != 0:
                row = {"base": base_name, "lora": lora_name, "error": done.stderr.strip().splitlines()[-1]}
            else:
                row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(row, flush=True)
    write_summary(args.out, {"command": command_line(), "machine": machine(), "rows": rows})
    plot(rows, args.out.with_suffix(".png"))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = sorted((r for r in rows if "error" not in r), key=lambda r: r["tokens"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, label in ((left, "peak_rss_gb", "peak memory (GB)"),
                             (right, "adapter_20_steps_s", "seconds per adapter (20 DDIM steps)")):
        axis.plot([r["tokens"] for r in ok], [r[key] for r in ok], "o-")
        for r in ok:
            axis.annotate(f"{r['base']}\n{r['lora']}", (r["tokens"], r[key]), fontsize=7)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("tokens per adapter (1024 values each)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    fig.suptitle("loragen generator: cost of one generated adapter vs adapter size (2-core CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
