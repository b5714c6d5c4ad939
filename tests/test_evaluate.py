"""`sentiment evaluate`: numbers checked against scikit-learn computed here, independently."""
import json
import re

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from conftest import run_cli, write_table
from sentiment import load_bundle
from sentiment.data import load_source


@pytest.mark.slow
def test_metrics_match_scikit_learn(tiny_model, stanford_archive, tmp_path):
    out = tmp_path / "metrics.json"
    result = run_cli("-m", "sentiment", "evaluate", "--data", stanford_archive, "--model", tiny_model,
                     "--json", out, "--plot", tmp_path / "plots")
    assert result.returncode == 0, result.stderr
    test = load_source(stanford_archive)["test"]
    p = load_bundle(tiny_model).predict_proba(test["text"])[:, 1]
    y, predicted = np.asarray(test["label"]), (p >= 0.5).astype(int)
    got = json.loads(out.read_text())["metrics"]["tiny"]
    assert got["n"] == 20
    assert got["accuracy"] == accuracy_score(y, predicted)
    assert got["f1"] == f1_score(y, predicted)
    assert got["roc_auc"] == roc_auc_score(y, p)
    assert got["confusion_matrix"] == confusion_matrix(y, predicted).tolist()
    assert re.search(rf"^accuracy +{got['accuracy']:.4f}$", result.stdout, re.M)
    assert {"roc.png", "confusion-tiny.png"} <= {p.name for p in (tmp_path / "plots").iterdir()}


@pytest.mark.slow
def test_reproduces_the_test_accuracy_recorded_at_training(tiny_model, stanford_archive, tmp_path):
    out = tmp_path / "m.json"
    assert run_cli("-m", "sentiment", "evaluate", "--data", stanford_archive, "--model", tiny_model,
                   "--json", out).returncode == 0
    recorded = json.loads((tiny_model / "config.json").read_text())["metrics"]["test"]
    measured = json.loads(out.read_text())["metrics"]["tiny"]
    assert measured == recorded


@pytest.mark.slow
def test_two_models_and_the_baseline_side_by_side(tiny_model, stanford_archive, tmp_path):
    result = run_cli("-m", "sentiment", "evaluate", "--data", stanford_archive, "--model", tiny_model,
                     "--model", tiny_model, "--baseline", "--json", tmp_path / "m.json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert len(metrics) == 3 and "tfidf+logreg" in metrics
    assert metrics["tfidf+logreg"]["accuracy"] >= 0.8  # the cue words separate the classes
    assert result.stdout.splitlines()[1].split()[0] == "metric"


@pytest.mark.slow
def test_a_labelled_file_is_evaluated_whole(tiny_model, tmp_path):
    path = write_table(tmp_path / "labelled.csv", [{"text": "wonderful superb", "label": "pos"},
                                                   {"text": "awful boring", "label": "neg"}])
    result = run_cli("-m", "sentiment", "evaluate", "--data", path, "--model", tiny_model)
    assert result.returncode == 0, result.stderr
    assert "[train]: 2 reviews" in result.stdout
    result = run_cli("-m", "sentiment", "evaluate", "--data", path, "--model", tiny_model, "--baseline")
    assert result.returncode == 2 and "--baseline trains on the source's train split" in result.stderr


def test_evaluate_in_process_reproduces_the_recorded_test_metrics_beside_the_baseline(tiny_model, stanford_archive):
    from sentiment.evaluate.evaluation import EvaluateConfig, evaluate

    results = evaluate(EvaluateConfig(data=str(stanford_archive), models=[str(tiny_model)], baseline=True))
    assert set(results) == {"tiny", "tfidf+logreg"}
    assert results["tiny"] == json.loads((tiny_model / "config.json").read_text())["metrics"]["test"]
    assert results["tfidf+logreg"]["accuracy"] >= 0.8  # the cue words separate the classes
