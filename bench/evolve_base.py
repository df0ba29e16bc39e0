"""Evolved versions of the bundled SmolLM2 for issue 4, made as ORAL made theirs: continued pretraining.

    python -m bench.evolve_base --home bench/out/home --steps 100

Starting from the newest registered version of smollm2-135m, every weight of the
model is trained with the causal-LM loss on a real text corpus from a Debian
package, the GNU Collaborative International Dictionary of English
(`apt-get install dict-gcide`, /usr/share/dictd/gcide.dict.dz), and the result is
registered with `base update` as the next version. The dictionary is alphabetical;
each version reads its own slice of it (v2 the first half, v3 the second), so the
versions drift in different directions, the way a base model's releases are
trained on new data. Same seed and same corpus give the same weights.

Writes the evolved model as a Hugging Face folder under bench/out/evolved/vN and
prints the loss curve; bench/out/evolve.json keeps the record.
"""

from __future__ import annotations

import argparse
import gzip
import re
import time
from pathlib import Path

import torch

from bench.common import BASE, command_line, git_revision, machine, open_registry, write_json

GCIDE = Path("/usr/share/dictd/gcide.dict.dz")
# Lines that carry no language: source tags and the database's own header entries.
_NOISE = re.compile(r"^\s*(\[[^\]]*\]\s*)+$|^00-database")


def corpus_slices(path: Path = GCIDE, parts: int = 2) -> list[str]:
    """The dictionary's text, with its source tags dropped and each paragraph on one line, cut in `parts` slices."""
    if not path.is_file():
        raise SystemExit(f"{path} is missing: install it with `apt-get install dict-gcide`")
    paragraphs, current = [], []
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if _NOISE.match(line):
                continue
            if not line.strip():
                if current:
                    paragraphs.append(" ".join(current))
                    current = []
                continue
            current.append(line.strip())
    size = len(paragraphs) // parts
    return ["\n".join(paragraphs[i * size:(i + 1) * size]) for i in range(parts)]


def token_blocks(tokenizer, text: str, length: int) -> torch.Tensor:
    """The text tokenized once and cut into rows of `length` tokens."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    usable = (len(ids) // length) * length
    return ids[:usable].view(-1, length)


def continue_pretraining(model, blocks: torch.Tensor, *, steps: int, batch_size: int, learning_rate: float,
                         seed: int, log=print) -> list[float]:
    """Full-weight causal-LM training on random rows of `blocks`; returns the loss per step."""
    generator = torch.Generator().manual_seed(seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    losses = []
    began = time.perf_counter()
    for step in range(steps):
        rows = torch.randint(len(blocks), (batch_size,), generator=generator)
        batch = blocks[rows]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0 or step == steps - 1:
            log(f"  step {step + 1}/{steps}  loss {loss.item():.3f}  {time.perf_counter() - began:.0f} s")
    model.eval()
    return losses


def save_hf_folder(model, tokenizer, folder: Path) -> None:
    """Write a Hugging Face folder (safetensors) of `model`, also when it was loaded from a GGUF file.

    transformers refuses to serialise a GGUF-loaded model even after dequantisation, so
    the weights move into a plain model built from the same config, minus the GGUF marker.
    """
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("bench/out/home"))
    parser.add_argument("--versions", type=int, default=2, help="evolved versions to make (v2, v3, ...)")
    parser.add_argument("--steps", type=int, default=100, help="training steps per version")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=128, help="tokens per row")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/out/evolve.json"))
    args = parser.parse_args()

    from loragen.workflows import load_base

    torch.set_num_threads(args.threads)
    registry = open_registry(args.home)
    slices = corpus_slices(parts=args.versions)
    records = []
    for index, text in enumerate(slices):
        versions = sorted(row["version"] for row in registry.list_bases() if row["base"] == BASE)
        target = index + 2
        if target in versions:
            print(f"{BASE}@v{target} is already registered; skipped")
            continue
        if versions[-1] != target - 1:
            raise SystemExit(f"{BASE} is at v{versions[-1]}; expected v{target - 1} before making v{target}")
        model, tokenizer, parent = load_base(registry, f"{BASE}@v{target - 1}")
        blocks = token_blocks(tokenizer, text, args.length)
        print(f"v{target}: continued pretraining of {parent.label} on GCIDE slice {index + 1}/{len(slices)} "
              f"({len(blocks)} rows of {args.length} tokens)", flush=True)
        began = time.perf_counter()
        losses = continue_pretraining(model, blocks, steps=args.steps, batch_size=args.batch_size,
                                      learning_rate=args.lr, seed=args.seed + index,
                                      log=lambda line: print(line, flush=True))
        seconds = time.perf_counter() - began
        folder = Path("bench/out/evolved") / f"v{target}"
        save_hf_folder(model, tokenizer, folder)
        note = (f"continued pretraining of {parent.label}: GCIDE slice {index + 1}/{len(slices)}, {args.steps} steps of "
                f"{args.batch_size}x{args.length} tokens, lr {args.lr}, seed {args.seed + index}")
        registered = registry.update_base(BASE, str(folder), note)
        print(f"registered {BASE}@v{target} ({registered.id}); {seconds:.0f} s", flush=True)
        records.append({"version": target, "parent": parent.label, "slice": index + 1, "rows": len(blocks),
                        "first_loss": losses[0], "last_loss": sum(losses[-10:]) / len(losses[-10:]),
                        "seconds": round(seconds, 1), "note": note})
        del model
    write_json(args.out, {"command": command_line(), "machine": machine(), "revision": git_revision(),
                          "settings": vars(args), "versions": records})


if __name__ == "__main__":
    main()
