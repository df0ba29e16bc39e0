#!/usr/bin/env python3
"""Rebuild the bundled task suite under loragen/tasks/data/ from packaged data.

Needs (only to rebuild; the built files are committed, so users and CI need none):

  apt-get install dict-freedict-eng-deu dict-freedict-eng-fra dict-freedict-eng-spa \
                  dict-freedict-eng-ita dict-freedict-eng-por wordnet-base \
                  wngerman wfrench wspanish witalian wportuguese
  pip install --no-deps periodictable==2.1.0 countryinfo==1.0.1

Deterministic: every choice is made by a `random.Random` seeded with a string
built from SEED and the task name, over inputs sorted first, so running it twice
writes byte-identical files (given the same package versions, which meta.json
records).

Record conventions (see loragen/tasks/__init__.py): the prompt never ends with
whitespace; every answer (`target`, each entry of `choices`) starts with exactly
one space; the training text is `prompt + answer`.

Usage: python scripts/build_tasks.py [--out loragen/tasks/data]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import importlib.metadata
import json
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SEED = 20240601
MAX_TRAIN, MAX_VALIDATION, MAX_TEST = 600, 100, 200
DICTD = Path("/usr/share/dictd")
WORDNET = Path("/usr/share/wordnet")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "loragen" / "tasks" / "data"
WORD = re.compile(r"[a-z]{3,}")  # plain lowercase English words, no hyphens
FOREIGN_WORD = re.compile(r"[^\W\d_]{2,}")  # one word, letters only (any script)


# --------------------------------------------------------------------------- helpers


def debian_version(package: str) -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True
    )
    if out.returncode != 0 or not out.stdout:
        sys.exit(f"missing Debian package {package}: apt-get install {package}")
    return out.stdout


def pip_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"missing PyPI package {package}: pip install --no-deps {package}")


def rng_for(name: str) -> random.Random:
    return random.Random(f"{SEED}:{name}")


def split_counts(n: int) -> tuple[int, int, int]:
    """(train, validation, test) sizes: 600/100/200 when there is enough data, else 6:1:2."""
    n_test = min(MAX_TEST, round(n * 2 / 9))
    n_val = min(MAX_VALIDATION, round(n / 9))
    n_train = min(MAX_TRAIN, n - n_test - n_val)
    return n_train, n_val, n_test


def split_groups(name: str, groups: list[list[dict]]) -> dict[str, list[dict]]:
    """Shuffle groups of records (a group never straddles two splits) and cut them.

    `groups` must already be in a deterministic order; sizes count groups, and
    each split's records are the concatenation of its groups.
    """
    groups = list(groups)
    rng_for(name).shuffle(groups)
    n_train, n_val, n_test = split_counts(len(groups))
    cut = {
        "test": groups[:n_test],
        "validation": groups[n_test : n_test + n_val],
        "train": groups[n_test + n_val : n_test + n_val + n_train],
    }
    return {split: [r for g in gs for r in g] for split, gs in cut.items()}


def answer(text: str) -> str:
    """The answer convention: exactly one leading space, nothing trailing."""
    return " " + text.strip()


@dataclass
class BuiltTask:
    name: str
    kind: str  # "exact_match" | "multiple_choice"
    source: str
    license: str
    descriptions: list[str]
    splits: dict[str, list[dict]]


# --------------------------------------------------------------------------- WordNet


def wordnet_frequencies() -> collections.Counter:
    """Lemma -> summed SemCor tag counts over all its senses (cntlist.rev)."""
    freq: collections.Counter = collections.Counter()
    with open(WORDNET / "cntlist.rev", encoding="utf-8") as f:
        for line in f:
            key, _sense, count = line.split()
            freq[key.split("%")[0]] += int(count)
    return freq


def first_noun_sense_frequencies() -> collections.Counter:
    """Lemma -> SemCor tag count of its first (most frequent) noun sense."""
    freq: collections.Counter = collections.Counter()
    with open(WORDNET / "cntlist.rev", encoding="utf-8") as f:
        for line in f:
            key, sense, count = line.split()
            lemma, lex = key.split("%")
            if lex.startswith("1:") and sense == "1":
                freq[lemma] += int(count)
    return freq


@dataclass
class Synset:
    offset: str
    pos: str
    words: list[str]  # lemmas as written (case kept), spaces for underscores
    pointers: list[tuple[str, str, str, int, int]]  # (symbol, offset, pos, src, tgt)


def read_synsets(pos_file: str) -> dict[str, Synset]:
    synsets = {}
    with open(WORDNET / f"data.{pos_file}", encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # license header
                continue
            fields = line.split(" | ")[0].split()
            offset, _lex, ss_type = fields[0], fields[1], fields[2]
            n_words = int(fields[3], 16)
            words = []
            i = 4
            for _ in range(n_words):
                lemma = re.sub(r"\(.*\)$", "", fields[i])  # adjective markers like (a)
                words.append(lemma.replace("_", " "))  # keep case: proper nouns fail WORD
                i += 2
            n_ptrs = int(fields[i])
            i += 1
            pointers = []
            for _ in range(n_ptrs):
                sym, off, p, st = fields[i : i + 4]
                pointers.append((sym, off, p, int(st[:2], 16), int(st[2:], 16)))
                i += 4
            synsets[offset] = Synset(offset, ss_type, words, pointers)
    return synsets


OFFENSIVE_DOMAINS = {"ethnic slur", "disparagement", "obscenity", "vulgarism", "profanity"}


def offensive_words() -> set[str]:
    """Words with any sense in an offensive WordNet usage domain (slurs, obscenities).

    They are dropped from every task, as questions and as answers.
    """
    all_synsets = {pos: read_synsets(pos) for pos in ("noun", "verb", "adj", "adv")}
    domains = {o for o, s in all_synsets["noun"].items() if OFFENSIVE_DOMAINS & set(s.words)}
    words = set()
    for synsets in all_synsets.values():
        for s in synsets.values():
            for sym, off, _pos, src, _tgt in s.pointers:
                if sym == ";u" and off in domains:  # src 0: the whole synset, else one word
                    words.update(w.lower() for w in (s.words if src == 0 else [s.words[src - 1]]))
    return words


def first_noun_senses() -> dict[str, str]:
    """Noun lemma -> offset of its most frequent sense (first in index.noun)."""
    senses = {}
    with open(WORDNET / "index.noun", encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                continue
            fields = line.split()
            lemma = fields[0]
            synset_cnt = int(fields[2])
            senses[lemma] = fields[-synset_cnt]
    return senses


# --------------------------------------------------------------------------- FreeDict

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_TAGS = re.compile(r"<[^>]*>|\[[^\]]*\]|\([^)]*\)|\{[^}]*\}")


def _b64(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64.index(c)
    return n


def freedict_articles(lang: str) -> dict[str, list[str]]:
    """English headword -> list of its articles (dictd .index + .dict.dz)."""
    data = gzip.open(DICTD / f"freedict-eng-{lang}.dict.dz").read()
    articles: dict[str, list[str]] = collections.defaultdict(list)
    with open(DICTD / f"freedict-eng-{lang}.index", encoding="utf-8") as f:
        for line in f:
            headword, offset, length = line.rstrip("\n").split("\t")
            if headword.startswith("00database"):
                continue
            start = _b64(offset)
            text = data[start : start + _b64(length)].decode("utf-8")
            # the index also lists multi-word headwords under each of their words
            if text.split("\n", 1)[0].split(" /")[0].strip() == headword:
                articles[headword].append(text)
    return articles


def article_senses(article: str) -> list[str]:
    """Translation lines of an article; examples, notes and cross-refs are indented."""
    senses = []
    for line in article.split("\n")[1:]:
        if not line.strip() or line[0].isspace():
            continue
        senses.append(re.sub(r"^\d+\.\s*", "", line))
    return senses


def wordlist(lang: str) -> set[str]:
    """The Debian spelling word list of the target language."""
    with open(WORDLISTS[lang][1], encoding="utf-8") as f:
        return {line.strip().lower() for line in f if line.strip()}


def truncated_headword(word: str, article: str) -> bool:
    """True when the pronunciation spells a longer phrase than the headword.

    Some FreeDict entries keep only the first word of a multi-word headword
    ("red /ridkrɔs/" is Red Cross -> CruzRoja); their IPA gives them away.
    """
    head = article.split("\n", 1)[0]
    m = re.search(r"/([^/]*)/", head)
    ipa = re.sub(r"[ˈˌː\s]", "", m.group(1)) if m else ""
    return len(ipa) > 1.6 * len(word) + 2


def translation_pairs(
    lang: str, freq: collections.Counter, banned: set[str]
) -> list[tuple[int, str, str]]:
    """(frequency, english, translation) for unambiguous single-word entries.

    Kept: a common English word (WordNet tag count >= 1) with exactly one
    article of exactly one sense, whose first listed translation is a single
    word, different from the English one and spelled as in the language's
    Debian word list (drops FreeDict's run-together phrases and misspellings).
    """
    known = wordlist(lang)
    pairs = []
    for word, articles in freedict_articles(lang).items():
        if not WORD.fullmatch(word) or freq[word] < 1 or len(articles) != 1 or word in banned:
            continue
        if truncated_headword(word, articles[0]):
            continue
        senses = article_senses(articles[0])
        if len(senses) != 1:
            continue
        options = [p.strip() for p in re.split(r"[,;]", _TAGS.sub("", senses[0])) if p.strip()]
        if not options:
            continue
        first = options[0]
        if FOREIGN_WORD.fullmatch(first) and first.lower() != word and first.lower() in known:
            pairs.append((freq[word], word, first))
    return pairs


LANGUAGES = {
    "deu": ("de", "German"),
    "fra": ("fr", "French"),
    "spa": ("es", "Spanish"),
    "ita": ("it", "Italian"),
    "por": ("pt", "Portuguese"),
}

# Debian spelling lists that vet the translations: (package, file)
WORDLISTS = {
    "deu": ("wngerman", "/usr/share/dict/ngerman"),
    "fra": ("wfrench", "/usr/share/dict/french"),
    "spa": ("wspanish", "/usr/share/dict/spanish"),
    "ita": ("witalian", "/usr/share/dict/italian"),
    "por": ("wportuguese", "/usr/share/dict/portuguese"),
}

FREEDICT_LICENSES = {
    "deu": "GPL-3.0 and AGPL-3.0 (FreeDict eng-deu, from Frank Richter's Ding dictionary)",
}


def translation_descriptions(language: str) -> list[str]:
    return [
        f"Translate English words into {language}.",
        f"Give the {language} word for an English word.",
        f"English to {language} single-word translation.",
        f"For each English word, answer with its {language} equivalent.",
        f"A bilingual English-{language} dictionary lookup: word in, translation out.",
        f"What is this word in {language}? Translate one English word at a time.",
    ]


def build_translation(lang: str, freq: collections.Counter, banned: set[str]) -> BuiltTask:
    code, language = LANGUAGES[lang]
    name = f"translate_en_{code}"
    pairs = sorted(translation_pairs(lang, freq, banned), key=lambda p: (-p[0], p[1]))
    pool = pairs[: MAX_TRAIN + MAX_VALIDATION + MAX_TEST]  # the most common words
    pool.sort(key=lambda p: p[1])
    groups = [
        [
            {
                "prompt": f"Translate the English word into {language}.\nEnglish: {en}\n{language}:",
                "target": answer(tr),
            }
        ]
        for _f, en, tr in pool
    ]
    package = f"dict-freedict-eng-{lang}"
    return BuiltTask(
        name=name,
        kind="exact_match",
        source=(
            f"Debian {package} {debian_version(package)}: "
            f"{DICTD}/freedict-eng-{lang}.index and .dict.dz (first translation of "
            f"single-sense entries, spelling checked against Debian {WORDLISTS[lang][0]} "
            f"{debian_version(WORDLISTS[lang][0])} {WORDLISTS[lang][1]}); word frequency "
            f"from Debian wordnet-base {debian_version('wordnet-base')} {WORDNET}/cntlist.rev"
        ),
        license=FREEDICT_LICENSES.get(lang, "GPL-2.0-or-later (FreeDict)"),
        descriptions=translation_descriptions(language),
        splits=split_groups(name, groups),
    )


def build_antonyms(freq: collections.Counter, banned: set[str]) -> BuiltTask:
    name = "antonyms"
    antonyms: dict[str, set[str]] = collections.defaultdict(set)
    for pos_file in ("adj", "noun", "verb", "adv"):
        synsets = read_synsets(pos_file)
        for s in synsets.values():
            for sym, off, _p, src, tgt in s.pointers:
                if sym != "!" or src == 0:
                    continue
                antonyms[s.words[src - 1]].add(synsets[off].words[tgt - 1])
    # a pair is kept when each side has that one antonym only, in every sense
    pairs = set()
    for a, opposites in antonyms.items():
        if len(opposites) != 1:
            continue
        (b,) = opposites
        if WORD.fullmatch(a) and WORD.fullmatch(b) and antonyms.get(b) == {a} and not {a, b} & banned:
            pairs.add(tuple(sorted((a, b))))
    ranked = sorted(pairs, key=lambda p: (-(freq[p[0]] + freq[p[1]]), p))
    pool = sorted(ranked[: (MAX_TRAIN + MAX_VALIDATION + MAX_TEST) // 2])

    def rec(w: str, opposite: str) -> dict:
        return {"prompt": f"Give the antonym (opposite) of the word.\nWord: {w}\nAntonym:", "target": answer(opposite)}

    # both directions of a pair stay in one split
    groups = [[rec(a, b), rec(b, a)] for a, b in pool]
    return BuiltTask(
        name=name,
        kind="exact_match",
        source=(
            f"Debian wordnet-base {debian_version('wordnet-base')}: {WORDNET}/data.{{adj,noun,verb,adv}} "
            "antonym pointers (pairs whose words have exactly one antonym each) and cntlist.rev"
        ),
        license="WordNet-3.0",
        descriptions=[
            "Give the antonym of an English word.",
            "Answer with the word that means the opposite.",
            "Opposites: for each word, name its antonym.",
            "Find the English word with the contrary meaning, like hot and cold.",
            "Antonym lookup: turn a word into its opposite.",
            "What is the opposite of this word? Reply with one word.",
        ],
        splits=split_groups(name, groups),
    )


def build_hypernyms(freq: collections.Counter, banned: set[str]) -> BuiltTask:
    name = "hypernym_choice"
    nouns = read_synsets("noun")
    first = first_noun_senses()

    def ancestors(offset: str) -> set[str]:
        seen, todo, words = set(), [offset], set()
        while todo:
            o = todo.pop()
            if o in seen:
                continue
            seen.add(o)
            words.update(nouns[o].words)
            todo.extend(off for sym, off, *_ in nouns[o].pointers if sym in ("@", "@i"))
        return words

    noun_freq = first_noun_sense_frequencies()
    items = []
    for lemma, offset in first.items():
        # a common noun whose first noun sense is most of its uses (not "then", "line")
        if not WORD.fullmatch(lemma) or noun_freq[lemma] < 3 or 2 * noun_freq[lemma] < freq[lemma]:
            continue
        hypers = [off for sym, off, *_ in nouns[offset].pointers if sym == "@"]
        if not hypers:
            continue
        category = nouns[hypers[0]].words[0]
        if WORD.fullmatch(category) and category != lemma and not {lemma, category} & banned:
            items.append((noun_freq[lemma], lemma, category, ancestors(offset)))
    items.sort(key=lambda t: (-t[0], t[1]))
    items = sorted(items[: MAX_TRAIN + MAX_VALIDATION + MAX_TEST], key=lambda t: t[1])
    categories = sorted({c for _f, _l, c, _a in items})
    rng = rng_for(name + ":choices")
    groups = []
    for _f, lemma, category, related in items:
        wrong = [c for c in categories if c not in related and c != lemma]
        choices = rng.sample(wrong, 3) + [category]
        rng.shuffle(choices)
        groups.append(
            [
                {
                    "prompt": f"Which word names a broader category that the given word belongs to?\nWord: {lemma}\nCategory:",
                    "choices": [answer(c) for c in choices],
                    "label": choices.index(category),
                }
            ]
        )
    return BuiltTask(
        name=name,
        kind="multiple_choice",
        source=(
            f"Debian wordnet-base {debian_version('wordnet-base')}: {WORDNET}/index.noun "
            "(most frequent sense), data.noun (first hypernym; distractors are other "
            "items' hypernyms outside the word's hypernym closure) and cntlist.rev"
        ),
        license="WordNet-3.0",
        descriptions=[
            "Pick the broader category (hypernym) of an English noun from four options.",
            "Multiple choice: which word is a more general term for the given noun?",
            "Choose what kind of thing a word names, e.g. a dog is a kind of canine.",
            "Identify the hypernym of a noun among distractors.",
            "Classify a noun into its parent category in the WordNet taxonomy.",
            "Select the 'is-a' parent of each word: a rose is a kind of shrub.",
        ],
        splits=split_groups(name, groups),
    )


LEMMA_TASKS = {
    # exc file -> (task name, prompt, form label, answer label, descriptions)
    "verb.exc": ("verb_base_form", "Give the base form of the English verb.", "Verb", "Base form", [
        "Turn an inflected English verb into its base form (lemmatize).",
        "Give the infinitive of an irregular verb form, e.g. went -> go.",
        "Verb lemmatization: answer with the dictionary form of the verb.",
        "Undo the past tense or participle: what is the plain verb?",
        "Map irregular English verb forms back to their base verb.",
    ]),
    "noun.exc": ("noun_singular", "Give the singular form of the English noun.", "Plural", "Singular", [
        "Turn an irregular English plural noun into its singular, e.g. mice -> mouse.",
        "Give the singular of a plural noun.",
        "Noun lemmatization: answer with the dictionary (singular) form of the noun.",
        "What is one of these called? Write the singular of the irregular plural.",
        "Map irregular plurals such as geese, cacti or criteria back to their singular.",
    ]),
}


def build_lemmas(exc_file: str, freq: collections.Counter, banned: set[str]) -> BuiltTask:
    """Irregular inflected forms back to their lemma, from one of WordNet's exception lists."""
    name, instruction, form_label, answer_label, descriptions = LEMMA_TASKS[exc_file]
    lemmas: dict[str, set[str]] = collections.defaultdict(set)
    with open(WORDNET / exc_file, encoding="utf-8") as f:
        for line in f:
            form, *bases = line.split()
            lemmas[form].update(bases)
    by_lemma: dict[str, list[str]] = collections.defaultdict(list)
    for form, bases in lemmas.items():
        if len(bases) == 1:
            (base,) = bases
            if WORD.fullmatch(form) and WORD.fullmatch(base) and form != base and base not in banned:
                by_lemma[base].append(form)
    ranked = sorted(by_lemma, key=lambda b: (-freq[b], b))
    chosen, n_forms = [], 0
    for base in ranked:  # the most common lemmas, up to the record budget
        if n_forms >= MAX_TRAIN + MAX_VALIDATION + MAX_TEST:
            break
        chosen.append(base)
        n_forms += len(by_lemma[base])
    groups = [
        [
            {"prompt": f"{instruction}\n{form_label}: {form}\n{answer_label}:", "target": answer(base)}
            for form in sorted(by_lemma[base])
        ]
        for base in sorted(chosen)
    ]
    return BuiltTask(
        name=name,
        kind="exact_match",
        source=(
            f"Debian wordnet-base {debian_version('wordnet-base')}: {WORDNET}/{exc_file} "
            "(irregular inflections with one lemma; all forms of a lemma in one split) and cntlist.rev"
        ),
        license="WordNet-3.0",
        descriptions=descriptions,
        splits=split_groups(name, groups),
    )


# --------------------------------------------------------------------------- elements, countries


def build_elements() -> BuiltTask:
    import periodictable

    name = "element_symbol"
    groups = [
        [
            {
                "prompt": f"Give the chemical symbol of the element.\nElement: {el.name.capitalize()}\nSymbol:",
                "target": answer(el.symbol),
            }
        ]
        for el in sorted(periodictable.elements, key=lambda e: e.number)
        if el.number > 0
    ]
    return BuiltTask(
        name=name,
        kind="exact_match",
        source=f"PyPI periodictable {pip_version('periodictable')}: periodictable/core.py element table (Z 1-118)",
        license="Public domain (periodictable)",
        descriptions=[
            "Give the chemical symbol of an element.",
            "Name to symbol: write the periodic-table abbreviation of each element.",
            "Chemistry: what is the element's one- or two-letter symbol?",
            "Convert chemical element names into their symbols, like Iron to Fe.",
            "Recall periodic table symbols for the chemical elements.",
        ],
        splits=split_groups(name, groups),
    )


def _countries() -> list[dict]:
    import countryinfo

    data_dir = Path(countryinfo.__file__).parent / "data"
    by_name = {}
    for path in sorted(glob.glob(str(data_dir / "*.json"))):
        with open(path, encoding="utf-8") as f:
            c = json.load(f)
        name = c.get("name")
        # "Palestine, State of", "Holy See (Vatican City State)": duplicates of plainer entries
        if isinstance(name, str) and name.strip() and not re.search(r"[(),]", name):
            by_name.setdefault(name.strip(), c)
    return [by_name[n] for n in sorted(by_name)]


COUNTRY_SOURCE = "PyPI countryinfo {v}: countryinfo/data/*.json ({fields})"


REGIONS = ["Africa", "Americas", "Asia", "Europe", "Oceania"]


def build_regions() -> BuiltTask:
    name = "country_region"
    groups = []
    for c in _countries():
        region = c.get("region")
        if region not in REGIONS:
            continue
        groups.append(
            [
                {
                    "prompt": f"Which region of the world is the country in?\nCountry: {c['name'].strip()}\nRegion:",
                    "choices": [answer(r) for r in REGIONS],
                    "label": REGIONS.index(region),
                }
            ]
        )
    return BuiltTask(
        name=name,
        kind="multiple_choice",
        source=COUNTRY_SOURCE.format(v=pip_version("countryinfo"), fields="name, region"),
        license="MIT (countryinfo)",
        descriptions=[
            "Pick the world region (Africa, Americas, Asia, Europe, Oceania) of a country.",
            "Multiple choice geography: which continent is the country on?",
            "Classify countries by region of the world.",
            "Where in the world is this country? Choose its region.",
            "Assign each nation to Africa, the Americas, Asia, Europe or Oceania.",
        ],
        splits=split_groups(name, groups),
    )


# --------------------------------------------------------------------------- writing

YAML_TEMPLATE_EXACT = """\
# lm-eval task over the local JSONL files beside this file. The data_files are
# relative; loragen.tasks.suite.materialize_yaml writes a runnable copy with
# absolute paths. Answers start with one space (see loragen/tasks/__init__.py):
# the reference is trimmed and the generation whitespace-stripped before matching.
task: loragen_{name}
dataset_path: json
dataset_kwargs:
  data_files:
    train: train.jsonl
    validation: validation.jsonl
    test: test.jsonl
training_split: train
validation_split: validation
test_split: test
fewshot_split: train
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target | trim}}}}"
target_delimiter: " "
generation_kwargs:
  until:
    - "\\n"
  max_gen_toks: 16
  do_sample: false
filter_list:
  - name: strip
    filter:
      - function: remove_whitespace
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
metadata:
  version: 1.0
"""

YAML_TEMPLATE_CHOICE = """\
# lm-eval task over the local JSONL files beside this file. The data_files are
# relative; loragen.tasks.suite.materialize_yaml writes a runnable copy with
# absolute paths. Choices start with one space (see loragen/tasks/__init__.py);
# lm-eval scores target_delimiter + trimmed choice, i.e. the same text.
task: loragen_{name}
dataset_path: json
dataset_kwargs:
  data_files:
    train: train.jsonl
    validation: validation.jsonl
    test: test.jsonl
training_split: train
validation_split: validation
test_split: test
fewshot_split: train
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices | map('trim') | list}}}}"
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_task(task: BuiltTask, out: Path) -> None:
    d = out / task.name
    d.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        with open(d / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for r in task.splits[split]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    meta = {
        "name": task.name,
        "kind": task.kind,
        "source": task.source,
        "license": task.license,
        "descriptions": task.descriptions,
        "counts": {s: len(task.splits[s]) for s in ("train", "validation", "test")},
    }
    with open(d / "meta.json", "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(meta, ensure_ascii=False, indent=2) + "\n")
    template = YAML_TEMPLATE_EXACT if task.kind == "exact_match" else YAML_TEMPLATE_CHOICE
    with open(d / "task.yaml", "w", encoding="utf-8", newline="\n") as f:
        f.write(template.format(name=task.name))


def check(task: BuiltTask) -> None:
    """Invariants the suite and its tests rely on; a failure is a builder bug."""
    seen = {}
    for split, records in task.splits.items():
        assert records, f"{task.name}: empty {split} split"
        for r in records:
            assert not r["prompt"][-1].isspace(), r
            answers = [r["target"]] if "target" in r else r["choices"]
            for a in answers:
                assert a.startswith(" ") and not a.startswith("  ") and a == a.rstrip(), r
            assert seen.setdefault(r["prompt"], split) == split, f"{task.name}: {r['prompt']!r} in two splits"
    assert len(task.descriptions) >= 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    freq = wordnet_frequencies()
    banned = offensive_words()
    tasks = [build_translation(lang, freq, banned) for lang in LANGUAGES]
    tasks += [build_antonyms(freq, banned), build_hypernyms(freq, banned), build_lemmas("verb.exc", freq, banned),
              build_lemmas("noun.exc", freq, banned)]
    tasks += [build_elements(), build_regions()]

    if args.out.exists():  # stale task folders from older builds must not linger
        for child in sorted(args.out.iterdir()):
            if child.is_dir():
                shutil.rmtree(child)
    for task in tasks:
        check(task)
        write_task(task, args.out)
        counts = " ".join(f"{s}={len(task.splits[s])}" for s in ("train", "validation", "test"))
        print(f"built {task.name:<18} {task.kind:<15} {counts}  <- {' '.join(task.source.split()[:3])}")
    size = sum(os.path.getsize(p) for p in args.out.rglob("*") if p.is_file())
    print(f"{len(tasks)} tasks in {args.out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
