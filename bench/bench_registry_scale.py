"""The registry at scale: the read commands' wall time, start-up included, with 10k and 100k adapters.

    python -m bench.bench_registry_scale                                    # this tree, 10k and 100k rows
    python -m bench.bench_registry_scale --baseline /work/wt/scale-baseline # also an older tree, same run
    python -m bench.bench_registry_scale --sizes 10000 --runs 7

Filling: a tiny base (two versions) and a handful of really ingested tiny LoRAs give real blobs;
then the adapter rows (and one eval result per 10 adapters) are bulk-inserted through the
library's models, every row pointing at those few blobs. That is not N `loragen ingest` calls:
it builds the database a big registry would have, quickly. A filled registry is kept under
--out (per tree and size) and reused by the next run, so the benchmark resumes by stage.

Timing: each command runs as a user would run it, a fresh `python -m loragen` process (the
interpreter itself, not a pyenv shim), wall clock, median of --runs after one warm-up run.
The trees' .pyc files are written as an installed package's are (PYTHONDONTWRITEBYTECODE is
unset for the subprocesses). A command slower than --slow seconds is timed once after its
warm-up (the runs are recorded). Besides wall time each command's CPU time (user + system)
is recorded: on a shared machine it is what the wall time would be on an idle core. `ingest`
registers a new tiny adapter (then an untimed `rm` takes it out again), `gc` finds that adapter's
blobs unreferenced on its first run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL_ADAPTERS = 6      # really ingested; every bulk row shares their blobs
TASKS = 200            # `list --task X` sees about N / TASKS rows
EVALS_EVERY = 10       # one eval result per this many adapters
FILLED_MARKER = "filled.json"


# ---------------------------------------------------------------- filling (runs inside the tree under test)

def fill(home: Path, size: int, url: str) -> dict:
    """A registry at `home` (or `url`) with `size` adapter rows; runs with the tree under test on sys.path."""
    import hashlib
    from datetime import datetime, timedelta, timezone

    import torch
    from sqlalchemy import insert, select

    from loragen.config import RegistryConfig
    from loragen.registry import models
    from loragen.registry.models import Adapter, BaseVersion, EvalResult, Origin, TaskDescription
    from loragen.registry.store import Registry
    from tests.tiny import make_lora, make_tiny_llama

    task_row = getattr(models, "TaskRow", None) or models.Task  # the tree before the rename calls it Task
    torch.set_num_threads(1)
    began = time.perf_counter()
    work = home.parent / "work"
    registry = Registry(RegistryConfig(home=str(home), url=url))
    v1 = make_tiny_llama(work / "tiny-v1", seed=0)
    v2 = make_tiny_llama(work / "tiny-v2", seed=1)
    registry.add_base("tiny", str(v1))
    registry.update_base("tiny", str(v2), "evolved")
    for i in range(REAL_ADAPTERS):
        registry.ingest(make_lora(v1, work / f"real-{i}", seed=i), "tiny@v1", f"real-{i}", [f"real task {i}"])
    with registry.session() as s:
        real = s.execute(select(Adapter.weights_sha256, Adapter.config_sha256, Adapter.rank, Adapter.alpha,
                                Adapter.target_modules, Adapter.num_parameters)).all()
        versions = list(s.scalars(select(BaseVersion.id).order_by(BaseVersion.id)))
        task_ids = []
        for t in range(TASKS):
            task = task_row(name=f"task-{t:04d}")
            s.add(task)
            s.flush()
            s.add(TaskDescription(task_id=task.id, text=f"Do the thing number {t} with the input."))
            task_ids.append(task.id)
    origins = [Origin.trained, Origin.ingested, Origin.generated]
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    bulk = size - REAL_ADAPTERS
    chunk = 5000
    with registry.engine.begin() as connection:
        for first in range(0, bulk, chunk):
            rows = []
            for i in range(first, min(bulk, first + chunk)):
                weights, config, rank, alpha, targets, parameters = real[i % len(real)]
                origin = origins[i % 3]
                provenance = ({"generator": "0" * 12, "condition": f"task-{i % TASKS:04d}", "seed": i}
                              if origin is Origin.generated else
                              {"run": f"runs/task-{i % TASKS:04d}", "step": 100 + i % 5 * 20} if origin is Origin.trained
                              else {"source": f"/data/adapters/{i}"})
                rows.append({"uid": hashlib.sha256(f"bench-row-{i}".encode()).hexdigest(), "task_id": task_ids[i % TASKS],
                             "base_version_id": versions[i % len(versions)], "origin": origin, "rank": rank,
                             "alpha": alpha, "target_modules": targets, "num_parameters": parameters,
                             "weights_sha256": weights, "config_sha256": config, "provenance": provenance,
                             "replaces_id": None, "created_at": start + timedelta(seconds=i)})
            connection.execute(insert(Adapter.__table__), rows)
        ids = list(connection.scalars(select(Adapter.id).order_by(Adapter.id)))
        evals = [{"adapter_id": ids[i], "base_version_id": versions[0], "task_name": "task", "metric": "acc",
                  "value": 0.5, "num_examples": 100, "split": "test", "details": {}, "created_at": start}
                 for i in range(0, len(ids), EVALS_EVERY)]
        connection.execute(insert(EvalResult.__table__), evals)
    registry.engine.dispose()
    return {"adapters": size, "bulk_rows": bulk, "real_adapters": REAL_ADAPTERS, "tasks": TASKS + REAL_ADAPTERS,
            "eval_results": len(evals), "fill_s": round(time.perf_counter() - began, 1)}


def filled_registry(out: Path, label: str, code: Path, size: int, url: str) -> tuple[Path, dict]:
    """The stage's registry home, filled by a subprocess running `code`'s loragen (reused when present)."""
    stage = out / f"{label}-{size}"
    marker = stage / FILLED_MARKER
    if marker.is_file():
        return stage / "home", json.loads(marker.read_text())
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    stage_url = _stage_database(url, label, size) if url else ""
    print(f"   filling {stage} with {size} adapter rows (bulk insert over {REAL_ADAPTERS} real adapters' blobs) …",
          flush=True)
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--fill-only", str(stage / "home"), str(size),
                           stage_url], env=_env(code, stage / "home", stage_url), cwd=stage, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"filling {stage} failed:\n{done.stderr[-3000:]}")
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    facts["url"] = stage_url or "sqlite"
    marker.write_text(json.dumps(facts) + "\n")
    return stage / "home", facts


def _stage_database(url: str, label: str, size: int) -> str:
    """A fresh PostgreSQL database per stage on the server `url` names."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"loragen_scale_{label}_{size}".replace("-", "_")
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


