#!/usr/bin/env python3
"""Draw the seen/held-out split of the bundled tasks once, before any training: loragen/tasks/split.json.

    python scripts/make_split.py [--out loragen/tasks/split.json]

Deterministic: one `random.Random(SEED)` makes every draw, over task and family
names sorted first, so running it again on the same suite writes the same file.
The file is committed; rerunning it after the suite changes is a new split and
invalidates every result measured on the old one.

What it draws:

* whole held-out families: HELD_OUT_FAMILY_COUNT families of 3 to 8 tasks,
  redrawn until every kind of sibling axis (a language, an inflection, a table)
  still has a seen family of at least 4 tasks to hold a sibling out of;
* held-out siblings: about SIBLING_FRACTION of every seen family of at least 4
  tasks (at least one each); a held-out sibling takes its same-family inverse
  with it (to_roman with from_roman), so no held-out task is a seen task run
  backwards;
* one held-out description per seen task (meta.json keeps it; the generator
  never sees it);
* a fixed sample of SEEN_EVAL_SAMPLE seen tasks, for evaluation beside every
  held-out task.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loragen.tasks.split import SPLIT_PATH, load_split  # noqa: E402  (after the sys.path line above)
from loragen.tasks.suite import list_tasks  # noqa: E402

SEED = 11  # the issue that asked for the split
HELD_OUT_FAMILY_COUNT = 2
SIBLING_FRACTION = 0.1
SEEN_EVAL_SAMPLE = 30

# The axis along which a family's tasks differ; a held-out sibling of each axis must exist.
AXIS = {
    "translate_from_english": "language",
    "translate_to_english": "language",
    "number_words": "language",
    "number_from_words": "language",
    "ordinal_words": "language",
    "cldr_country_names": "language",
    "cldr_language_names": "language",
    "english_inflection": "inflection",
    "english_lemma": "inflection",
    "country_facts": "table",
    "iso_codes": "table",
    "periodic_table": "table",
    "wordnet_choice": "relation",
    "word_relations": "relation",
    "pronunciation": "property",
    "numerals": "notation",
}
REQUIRED_SIBLING_AXES = ("language", "inflection", "table")

# Tasks of one family that are the same data run backwards: held out together or not at all.
INVERSES = [
    ("adverb_to_adjective", "adjective_to_adverb"),
    ("adjective_to_noun", "noun_to_adjective"),
    ("to_roman", "from_roman"),
    ("element_symbol", "symbol_element"),
    ("element_number", "number_element"),
]

RATIONALE = (
    "Two whole families are never seen (zero-shot transfer to a new kind of task); inside the seen families about "
    f"{SIBLING_FRACTION:.0%} of the tasks (at least one per family of 4 or more) are held out, so every axis the corpus "
    "varies on (a language, an inflection, a table) has an unseen sibling whose family the generator knows; "
    "inverse pairs are held out together; each seen task keeps one description back to test unseen wording."
)


def draw(seed: int = SEED) -> dict:
    rng = random.Random(seed)
    tasks = list_tasks()
    families: dict[str, list[str]] = collections.defaultdict(list)
    for t in tasks:
        families[t.family].append(t.name)
    missing = sorted(set(families) - set(AXIS))
    if missing:
        sys.exit(f"family {missing[0]!r} has no axis in AXIS: say what its tasks differ in")
    partner = {a: b for a, b in INVERSES} | {b: a for a, b in INVERSES}

    candidates = sorted(f for f, names in families.items() if 3 <= len(names) <= 8)
    while True:
        held_families = sorted(rng.sample(candidates, HELD_OUT_FAMILY_COUNT))
        seen_axes = {AXIS[f] for f, names in families.items() if f not in held_families and len(names) >= 4}
        if all(axis in seen_axes for axis in REQUIRED_SIBLING_AXES):
            break

    held_out = {name for f in held_families for name in families[f]}
    for family in sorted(families):
        names = sorted(families[family])
        if family in held_families or len(names) < 4:
            continue
        wanted = max(1, round(SIBLING_FRACTION * len(names)))
        chosen: set[str] = set()
        for name in rng.sample(names, len(names)):
            if len(chosen) >= wanted:
                break
            chosen |= {name} | ({partner[name]} if name in partner else set())
        held_out |= chosen

    seen = sorted(t.name for t in tasks if t.name not in held_out)
    by_name = {t.name: t for t in tasks}
    held_out_descriptions = {name: rng.choice(by_name[name].descriptions) for name in seen}
    sample = sorted(rng.sample(seen, SEEN_EVAL_SAMPLE))
    return {
        "seed": seed,
        "rationale": RATIONALE,
        "held_out_families": held_families,
        "held_out_tasks": sorted(held_out),
        "held_out_descriptions": held_out_descriptions,
        "seen_eval_sample": sample,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=SPLIT_PATH)
    args = parser.parse_args()
    split = draw()
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(split, ensure_ascii=False, indent=2) + "\n")
    checked = load_split(args.out)  # the library's own checks, before anyone trains on it
    n_tasks = len(checked.held_out_tasks) + len(checked.seen_tasks)
    print(f"held out {len(checked.held_out_tasks)}/{n_tasks} tasks "
          f"({len(checked.held_out_tasks) / n_tasks:.0%}): families {', '.join(checked.held_out_families)}")
    print(f"seen evaluation sample: {len(checked.seen_eval_sample)} tasks; wrote {args.out}")


if __name__ == "__main__":
    main()
