"""Behaviour tests (CheckList-style measurements): built as documented, measured on a real model."""
import json

import pytest
import random

from conftest import run_cli
from sentiment import load_bundle
from sentiment.evaluate.behaviour import _typo, cases, failure_rates


def test_cases_are_the_same_every_time_and_well_formed():
    first, again = cases(), cases()
    assert [c.texts for c in first] == [c.texts for c in again]
    for case in first:
        if case.kind == "INV":
            assert len(case.texts) == 2 * len(case.pairs) and case.expect is None
        else:
            assert len(case.texts) == len(case.expect) and set(case.expect) <= {0, 1}
    negated = next(c for c in first if c.name.startswith("negated positive"))
    assert negated.texts[0] == "The film was not good." and set(negated.expect) == {0}


def test_a_typo_swaps_two_neighbouring_letters_of_one_word():
    rng = random.Random(1)
    for _ in range(50):
        changed = _typo("The soundtrack was wonderful.", rng)
        assert sorted(changed) == sorted("The soundtrack was wonderful.") and changed != "The soundtrack was wonderful."
        diff = [i for i, (a, b) in enumerate(zip(changed, "The soundtrack was wonderful.")) if a != b]
        assert len(diff) == 2 and diff[1] == diff[0] + 1


@pytest.mark.slow
def test_failure_rates_on_a_real_model(tiny_model, tmp_path):
    rates = failure_rates(load_bundle(tiny_model))
    assert all(0.0 <= r["failure_rate"] <= 1.0 for r in rates.values())
    # Punctuation never reaches the model (the tokenizer drops it): nothing can flip.
    assert rates["punctuation (! instead of .)"]["failure_rate"] == 0.0
    result = run_cli("-m", "sentiment", "behaviour", "--model", tiny_model, "--json", tmp_path / "b.json")
    assert result.returncode == 0, result.stderr
    assert "| negated negative (The plot was not bad.) | MFT | 80 |" in result.stdout
    assert json.loads((tmp_path / "b.json").read_text())["failure_rates"]["tiny"] == rates
