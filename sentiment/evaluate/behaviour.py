"""Behaviour tests in the spirit of CheckList (Ribeiro et al., ACL 2020), written for movie reviews.

Each test builds short sentences from templates and says what a sound model must do
with them. Three kinds, as in CheckList:

- minimum functionality: a sentence whose label is plain ("The plot was not good." is
  negative); a failure is a wrong label;
- invariance: a change that must not flip the label (a name, a number, punctuation, a
  small typo, an intensifier); a failure is a flipped label;
- directional: a change that must move the score one way ("X, but Y" follows Y).

These are measurements, not unit tests: ``python -m sentiment behaviour`` prints each
model's failure rate per test. Sentences with no word of a model's vocabulary still
count; the model then has nothing to go on and fails or passes by its bias.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np

NOUNS = ("film", "movie", "plot", "acting", "script", "ending", "story", "cast", "dialogue", "soundtrack")
POSITIVE = ("good", "great", "excellent", "wonderful", "brilliant", "enjoyable", "amazing", "superb")
NEGATIVE = ("bad", "terrible", "awful", "boring", "dull", "poor", "horrible", "weak")
INTENSIFIERS = ("really", "very", "extremely", "incredibly", "truly")
NAMES = ("John", "Mary", "Ahmed", "Mei", "Carlos", "Priya", "Olga", "Kwame", "Lucas", "Aiko")
SEED = 0


@dataclass
class Case:
    """One test's sentences and what must hold. ``expect``: 1 positive, 0 negative (minimum
    functionality and directional); ``pairs``: (original, changed) for invariance."""

    name: str
    kind: str                      # "MFT", "INV" or "DIR"
    texts: list[str]
    expect: list[int] | None = None
    pairs: list[tuple[int, int]] | None = None


def _plain(noun: str, adj: str) -> str:
    return f"The {noun} was {adj}."


def _typo(text: str, rng: random.Random) -> str:
    """Two neighbouring letters of one word of four letters or more swapped."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if sum(c.isalpha() for c in w) >= 4]
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len([c for c in w if c.isalpha()]) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def _invariance(name: str, originals: list[str], change: Callable[[str], str]) -> Case:
    texts = []
    pairs = []
    for text in originals:
        pairs.append((len(texts), len(texts) + 1))
        texts += [text, change(text)]
    return Case(name, "INV", texts, pairs=pairs)


def cases() -> list[Case]:
    """Every test, built the same way every time (seeded)."""
    rng = random.Random(SEED)
    grid = list(itertools.product(NOUNS, POSITIVE + NEGATIVE))
    plain = [(_plain(n, a), int(a in POSITIVE)) for n, a in grid]
    result = [
        Case("plain sentiment (The plot was great.)", "MFT", [t for t, _ in plain], [y for _, y in plain]),
        Case("negated positive (The plot was not great.)", "MFT",
             [f"The {n} was not {a}." for n, a in itertools.product(NOUNS, POSITIVE)],
             [0] * (len(NOUNS) * len(POSITIVE))),
        Case("negated negative (The plot was not bad.)", "MFT",
             [f"The {n} was not {a}." for n, a in itertools.product(NOUNS, NEGATIVE)],
             [1] * (len(NOUNS) * len(NEGATIVE))),
    ]
    contrast, expect = [], []
    for first, second in itertools.permutations(NOUNS, 2):
        pos, neg = rng.choice(POSITIVE), rng.choice(NEGATIVE)
        contrast += [f"The {first} was {neg}, but the {second} was {pos}.",
                     f"The {first} was {pos}, but the {second} was {neg}."]
        expect += [1, 0]
    result.append(Case("contrast follows the clause after but", "DIR", contrast, expect))
    originals = [t for t, _ in plain]
    result += [
        _invariance("intensifier (The plot was really great.)", originals,
                    lambda t: t.replace(" was ", f" was {rng.choice(INTENSIFIERS)} ", 1)),
        _invariance("a name (I saw it with Mary.)", originals, lambda t: f"{t} I saw it with {rng.choice(NAMES)}."),
        _invariance("a number (It runs 2 hours.)", originals, lambda t: f"{t} It runs {rng.randint(2, 3)} hours."),
        _invariance("punctuation (! instead of .)", originals, lambda t: t[:-1] + "!"),
        _invariance("a typo (two letters swapped)", originals, lambda t: _typo(t, rng)),
    ]
    return result


def failure_rates(classifier, tests: list[Case] | None = None) -> dict[str, dict]:
    """Each test's failure rate for ``classifier`` (a Classifier), with its kind and size."""
    out = {}
    for case in tests or cases():
        p = classifier.predict_proba(case.texts)[:, 1]
        label = (p >= 0.5).astype(int)
        if case.pairs is None:
            failed = label != np.asarray(case.expect)
            n = len(case.texts)
        else:
            failed = np.array([label[a] != label[b] for a, b in case.pairs])
            n = len(case.pairs)
        out[case.name] = {"kind": case.kind, "n": n, "failure_rate": round(float(failed.mean()), 4)}
    return out


def format_rates(rates: dict[str, dict[str, dict]]) -> str:
    """A markdown table: one row per test, one column per model."""
    models = list(rates)
    first = rates[models[0]]
    lines = ["| test | kind | n | " + " | ".join(models) + " |", "|---|---|---|" + "---|" * len(models)]
    for name, row in first.items():
        cells = " | ".join(f"{rates[m][name]['failure_rate']:.1%}" for m in models)
        lines.append(f"| {name} | {row['kind']} | {row['n']} | {cells} |")
    return "\n".join(lines)
