"""Forward+backward time of a MambaStack with each pure-PyTorch selective scan (and, on CUDA with the optional
mamba-ssm extra, its fused kernel).

    python -m bench.bench_scan                    # d_model 256, 4 layers, batch 8, L 64 and 512
    python -m bench.bench_scan --threads 1 --json
    python -m bench.bench_scan --device cuda      # adds mamba-ssm's kernel as "cuda_kernel" when it loads

The shape is DESIGN.md's measurement (where transformers' slow Mamba path took 12.6 s per
step on 2 cores). Each scan runs the same seeded stack; times are the best of --repeats
after one warm-up, and the speed-up is against the reference loop at the same length.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import torch

from bench.harness import command_line, machine
from loragen.generator.modules.mamba import MambaConfig, MambaStack
from loragen.generator.ops.selective_scan import (
    DEFAULT_CHUNK_SIZE,
    _cuda_selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
    selective_scan_sequential,
)


def scans(chunk_sizes: list[int], device: str = "cpu") -> dict:
    table = {"ref": selective_scan_ref, "sequential": selective_scan_sequential}
    for size in chunk_sizes:
        table[f"chunked-{size}"] = functools.partial(selective_scan_chunked, chunk_size=size)
    kernel = _cuda_selective_scan() if device == "cuda" else None
    if kernel is not None:
        table["cuda_kernel"] = kernel
    return table


def chunked_bytes(name: str, config: MambaConfig, batch: int, length: int) -> int:
    """What the chunked scan keeps for backward, over all layers: one (chunk x chunk) decay matrix a state lane."""
    if not name.startswith("chunked-"):
        return 0
    chunk = min(int(name.split("-")[1]), length)
    return 4 * batch * config.d_inner * config.d_state * length * chunk * config.n_layers


def time_forward_backward(stack: MambaStack, x: torch.Tensor, repeats: int) -> list[float]:
    def step() -> None:
        stack.zero_grad(set_to_none=True)
        stack(x).square().mean().backward()
        if x.is_cuda:
            torch.cuda.synchronize()  # CUDA runs asynchronously: time the work, not its launch

    step()  # warm-up: allocator, first-call overheads
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lengths", default="64,512", help="comma-separated sequence lengths")
    parser.add_argument("--chunk-sizes", default=f"4,{DEFAULT_CHUNK_SIZE},64", help="chunked scans to time")
    parser.add_argument("--scans", default="", help="comma-separated subset of ref,sequential,chunked-N,cuda_kernel")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    parser.add_argument("--max-gb", type=float, default=4.0, help="skip a chunked scan that would keep more")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    config = MambaConfig(d_model=args.d_model, n_layers=args.layers, d_state=args.d_state)
    table = scans([int(c) for c in args.chunk_sizes.split(",") if c], args.device)
    if unknown := [name for name in args.scans.split(",") if name and name not in table]:
        parser.error(f"--scans: {', '.join(unknown)} not among {', '.join(table)}")
    if args.scans:
        table = {name: table[name] for name in args.scans.split(",")}

    rows = []
    for length in [int(n) for n in args.lengths.split(",")]:
        x = torch.randn(args.batch, length, args.d_model, generator=torch.Generator().manual_seed(0)).to(args.device)
        for name, scan in table.items():
            row = {"length": length, "scan": name}
            needed = chunked_bytes(name, config, args.batch, length)
            if needed > args.max_gb * 2**30:
                row["skipped"] = f"needs ~{needed / 2**30:.0f} GB for backward (--max-gb {args.max_gb:g})"
            else:
                torch.manual_seed(0)
                stack = MambaStack(config, scan_fn=scan).to(args.device)
                times = time_forward_backward(stack, x, args.repeats)
                row.update(best_s=min(times), times_s=times)
            rows.append(row)
            if not args.json:
                print(_format(row, rows), flush=True)

    if args.json:
        payload = {"command": command_line(), "machine": machine(), "device": _device_name(args.device),
                   "config": vars(config),
                   "batch": args.batch, "repeats": args.repeats, "rows": rows}
        print(json.dumps(payload, indent=2))


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def _format(row: dict, rows: list[dict]) -> str:
    """One table line; the header comes with the first."""
    header = f"{'L':>5}  {'scan':<12} {'fwd+bwd s':>10}  {'vs ref':>7}\n" if len(rows) == 1 else ""
    if "skipped" in row:
        return f"{header}{row['length']:>5}  {row['scan']:<12} {'-':>10}  {'':>7}  {row['skipped']}"
    ref = next((r for r in rows if r["length"] == row["length"] and r["scan"] == "ref" and "best_s" in r), None)
    ratio = f"{ref['best_s'] / row['best_s']:.1f}x" if ref else "-"
    return f"{header}{row['length']:>5}  {row['scan']:<12} {row['best_s']:>10.3f}  {ratio:>7}"


if __name__ == "__main__":
    main()
