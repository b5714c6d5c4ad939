"""Calibrated probabilities: ECE/NLL/Brier, temperature scaling by length, and the bundle applying it."""
import json
import math
import shutil

import numpy as np
import pytest

from conftest import make_reviews, run_cli, write_table
from sentiment import load_bundle
from sentiment.calibration import (Calibration, calibration_metrics, excerpts, fit_length_temperature, fit_temperature,
                                   rescale, sigmoid)


def test_ece_of_a_small_example_by_hand():
    labels = np.array([1, 1, 0, 0])
    p = np.array([0.9, 0.9, 0.9, 0.2])  # confidences 0.9, 0.9, 0.9, 0.8; correct 1, 1, 0, 1
    m = calibration_metrics(labels, p)
    # bin [0.8, 0.867): one review, accuracy 1, confidence 0.8; bin [0.867, 0.933): three, accuracy 2/3, confidence 0.9
    assert m["ece"] == pytest.approx(0.25 * 0.2 + 0.75 * abs(2 / 3 - 0.9))
    assert m["brier"] == pytest.approx(np.mean((p - labels) ** 2))
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.9, 0.1, 0.8])))


def test_temperature_scaling_finds_the_temperature_that_made_the_data():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 20_000)
    labels = (rng.random(20_000) < sigmoid(z / 2.5)).astype(int)  # a network overconfident by T = 2.5
    t = fit_temperature(labels, sigmoid(z))
    assert t == pytest.approx(2.5, rel=0.05)
    before, after = calibration_metrics(labels, sigmoid(z)), calibration_metrics(labels, rescale(sigmoid(z), t))
    assert after["ece"] < 0.02 < before["ece"] and after["nll"] < before["nll"]


def test_temperature_by_length_finds_the_law_that_made_the_data():
    rng = np.random.default_rng(1)
    lengths = np.exp(rng.uniform(0, np.log(200), 40_000)).astype(int) + 1
    truth = Calibration(log_t=2.0, slope=-0.4)  # T 7.4 at 1 word, 2.0 at 26, 0.9 at 200
    z = rng.normal(0, 4, len(lengths))
    labels = (rng.random(len(lengths)) < sigmoid(z / truth.temperatures(lengths))).astype(int)
    found = fit_length_temperature(labels, sigmoid(z), lengths)
    assert found.log_t == pytest.approx(2.0, abs=0.1) and found.slope == pytest.approx(-0.4, abs=0.03)
    # Where every review is about as long, one temperature is fitted: no slope from noise.
    same = fit_length_temperature(labels, sigmoid(z), np.full(len(lengths), 50))
    assert same.slope == 0 and math.exp(same.log_t) == pytest.approx(fit_temperature(labels, sigmoid(z)))


def test_excerpts_are_runs_of_whole_sentences_of_their_review():
    texts = ["Great film. I loved it! The end was weak.<br /><br />Still, see it.", "Awful. Dull and long, truly bad."]
    chosen, labels = excerpts(texts, np.array([1, 0]), seed=3, per_review=2)
    assert len(chosen) == 4 and labels.tolist() == [1, 0, 1, 0]  # two per review, in review order each round
    first = ["Great film.", "I loved it!", "The end was weak.", "Still, see it."]
    runs = {" ".join(first[i:i + k]) for i in range(4) for k in (1, 2, 3)}
    assert all(text in runs for text in chosen[0::2])
    assert all(text in ("Dull and long, truly bad.",) for text in chosen[1::2])  # "Awful." has one word
    assert excerpts(texts, np.array([1, 0]), seed=3, per_review=2)[0] == chosen  # seeded


def test_old_single_temperature_records_still_load():
    assert Calibration.of({"method": "temperature", "temperature": 2.0}).temperatures([3, 300]).tolist() == [2.0, 2.0]
    assert Calibration.of({"method": "none"}) == Calibration() == Calibration.of(None)


@pytest.fixture(scope="module")
def calibrated_model(tmp_path_factory):
    """A small model trained on 2,400 cue-word reviews, a tenth of them with the wrong label
    (so no model is sure of everything): 240 validation reviews, enough to fit a temperature."""
    folder = tmp_path_factory.mktemp("calibrated")
    reviews = [(text, label if i % 10 else 1 - label) for i, (text, label) in enumerate(make_reviews(2400))]
    data = write_table(folder / "reviews.csv", [{"text": t, "label": y} for t, y in reviews])
    result = run_cli("train.py", "--data", data, "--model", "rnn", "--epochs", "2", "--embedding-dim", "8",
                     "--hidden-size", "8", "--max-len", "32", "--vocab-size", "100", "--batch-size", "32",
                     "--lr", "0.01", "--adversarial", "0", "--out", folder / "run")
    assert result.returncode == 0, result.stderr
    return folder / "run"