# ---------------------------------------------------------------- timing

def _env(code: Path, home: Path, url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "LORAGEN_DATABASE_URL")}
    env.update(PYTHONPATH=str(code), LORAGEN_HOME=str(home), OMP_NUM_THREADS="1")
    if url:
        env["LORAGEN_DATABASE_URL"] = url
    return env


def _timed(argv: list[str], env: dict, cwd: Path, head: int = 0) -> tuple[float, float]:
    """(wall, CPU) seconds of one command; with `head`, of `command | head -<head>` (until both ends
    have exited: the command must notice the closed pipe and stop). CPU is the command's user+system
    time: what its wall time would be on an idle core, whatever else the machine is running."""
    cpu_before = _children_cpu()
    began = time.perf_counter()
    if head:
        producer = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for _ in range(head):
            producer.stdout.readline()
        producer.stdout.close()  # what `head` does after its lines
        producer.wait()
    else:
        done = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv[2:])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - began, _children_cpu() - cpu_before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_commands(code: Path, home: Path, facts: dict, runs: int, work: Path, slow: float) -> dict:
    env = _env(code, home, facts["url"] if facts["url"] != "sqlite" else "")
    loragen = [sys.executable, "-m", "loragen"]
    cwd = home.parent  # no loragen.toml here, and not a source tree that would shadow `code`
    middle = subprocess.run(loragen + ["list", "-q", "--task", "task-0007"], env=env, cwd=cwd, capture_output=True,
                            text=True, check=True).stdout.split()
    show_id = middle[len(middle) // 2]
    adapters = _ingestable_adapters(work, runs + 1)
    # `list --json | head -2`: the first adapter, not only the opening bracket.
    commands = {
        "list": (["list"], 0),
        "list -q": (["list", "-q"], 0),
        "list --json | head -2": (["list", "--json"], 2),
        "list --json (all)": (["list", "--json"], 0),
        "list --task X": (["list", "--task", "task-0007"], 0),
        "show ID": (["show", show_id], 0),
        "--help": (["--help"], 0),
    }
    results = {}
    for name, (args, head) in commands.items():
        warm_up, _ = _timed(loragen + args, env, cwd, head)  # page cache, .pyc files
        # A command slower than --slow seconds (the old code's table of 100k rows) is timed once more, not --runs times.
        repeats = runs if warm_up < slow else 1
        results[name] = _summary([_timed(loragen + args, env, cwd, head) for _ in range(repeats)])
        _say(name, results[name])
    times = []
    for i, folder in enumerate(adapters):
        timing = _timed(loragen + ["ingest", str(folder), "--base", "tiny@v1", "--task", "bench-ingest"], env, cwd)
        created = json.loads(subprocess.run(loragen + ["list", "--task", "bench-ingest", "--json"], env=env, cwd=cwd,
                                            capture_output=True, text=True, check=True).stdout)
        for row in created:
            subprocess.run(loragen + ["rm", row["id"]], env=env, cwd=cwd, capture_output=True, check=True)
        if i:  # the first is the warm-up
            times.append(timing)
    results["ingest"] = _summary(times)
    _say("ingest", results["ingest"])
    times = [_timed(loragen + ["gc"], env, cwd) for _ in range(runs)]  # the first frees the ingested blobs
    results["gc"] = _summary(times)
    _say("gc", results["gc"])
    return results


def _say(name: str, result: dict) -> None:
    print(f"   {name:24s} {result['median_s']:7.3f} s wall  {result['cpu_median_s']:7.3f} s CPU", flush=True)


def _summary(timings: list[tuple[float, float]]) -> dict:
    wall = [w for w, _ in timings]
    return {"median_s": round(statistics.median(wall), 3), "min_s": round(min(wall), 3),
            "max_s": round(max(wall), 3), "cpu_median_s": round(statistics.median(c for _, c in timings), 3),
            "runs": len(timings)}


def _ingestable_adapters(work: Path, count: int) -> list[Path]:
    """Tiny LoRAs on the stage's tiny@v1, new to the registry (seeds no real adapter used)."""
    import torch

    from tests.tiny import make_lora  # this tree's helper; the adapter files are the same for both trees

    torch.set_num_threads(1)
    base = work / "tiny-v1"
    folders = []
    for i in range(count):
        folder = work / f"ingest-{i}"
        if not (folder / "adapter_model.safetensors").is_file():
            make_lora(base, folder, seed=1000 + i)
        folders.append(folder)
    return folders


# ---------------------------------------------------------------- report

def machine_facts() -> dict:
    return {"uname": " ".join(platform.uname()), "cpus": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' progress bars while making the tiny models
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if len(sys.argv) > 1 and sys.argv[1] == "--fill-only":
        home, size, url = Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else ""
        print(json.dumps(fill(home, size, url)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated adapter counts")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command (median reported)")
    parser.add_argument("--baseline", type=Path, help="another source tree (e.g. a worktree at an older commit)")
    parser.add_argument("--slow", type=float, default=30.0, help="time a command slower than this only once")
    parser.add_argument("--url", default="", help="a PostgreSQL server URL: each stage gets its own database there")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "registry-scale")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "registry_scale.json")
    args = parser.parse_args()

    trees = {"after": ROOT}
    if args.baseline:
        trees = {"before": args.baseline.resolve(), **trees}
    sizes = [int(s) for s in args.sizes.split(",") if s]
    from bench.harness import command_line, write_summary  # not at the top: the fill subprocess runs without it

    report = {"command": command_line(), "machine": machine_facts(), "trees": {k: str(v) for k, v in trees.items()},
              "fill": "bulk insert of adapter rows over a few really ingested adapters' blobs (not N ingest calls)",
              "timing": f"wall clock of `{Path(sys.executable).name} -m loragen …` subprocesses, start-up included; "
                        "median of the runs after one warm-up", "stages": []}
    for size in sizes:
        for label, code in trees.items():
            print(f"{label} ({code}), {size} adapters:", flush=True)
            home, facts = filled_registry(args.out, label, code, size, args.url)
            load_before = load_average()
            runs = args.runs
            results = time_commands(code, home, facts, runs, home.parent / "work", args.slow)
            report["stages"].append({"tree": label, "size": size, "fill": facts, "load_before": load_before,
                                     "load_after": load_average(), "results": results})
            write_summary(args.results, report)
    _print_table(report)


def _print_table(report: dict) -> None:
    """Median wall (CPU) seconds per command and stage; with a baseline, before/after at each size."""
    stages = report["stages"]
    names = list(stages[0]["results"])
    sizes = sorted({s["size"] for s in stages})
    by_key = {(s["tree"], s["size"]): s["results"] for s in stages}
    columns = [(tree, size) for size in sizes for tree in ("before", "after") if (tree, size) in by_key]
    print(f"\n{'command':24s}" + "".join(f"{tree + ' ' + f'{size:,}':>22s}" for tree, size in columns)
          + "".join(f"{'x ' + f'{size:,}':>10s}" for size in sizes if ("before", size) in by_key))
    for name in names:
        cells = "".join(f"{by_key[c][name]['median_s']:>10.3f} ({by_key[c][name]['cpu_median_s']:.3f})" for c in columns)
        ratios = "".join(f"{by_key[('before', size)][name]['median_s'] / by_key[('after', size)][name]['median_s']:>10.1f}"
                         for size in sizes if ("before", size) in by_key)
        print(f"{name:24s}{cells}{ratios}")
    print("seconds: median wall (median CPU) of the runs; x: before / after wall")
    print("load average (1, 5, 15 min) before each stage: " + "; ".join(
        f"{s['tree']} {s['size']:,}: {s['load_before']}" for s in stages))


if __name__ == "__main__":
    main()
