"""The version ladder of the bundled SmolLM2 (issue 12): evolved versions made by different kinds of evolution.

    python -m bench.evolve_base                # every rung of LADDER in bench/out/ladder/home, resuming the made ones
    python -m bench.evolve_base --upto 4       # v2..v4 only

Each rung starts from the version before it (a chain, as a base's releases are; v8 and v9 branch from an earlier
one, `Rung.parent`), trains every weight with the
causal-LM loss on a real text from a Debian package, and is registered with `base update` (which refuses a
version whose linear shapes differ). The kinds:

  continued pretraining   plain text: the GNU Collaborative International Dictionary of English
                          (dict-gcide; v2 and v3, one half each, as issue 4 made them), WordNet's glosses
                          (wordnet-base), FreeDict dictionaries (dict-freedict-*)
  instruction             a chat-format update: WordNet words asked about and glossed, through the tokenizer's
                          chat template (as ORAL's AlpacaGPT4/GPT4LLM versions are instruction data)

Rungs have a role: `train` versions carry the generator's training adapters; `near` is an unseen version of a
kind the training versions have; `far` is an unseen version trained harder on another language, meant to
break carried-over adapters. A rung already registered with the same recipe is skipped; one registered with
another recipe stops the run. Same seed and same corpus give the same weights.

Writes each version as a Hugging Face folder under bench/out/evolved/vN; bench/out/evolve.json keeps the record
(loss curve ends, seconds, and the distance from the parent: relative weight change, base-embedding distance,
and the mean validation zero-shot over a few tasks before and after).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.harness import BASE, command_line, machine, open_registry, write_summary
from loragen.atomic import torch_load_state, torch_save_atomic
from loragen.errors import LoragenError

GCIDE = Path("/usr/share/dictd/gcide.dict.dz")
DICTD = Path("/usr/share/dictd")
WORDNET = Path("/usr/share/wordnet")
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


def wordnet_glosses(folder: Path = WORDNET) -> list[tuple[str, str]]:
    """(word, gloss) for every synset of WordNet's data files, in file order (words with '_' spelled with spaces)."""
    if not (folder / "data.noun").is_file():
        raise SystemExit(f"{folder}/data.noun is missing: install it with `apt-get install wordnet-base`")
    pairs = []
    for part in ("noun", "verb", "adj", "adv"):
        for line in (folder / f"data.{part}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # the licence header, or a line without a gloss
            fields, gloss = line.split(" | ", 1)
            word = fields.split()[4].replace("_", " ")
            pairs.append((word, gloss.strip()))
    return pairs


_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _dictd_number(text: str) -> int:
    """dictd's index numbers: base64 digits, most significant first."""
    value = 0
    for char in text:
        value = value * 64 + _B64[char]
    return value


def freedict_text(pair: str, folder: Path = DICTD) -> str:
    """A FreeDict dictionary's entries as text, one per line, found through its .index (byte offset and length
    of each entry in the uncompressed .dict); the 00-database* entries (licence, metadata) are dropped."""
    path, index = folder / f"freedict-{pair}.dict.dz", folder / f"freedict-{pair}.index"
    if not path.is_file() or not index.is_file():
        raise SystemExit(f"{path} is missing: install it with `apt-get install dict-freedict-{pair}`")
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    entries, seen = [], set()
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        headword, offset, length = line.split("\t")[:3]
        if headword.startswith("00database") or headword.startswith("00-database") or (offset, length) in seen:
            continue
        seen.add((offset, length))  # several headwords may point at one entry
        start = _dictd_number(offset)
        entry = data[start:start + _dictd_number(length)].decode("utf-8", errors="replace")
        entries.append(" ".join(entry.split()))
    return "\n".join(entries)


# A rung reads at most steps x batch x length tokens (51,200 at the defaults): the first few million characters
# of a corpus are plenty, and tokenizing FreeDict's German (92 MB) whole would take minutes. (GCIDE's halves
# are read whole, as issue 4's versions were, so those versions stay the same.)
MAX_CORPUS_CHARS = 4_000_000


def corpus_text(corpus: str, tokenizer) -> str:
    """The text a rung trains on: "gcide:K/N", "wordnet_glosses", "wordnet_chat" or "freedict:PAIR[+PAIR]"."""
    if corpus.startswith("gcide:"):
        part, parts = (int(x) for x in corpus.split(":", 1)[1].split("/"))
        return corpus_slices(parts=parts)[part - 1]
    return _other_corpus(corpus, tokenizer)[:MAX_CORPUS_CHARS]


def _other_corpus(corpus: str, tokenizer) -> str:
    if corpus == "wordnet_glosses":
        return "\n".join(f"{word}: {gloss}" for word, gloss in wordnet_glosses())
    if corpus == "wordnet_chat":
        return "\n".join(tokenizer.apply_chat_template(
            [{"role": "user", "content": f"What does the word '{word}' mean?"},
             {"role": "assistant", "content": gloss}], tokenize=False) for word, gloss in wordnet_glosses())
    if corpus.startswith("freedict:"):
        return "\n".join(freedict_text(pair) for pair in corpus.split(":", 1)[1].split("+"))
    raise SystemExit(f"unknown corpus {corpus!r}")


@dataclass(frozen=True)
class Rung:
    """One evolved version: how it is made from the version before it, and what it is for."""

    version: int
    kind: str            # "continued pretraining" or "instruction"
    corpus: str          # see corpus_text
    label: str           # the corpus as the note names it
    steps: int
    learning_rate: float
    role: str            # "train", "near" or "far"
    parent: int | None = None  # the version it evolves from; None: the one before it (the chain)

    @property
    def parent_version(self) -> int:
        return self.version - 1 if self.parent is None else self.parent

    def note(self, parent: str, batch_size: int, length: int, seed: int) -> str:
        """The `base update` note: the recipe in words (v2 and v3 keep issue 4's wording, so they are reused)."""
        return (f"{self.kind} of {parent}: {self.label}, {self.steps} steps of {batch_size}x{length} tokens, "
                f"lr {self.learning_rate}, seed {seed}")


# v2 and v3 as issue 4 made them (BENCHMARKS.md: 120 steps, lr 2e-4); the others at the same budget, the
# instruction update at half the learning rate, the far one at five times the learning rate and three times the steps.
LADDER = (
    Rung(2, "continued pretraining", "gcide:1/2", "GCIDE slice 1/2", 120, 2e-4, "train"),
    Rung(3, "continued pretraining", "gcide:2/2", "GCIDE slice 2/2", 120, 2e-4, "train"),
    Rung(4, "continued pretraining", "wordnet_glosses", "WordNet glosses", 120, 2e-4, "train"),
    Rung(5, "instruction", "wordnet_chat", "WordNet words asked and glossed in the chat template", 120, 1e-4, "train"),
    Rung(6, "continued pretraining", "freedict:deu-eng", "FreeDict German-English", 120, 2e-4, "near"),
    Rung(7, "continued pretraining", "freedict:lat-eng+cym-eng", "FreeDict Latin- and Welsh-English", 360, 1e-3, "far"),
    # Issue 21: training versions as far from the others as v7 is, so the generator's base condition has seen
    # changes of that size. Branches, not the chain: evolved from v7 they would carry the far test version itself.
    # v8 repeats v7's recipe from the last training rung on another language; v9 takes it from the root.
    Rung(8, "continued pretraining", "freedict:fra-eng", "FreeDict French-English", 360, 1e-3, "train", parent=5),
    Rung(9, "continued pretraining", "freedict:spa-eng+ita-eng", "FreeDict Spanish- and Italian-English", 360, 1e-3,
         "train", parent=1),
)


def weight_distance(parent: dict, child: dict) -> float:
    """||child - parent|| / ||parent|| over every floating-point weight the two share."""
    change = total = 0.0
    for name, weight in parent.items():
        if name in child and weight.is_floating_point():
            change += (child[name].float() - weight.float()).pow(2).sum().item()
            total += weight.float().pow(2).sum().item()
    return (change / total) ** 0.5


def register_rung(registry, folder: Path, note: str, base: str = BASE, parent: str | None = None):
    """`base update` of `base` to the folder (lineage to `parent`, NAME@vN, when given): a version whose linear
    shapes differ is refused there, with one line, before anything is registered."""
    return registry.update_base(base, str(folder), note, parent=parent)


def token_blocks(tokenizer, text: str, length: int) -> torch.Tensor:
    """The text tokenized once and cut into rows of `length` tokens."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    usable = (len(ids) // length) * length
    return ids[:usable].view(-1, length)


def continue_pretraining(model, blocks: torch.Tensor, *, steps: int, batch_size: int, learning_rate: float,
                         seed: int, state_path: Path | None = None, save_every: int = 30, recipe: str = "",
                         log=print) -> tuple[list[float], float]:
    """Full-weight causal-LM training on random rows of `blocks`; returns the loss per step and the seconds spent.

    With `state_path`, everything the next step depends on (weights, optimizer, schedule, the row sampler, the
    losses so far) is saved there every `save_every` steps, so a run killed in between (a rung takes up to an hour
    here) resumes from the last save and ends with the same weights. `recipe` names the run: a saved state of
    another recipe is refused rather than continued.
    """
    generator = torch.Generator().manual_seed(seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    losses, seconds_before = [], 0.0
    if state_path is not None and state_path.is_file():
        try:
            state = torch_load_state(state_path, ("recipe", "model", "optimizer", "schedule", "sampler", "losses",
                                                  "seconds"))
        except LoragenError as err:  # damaged or cut short: one line, as the benchmark's other refusals
            raise SystemExit(str(err)) from None
        if state["recipe"] != recipe:
            raise SystemExit(f"{state_path} holds a run of another recipe ({state['recipe']!r}): delete it to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["sampler"])
        losses, seconds_before = state["losses"], state["seconds"]
        log(f"  resumed from {state_path} at step {len(losses)}/{steps}")
    began = time.perf_counter()
    for step in range(len(losses), steps):
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
        # The last step is saved too: a rung trained ahead (--prepare) is registered later from that state.
        if state_path is not None and ((step + 1) % save_every == 0 or step + 1 == steps):
            state_path.parent.mkdir(parents=True, exist_ok=True)
            torch_save_atomic({"recipe": recipe, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "schedule": schedule.state_dict(), "sampler": generator.get_state(), "losses": losses,
                               "seconds": seconds_before + time.perf_counter() - began}, state_path)
    model.eval()
    return losses, seconds_before + time.perf_counter() - began


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


def mean_zero_shot(model, tokenizer, tasks: list[str], limit: int) -> float | None:
    """The mean validation score of the model alone over `tasks` (none: None)."""
    from loragen.tasks.suite import get_task
    from loragen.workflows import score_on_base

    if not tasks:
        return None
    [scores] = score_on_base(model, tokenizer, [get_task(t) for t in tasks], [None], split="validation", limit=limit)
    return round(sum(s.value for s in scores) / len(scores), 4)


def prepare_rung(registry, rung: Rung, *, batch_size: int, length: int, seed: int, out: Path, base: str = BASE,
                 log=print) -> None:
    """Train a rung whose parent is registered ahead of its turn, into its training state under `out`, without
    registering it: `make_rung` later resumes from that state at its last step, so a branch (v9 from v1) trains on
    a second core while the chain makes the versions numbered before it. Same weights either way."""
    from loragen.workflows import load_base

    model, tokenizer, parent = load_base(registry, f"{base}@v{rung.parent_version}")
    _train_rung(registry, model, tokenizer, parent, rung, batch_size=batch_size, length=length, seed=seed, out=out,
                base=base, log=log)


def _train_rung(registry, model, tokenizer, parent, rung: Rung, *, batch_size: int, length: int, seed: int,
                out: Path, base: str, log) -> tuple[int, list[float], float]:
    """Continued training of the parent `model` on the rung's corpus, resumable under `out`: (rows, losses,
    seconds)."""
    from loragen.workflows import load_base

    if rung.corpus == "wordnet_chat" and not tokenizer.chat_template:
        # Registered before loragen kept chat_template.jinja, v2-v4 of the first ladder lost the template; it is
        # SmolLM2-Instruct's, which continued pretraining does not change: take it from the ladder's root.
        tokenizer.chat_template = load_base(registry, f"{base}@v1")[1].chat_template
    blocks = token_blocks(tokenizer, corpus_text(rung.corpus, tokenizer), length)
    log(f"v{rung.version} ({rung.role}): {rung.kind} of {parent.label} on {rung.label} ({len(blocks)} rows of "
        f"{length} tokens)")
    note = rung.note(parent.label, batch_size, length, seed)
    state_path = out / f"v{rung.version}.training-state.pt"
    losses, seconds = continue_pretraining(model, blocks, steps=rung.steps, batch_size=batch_size,
                                           learning_rate=rung.learning_rate, seed=seed, state_path=state_path,
                                           recipe=note, log=log)
    return len(blocks), losses, seconds


def make_rung(registry, rung: Rung, *, batch_size: int, length: int, seed: int, out: Path, base: str = BASE,
              zero_shot_tasks: list[str] = (), zero_shot_limit: int = 50, log=print) -> dict:
    """Train (or finish a prepared training state) and register one rung of `base` from its parent; returns its
    record, with the mean validation zero-shot over `zero_shot_tasks` before and after (how far the version moved
    for users)."""
    from loragen.workflows import load_base

    versions = sorted(row["version"] for row in registry.list_bases() if row["base"] == base)
    if versions[-1] != rung.version - 1:
        raise SystemExit(f"{base} is at v{versions[-1]}; expected v{rung.version - 1} before making v{rung.version}")
    model, tokenizer, parent = load_base(registry, f"{base}@v{rung.parent_version}")
    parent_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    zero_shot_before = mean_zero_shot(model, tokenizer, list(zero_shot_tasks), zero_shot_limit)
    rows, losses, seconds = _train_rung(registry, model, tokenizer, parent, rung, batch_size=batch_size,
                                        length=length, seed=seed, out=out, base=base, log=log)
    note = rung.note(parent.label, batch_size, length, seed)
    state_path = out / f"v{rung.version}.training-state.pt"
    folder = out / f"v{rung.version}"
    save_hf_folder(model, tokenizer, folder)
    registered = register_rung(registry, folder, note, base, parent=parent.label)
    state_path.unlink(missing_ok=True)
    record = {"version": rung.version, "role": rung.role, "kind": rung.kind, "corpus": rung.label,
              "parent": parent.label, "rows": rows, "steps": rung.steps, "learning_rate": rung.learning_rate,
              "first_loss": losses[0], "last_loss": sum(losses[-10:]) / len(losses[-10:]),
              "seconds": round(seconds, 1), "id": registered.id,
              **distances(registry, base, rung.version, parent_weights, zero_shot_before, model, tokenizer,
                          zero_shot_tasks, zero_shot_limit, parent_version=rung.parent_version)}
    log(f"registered {registered.id}; {seconds:.0f} s, weights moved {record['weight_change_vs_parent']:.4%} of "
        "their norm")
    return record


def distances(registry, base: str, version: int, parent_weights: dict, zero_shot_parent: float | None, model,
              tokenizer, zero_shot_tasks, zero_shot_limit: int, parent_version: int | None = None) -> dict:
    """How far version `version` (loaded as `model`) moved from its parent (the version before it, unless
    `parent_version` says otherwise): relative weight change, base-embedding distance, and the mean validation
    zero-shot before and after."""
    from loragen.workflows import base_condition

    child, parent = f"{base}@v{version}", f"{base}@v{version - 1 if parent_version is None else parent_version}"
    return {"zero_shot_tasks": list(zero_shot_tasks), "zero_shot_parent": zero_shot_parent,
            "zero_shot": mean_zero_shot(model, tokenizer, list(zero_shot_tasks), zero_shot_limit),
            "weight_change_vs_parent": round(weight_distance(parent_weights, model.state_dict()), 6),
            "base_embedding_distance_vs_parent": round(
                (base_condition(registry, child) - base_condition(registry, parent)).norm().item(), 4)}


def describe_registered(registry, rung: Rung, *, base: str = BASE, zero_shot_tasks=(), zero_shot_limit: int = 50) -> dict:
    """The record of a rung registered without one (made by issue 4's script, or killed before its record was
    written): its distances from the parent, measured on the registered weights (no training)."""
    from loragen.workflows import load_base

    parent_model, tokenizer, _ = load_base(registry, f"{base}@v{rung.parent_version}")
    parent_weights = {k: v.detach().clone() for k, v in parent_model.state_dict().items()}
    zero_shot_parent = mean_zero_shot(parent_model, tokenizer, list(zero_shot_tasks), zero_shot_limit)
    del parent_model
    model, tokenizer, _ = load_base(registry, f"{base}@v{rung.version}")
    return {"version": rung.version, "role": rung.role, "kind": rung.kind, "corpus": rung.label,
            "parent": f"{base}@v{rung.parent_version}", "steps": rung.steps, "learning_rate": rung.learning_rate,
            "measured_after_registration": True,
            **distances(registry, base, rung.version, parent_weights, zero_shot_parent, model, tokenizer,
                        zero_shot_tasks, zero_shot_limit, parent_version=rung.parent_version)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("bench/out/ladder/home"), help="the ladder's own registry")
    parser.add_argument("--upto", type=int, default=LADDER[-1].version, help="make the rungs up to this version")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=128, help="tokens per row")
    parser.add_argument("--seed", type=int, default=0, help="rung vN trains with seed + N - 2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--zero-shot-tasks", default="antonyms,country_region,element_symbol,hypernym_choice,"
                        "noun_singular,verb_base_form", help="validation zero-shot before and after each rung")
    parser.add_argument("--zero-shot-limit", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench/out/evolve.json"))
    parser.add_argument("--prepare", type=int, default=None, metavar="VERSION",
                        help="only train this rung (its parent must be registered) into its training state, for a "
                             "second process to run beside the chain; the main run registers it in its turn")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    registry = open_registry(args.home)
    records = {r["version"]: r for r in json.loads(args.out.read_text()).get("versions", [])} if args.out.is_file() else {}
    notes = {row["version"]: row.get("note", "") for row in registry.list_bases() if row["base"] == BASE}
    zero_shot_tasks = [t for t in args.zero_shot_tasks.split(",") if t]
    if args.prepare is not None:
        [rung] = [r for r in LADDER if r.version == args.prepare] or [None]
        if rung is None or rung.parent_version not in notes:
            raise SystemExit(f"--prepare {args.prepare}: no such rung, or its parent is not registered yet")
        if rung.version in notes:
            raise SystemExit(f"{BASE}@v{rung.version} is registered already")
        prepare_rung(registry, rung, batch_size=args.batch_size, length=args.length, seed=args.seed + rung.version - 2,
                     out=Path("bench/out/evolved"), log=lambda line: print(line, flush=True))
        return
    for rung in (r for r in LADDER if r.version <= args.upto):
        seed = args.seed + rung.version - 2
        if rung.version in notes:
            expected = rung.note(f"{BASE}@v{rung.parent_version}", args.batch_size, args.length, seed)
            if notes[rung.version] != expected:
                raise SystemExit(f"{BASE}@v{rung.version} is registered with another recipe ({notes[rung.version]!r}); "
                                 f"this ladder makes it as {expected!r}: use another --home")
            if "weight_change_vs_parent" in records.get(rung.version, {}):
                print(f"{BASE}@v{rung.version} is already registered; skipped", flush=True)
                continue
            print(f"{BASE}@v{rung.version} is registered without a record: measuring it", flush=True)
            records[rung.version] = describe_registered(registry, rung, zero_shot_tasks=zero_shot_tasks,
                                                        zero_shot_limit=args.zero_shot_limit)
        else:
            records[rung.version] = make_rung(registry, rung, batch_size=args.batch_size, length=args.length,
                                              seed=seed, out=Path("bench/out/evolved"), zero_shot_tasks=zero_shot_tasks,
                                              zero_shot_limit=args.zero_shot_limit,
                                              log=lambda line: print(line, flush=True))
        write_summary(args.out, {"command": command_line(), "machine": machine(),
                              "settings": {k: str(v) for k, v in vars(args).items()},
                              "versions": [records[v] for v in sorted(records)]})


if __name__ == "__main__":
    main()