def test_too_few_validation_reviews_fit_no_temperature(tiny_model):
    calibration = json.loads((tiny_model / "config.json").read_text())["calibration"]
    assert calibration["method"] == "none" and "at least 200" in calibration["reason"]
    assert load_bundle(tiny_model).calibration == Calibration()


@pytest.mark.slow
def test_training_calibrates_and_every_probability_uses_it(calibrated_model, tmp_path):
    tiny_model = calibrated_model
    config = json.loads((tiny_model / "config.json").read_text())
    calibration = config["calibration"]
    assert calibration["method"] == "length_temperature" and calibration["n"] == 240
    assert calibration["n_excerpts"] > 240 and {"validation_after", "excerpts_after"} <= set(calibration)
    assert {"ece", "nll", "brier"} <= set(config["metrics"]["validation"])
    texts = [t for t, _ in make_reviews(6, seed=7)] + ["superb", "awful boring"]
    lengths = load_bundle(tiny_model).encoder.encode(texts).lengths
    clf = load_bundle(tiny_model)
    calibrated = clf.predict_proba(texts)[:, 1]
    clf.calibration = Calibration()
    raw = clf.predict_proba(texts)[:, 1]
    fitted = Calibration.of(calibration)
    assert calibrated == pytest.approx(rescale(raw, fitted.temperatures(lengths)), abs=1e-6)
    # Another calibration in config.json changes what the bundle says, not its labels;
    # a bundle with one temperature (the earlier format) gets it at every length.
    for recorded in ({"method": "length_temperature", "log_t": math.log(3.0), "slope": 0.0},
                     {"method": "temperature", "temperature": 3.0}):
        bundle = tmp_path / recorded["method"]
        shutil.copytree(tiny_model, bundle)
        (bundle / "config.json").write_text(json.dumps({**config, "calibration": recorded}))
        hotter = load_bundle(bundle).predict_proba(texts)[:, 1]
        assert hotter == pytest.approx(rescale(raw, 3.0), abs=1e-6)
        assert ((hotter >= 0.5) == (raw >= 0.5)).all()


@pytest.mark.slow
def test_calibrate_command_and_evaluate_report(calibrated_model, tmp_path):
    tiny_model = calibrated_model
    bundle = tmp_path / "b"
    shutil.copytree(tiny_model, bundle)
    config = json.loads((bundle / "config.json").read_text())
    del config["calibration"]
    (bundle / "config.json").write_text(json.dumps(config))
    result = run_cli("-m", "sentiment", "calibrate", "--model", bundle)
    assert result.returncode == 0, result.stderr
    assert "temperature by length, T = " in result.stdout and "validation reviews and" in result.stdout
    refitted = json.loads((bundle / "config.json").read_text())["calibration"]
    trained = json.loads((tiny_model / "config.json").read_text())["calibration"]
    assert (refitted["log_t"], refitted["slope"]) == pytest.approx((trained["log_t"], trained["slope"]), abs=1e-4)
    assert "Calibration: temperature by length, T = " in (bundle / "README.md").read_text()
    data = write_table(tmp_path / "l.csv", [{"text": "wonderful superb", "label": 1}, {"text": "awful boring", "label": 0}])
    shown = run_cli("-m", "sentiment", "evaluate", "--model", bundle, "--data", data, "--plot", tmp_path / "plots")
    assert shown.returncode == 0, shown.stderr
    assert all(f"\n{m} " in shown.stdout for m in ("ece", "nll", "brier"))
    assert (tmp_path / "plots" / "reliability.png").stat().st_size > 1000


def test_calibrate_refuses_data_that_is_not_the_bundles_before_touching_it(tiny_model, tmp_path):
    from sentiment.errors import SentimentError
    from sentiment.train.calibrate import calibrate_bundle

    other = write_table(tmp_path / "other.csv", [{"text": "wonderful superb", "label": "pos"},
                                                 {"text": "awful boring", "label": "neg"}])
    before = {p.name: p.read_bytes() for p in tiny_model.iterdir() if p.is_file()}
    with pytest.raises(SentimentError, match="fingerprint"):
        calibrate_bundle(str(tiny_model), data=str(other))
    assert {p.name: p.read_bytes() for p in tiny_model.iterdir() if p.is_file()} == before
