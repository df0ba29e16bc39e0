"""Why the denoiser predicts x0: eps- vs x0-prediction on a generator that must reproduce two adapters.

    python -m bench.bench_prediction_type --steps 600

Two LoRA adapters on a tiny Llama (built from a config), one condition each; a tiny
generator is trained with each prediction type (same seed, same everything else), then
samples each adapter with DDIM. Prints cosine to the adapter its condition names, to
the other one, and the sample's spread relative to the adapter's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.harness import command_line, machine, write_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("bench/out/prediction_type.json"))
    args = parser.parse_args()

    from loragen.adapters import load_weights
    from loragen.config import GeneratorSettings
    from loragen.generator.training import TrainingAdapter, TrainingSet
    from loragen.workflows import LoadedGenerator, sample_state_dict, train_on
    from tests.tiny import make_lora, make_tiny_llama

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-prediction-"))
    base = make_tiny_llama(work / "base")
    adapters = [TrainingAdapter(uid=f"{i:064x}", task=f"t{i}", base="tiny@v1", state_dict=load_weights(
        make_lora(base, work / f"a{i}", seed=10 + i, r=2) / "adapter_model.safetensors")) for i in range(2)]
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(2, 384), dim=1)
    data = TrainingSet(adapters=adapters, task_descriptions={"t0": ["a"], "t1": ["b"]},
                       text_embeddings={"t0": text[:1], "t1": text[1:]}, base_embeddings={"tiny@v1": torch.randn(160)},
                       lora={"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}, text_model="none")
    rows = []
    for prediction in ("epsilon", "sample"):
        for anchor in (False, True):
            settings = GeneratorSettings(token_size=32, d_model=32, n_layers=1, d_state=4, prototype_dim=16,
                                         denoiser_channels=[8, 16, 8], batch_size=2, tokens_per_step=64,
                                         learning_rate=3e-3, steps=args.steps, prediction_type=prediction, anchor=anchor)
            began = time.perf_counter()
            checkpoint = train_on(data, settings, work / f"run-{prediction}-{anchor}")
            generator = LoadedGenerator("bench", checkpoint, checkpoint.build_model())
            for index, adapter in enumerate(adapters):
                sample = sample_state_dict(generator, text[index], data.base_embeddings["tiny@v1"], seed=0,
                                           method="ddim", steps=25, eta=0.0)
                keys = list(adapter.state_dict)
                made = torch.cat([sample[k].flatten() for k in keys])
                own = torch.cat([adapter.state_dict[k].flatten() for k in keys])
                other = torch.cat([adapters[1 - index].state_dict[k].flatten() for k in keys])
                rows.append({"prediction": prediction, "anchor": anchor, "adapter": index,
                             "cos_own": round(torch.nn.functional.cosine_similarity(made, own, dim=0).item(), 4),
                             "cos_other": round(torch.nn.functional.cosine_similarity(made, other, dim=0).item(), 4),
                             "std_ratio": round((made.std() / own.std()).item(), 3),
                             "final_loss": round(checkpoint.training["final_loss"], 4),
                             "train_s": round(time.perf_counter() - began, 1)})
                print(rows[-1], flush=True)
    write_summary(args.out, {"command": command_line(), "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
