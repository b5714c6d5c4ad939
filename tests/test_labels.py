"""Labels from the data: a three-class model end to end (train, evaluate, score, the JSON API and
the page, through the real commands), ratings, transfer to other classes, and bad labels."""
import csv
import json
import shutil

import httpx
import numpy as np
import pytest

from conftest import CLASSES, ROOT, Server, run_cli, three_class_rows, write_table
from sentiment import load_bundle
from sentiment.calibration import calibration_metrics, fit_length_temperature, fit_temperature
from sentiment.metrics import classification_metrics

SHIPPED = ROOT / "models" / "lstm"


def one_error_line(result) -> str:
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """A three-class csv, its test file, and a bundle trained on them with train.py."""
    folder = tmp_path_factory.mktemp("three")
    train, test = write_table(folder / "train.csv", three_class_rows(240, 1)), \
        write_table(folder / "test.csv", three_class_rows(60, 2))
    out = folder / "model"
    result = run_cli("train.py", "--data", train, "--test-data", test, "--model", "lstm", "--out", out,
                     "--epochs", "8", "--embedding-dim", "16", "--hidden-size", "16", "--max-len", "32",
                     "--batch-size", "8", "--vocab-size", "100", "--lr", "0.01", "--dropout", "0.1")
    assert result.returncode == 0, result.stderr
    return {"train": train, "test": test, "model": out, "train_output": result.stdout}


@pytest.mark.slow
def test_three_classes_train_evaluate_and_score(three, tmp_path):
    config = json.loads((three["model"] / "config.json").read_text())
    assert config["labels"] == list(CLASSES)
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert config["label2id"] == {"negative": 0, "neutral": 1, "positive": 2}
    assert " neutral " in three["train_output"]  # the confusion matrix speaks the data's classes
    clf = load_bundle(three["model"])
    assert clf.labels == CLASSES and list(clf.classes_) == list(CLASSES)
    texts = ["the film was wonderful and superb", "the plot was okay and average", "hated it, awful and boring"]
    proba = clf.predict_proba(texts)
    assert proba.shape == (3, 3) and np.allclose(proba.sum(axis=1), 1)
    assert list(clf.predict(texts)) == ["positive", "neutral", "negative"]
    ranked = clf(texts, top_k=None)
    assert [r[0]["label"] for r in ranked] == ["positive", "neutral", "negative"]
    assert {r["label"] for r in ranked[1]} == set(CLASSES)
    assert "p_positive" not in clf(texts)[0] and set(clf(texts)[0]["probabilities"]) == set(CLASSES)

    report = tmp_path / "eval.json"
    result = run_cli("-m", "sentiment", "evaluate", "--data", three["test"], "--model", three["model"],
                     "--json", report)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(report.read_text())["metrics"]["model"]
    assert np.array(metrics["confusion_matrix"]).shape == (3, 3) and metrics["accuracy"] > 0.8
    assert set(metrics["per_class"]) == set(CLASSES) and metrics["macro_f1"] == pytest.approx(
        np.mean([metrics["per_class"][c]["f1"] for c in CLASSES]))
    assert 0 <= metrics["ece"] <= 1 and metrics["roc_auc"] > 0.8
    assert "mae" not in metrics  # names are not numbers: no order to measure distance by

    scored = tmp_path / "scored.csv"
    result = run_cli("-m", "sentiment", "score", three["test"], "--model", three["model"], "--out", scored)
    assert result.returncode == 0, result.stderr
    with open(scored, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[-6:] == ["prediction", "p_negative", "p_neutral", "p_positive", "known_words", "error"]
    assert sum(r["prediction"] == r["label"] for r in rows) / len(rows) > 0.8
    p = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    assert np.allclose(p, clf.predict_proba([r["text"] for r in rows]), atol=1e-6)


@pytest.mark.slow
def test_three_classes_through_the_json_api_and_the_page(three, tmp_path):
    from gradio_client import Client

    server = Server("--model", three["model"], "--precision", "float32", log=tmp_path / "serve.log").wait_ready()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            answer = http.post("api/v1/predict", json={"texts": ["the plot was okay and average", "z"]}).json()
            first, nothing = answer["results"]
            assert first["label"] == "neutral" and set(first["probabilities"]) == set(CLASSES)
            assert first["score"] == pytest.approx(first["probabilities"]["neutral"])
            assert "p_positive" not in first and nothing["label"] is None
            schema = http.get("openapi.json").json()["components"]["schemas"]["Result"]
            assert "enum" not in json.dumps(schema["properties"]["label"])
            assert http.get("api/v1/models").json()["models"][0]["labels"] == list(CLASSES)
        page = Client(server.url, analytics_enabled=False, verbose=False)
        label = page.predict("the plot was okay and average", api_name="/predict")
        assert label["label"] == "neutral"
        assert {c["label"] for c in label["confidences"]} == set(CLASSES)
        pieces, summary = page.predict("the plot was okay and average", api_name="/explain")
        assert "Predicted **neutral**" in summary and "positive" not in summary.lower().replace("neutral", "")
        assert {p["class_or_confidence"] for p in pieces} <= {None, "strong towards", "towards", "away", "strong away"}
    finally:
        server.stop()


@pytest.mark.slow
def test_behaviour_says_in_one_line_that_it_does_not_apply(three):
    result = run_cli("-m", "sentiment", "behaviour", "--model", three["model"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (f"model: not tested: behaviour tests are about negative/positive, and "
                                     f"{three['model']}'s classes are negative, neutral, positive")


@pytest.mark.slow
def test_finetune_onto_other_classes_learns_a_new_head(three, tmp_path):
    out = tmp_path / "transfer"
    result = run_cli("train.py", "--finetune-from", SHIPPED, "--data", three["train"], "--epochs", "1",
                     "--train-subset", "60",
                     "--out", out, "--test-subset", "0")
    assert result.returncode == 0, result.stderr
    assert f"embedding, encoder and tokenizer from {SHIPPED}; a new head" in result.stdout
    assert f"are unknown to {SHIPPED}" in result.stdout
    clf, source = load_bundle(out), load_bundle(SHIPPED)
    assert clf.labels == CLASSES and clf.model.head.out_features == 3
    assert (out / "tokenizer.json").read_text() == (SHIPPED / "tokenizer.json").read_text()
    keep = run_cli("train.py", "--finetune-from", SHIPPED, "--data", three["train"], "--head", "keep",
                   "--out", tmp_path / "kept")
    line = one_error_line(keep)
    assert line.endswith(f"{three['train']}:3: label 'neutral' in column 'label' is not one of the classes "
                         "negative, positive")
    assert source.labels == ("negative", "positive")


@pytest.mark.slow
def test_bad_labels_get_one_line_with_file_row_and_value(tmp_path):
    from sentiment.errors import SentimentError
    from sentiment.train.training import TrainConfig, train

    single = write_table(tmp_path / "single.csv", [{"text": f"fine film {i}", "label": "positive"} for i in range(9)])
    # Run where a run folder would land, should one be made.
    assert one_error_line(run_cli(ROOT / "train.py", "--data", single, cwd=tmp_path)).endswith(
        f"{single}: every training row's label is 'positive' (all 9 rows, column 'label'); a classifier needs "
        "2 or more classes")

    def refused(path, **options) -> str:
        with pytest.raises(SentimentError) as error:
            train(TrainConfig(data=str(path), out=str(tmp_path / path.stem), **options))
        return str(error.value)

    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": null}\n')
    assert refused(missing) == f"{missing}:2: no label in column 'label' (got None); every training or evaluation " \
                               "row needs one"
    many = write_table(tmp_path / "many.csv", [{"text": f"film {i}", "label": i} for i in range(4)])
    assert refused(many, labels="0,1,2,3,4,5") == (
        f"{many}: 6 classes (0, 1, 2, 3, 4, 5) but 4 training rows; a classifier needs at least one row of each "
        "class, and more to learn from")
    fixed = write_table(tmp_path / "fixed.csv", [{"text": "good", "label": "good"}, {"text": "bad", "label": "meh"}])
    assert refused(fixed, labels="bad,good") == f"{fixed}:3: label 'meh' in column 'label' is not one of the " \
                                                "classes bad, good"


def test_a_bundle_without_a_label_list_is_negative_positive(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(SHIPPED, old)
    config = json.loads((old / "config.json").read_text())
    for key in ("labels", "id2label", "label2id"):
        config.pop(key, None)
    (old / "config.json").write_text(json.dumps(config))
    texts = ["A wonderful, moving film.", "Dull and far too long.", "It was fine."]
    assert load_bundle(old).labels == ("negative", "positive")
    assert np.array_equal(load_bundle(old).predict_proba(texts), load_bundle(SHIPPED).predict_proba(texts))
    assert load_bundle(old)(texts) == load_bundle(SHIPPED)(texts)
    assert [r["p_positive"] for r in load_bundle(old)(texts)] == load_bundle(SHIPPED).predict_proba(texts)[:, 1].tolist()


def test_binary_calibration_is_the_same_from_two_columns():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, 400)
    labels = (rng.uniform(size=400) < p).astype(int)
    lengths = rng.integers(3, 300, 400)
    two = np.stack([1 - p, p], axis=1)
    assert fit_temperature(labels, two) == fit_temperature(labels, p)
    assert fit_length_temperature(labels, two, lengths) == fit_length_temperature(labels, p, lengths)
    assert calibration_metrics(labels, two) == calibration_metrics(labels, p)


def test_ratings_get_mean_absolute_error_and_within_one():
    classes = ("1", "2", "3", "4", "7", "8", "9", "10")
    labels = np.array([0, 3, 4, 7])
    probabilities = np.eye(8)[[1, 3, 7, 7]] * 0.9 + 0.1 / 8  # predicts 2, 4, 10, 10 stars
    metrics = classification_metrics(labels, probabilities, classes)
    assert metrics["accuracy"] == 0.5
    assert metrics["mae"] == pytest.approx((1 + 0 + 3 + 0) / 4)
    assert metrics["within_one"] == 0.75  # 7 -> 10 is three classes away
    assert np.array(metrics["confusion_matrix"]).shape == (8, 8)
    assert set(metrics["per_class"]) == set(classes)


def test_balance_favours_rare_classes_where_that_raises_macro_f1():
    from sentiment.calibration import Calibration, fit_balance, weighed

    rng = np.random.default_rng(0)
    # A model that leans to the common class: each row's own class gets a bonus, class 0 a bigger one.
    labels = rng.choice(3, size=600, p=[0.7, 0.2, 0.1])
    logits = rng.normal(size=(600, 3)) + 1.5 * np.eye(3)[labels] + np.array([1.2, 0.0, 0.0])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    record = fit_balance(labels, p, [0.7, 0.2, 0.1])
    assert record["strength"] > 0 and record["validation_macro_f1_after"] > record["validation_macro_f1_before"]
    weights = np.array(record["weights"])
    assert weights[0] < weights[1] < weights[2]  # the rarer, the heavier
    np.testing.assert_allclose(weights / weights.mean(), (np.array([0.7, 0.2, 0.1]) ** -record["strength"])
                               / (np.array([0.7, 0.2, 0.1]) ** -record["strength"]).mean(), rtol=1e-5)
    balanced = Calibration.of({"method": "none", "balance": record})
    q = balanced.reweigh(p)
    np.testing.assert_allclose(q.sum(axis=1), 1.0)
    np.testing.assert_allclose(q, weighed(p, weights))
    # Classes as common as each other: no weight moves anything.
    even = fit_balance(labels, p, [1 / 3] * 3)
    assert even["weights"] == [1.0, 1.0, 1.0]


def test_a_balanced_model_gives_its_weighed_probabilities_everywhere(tmp_path):
    from sentiment.bundle import read_config, rewrite_config
    from sentiment.calibration import weighed
    from sentiment.train.calibrate import calibrate_bundle

    # Few neutral rows, fewer positive ones.
    rows = [r for i, r in enumerate(three_class_rows(360, 4))
            if r["label"] == "negative" or i % 6 == 1 or i % 9 == 2]  # 120, 60, 40 rows
    train, test = write_table(tmp_path / "train.csv", rows), write_table(tmp_path / "test.csv", three_class_rows(30, 5))
    out = tmp_path / "model"
    result = run_cli("train.py", "--data", train, "--test-data", test, "--model", "lstm", "--out", out, "--balanced",
                     "--epochs", "3", "--embedding-dim", "16", "--hidden-size", "16", "--max-len", "32",
                     "--batch-size", "8", "--vocab-size", "100", "--lr", "0.01", "--validation-fraction", "0.3")
    assert result.returncode == 0, result.stderr
    assert "balanced decisions: each class's probability weighed by its share" in result.stdout
    balance = read_config(out)["calibration"]["balance"]
    shares = np.array(balance["class_shares"])
    assert shares[0] > shares[1] > shares[2] and shares.sum() == pytest.approx(1.0, abs=1e-5)
    assert balance["validation_macro_f1_after"] >= balance["validation_macro_f1_before"]
    assert "balanced decisions" in (out / "README.md").read_text()

    # calibrate drops the weights with --no-balanced and chooses the same again with --balanced.
    calibrate_bundle(str(out), balanced=False)
    assert "balance" not in read_config(out)["calibration"]
    calibrate_bundle(str(out), balanced=True)
    assert read_config(out)["calibration"]["balance"] == balance

    # Weights the bundle records are what every probability it gives uses (here a known skew).
    config = read_config(out)
    config["calibration"]["balance"]["weights"] = [1.0, 6.0, 0.5]
    rewrite_config(out, config)
    clf = load_bundle(out, precision="float32")
    texts = [r["text"] for r in three_class_rows(30, 5)]
    expected = weighed(_without_weights(out, texts), np.array([1.0, 6.0, 0.5]))
    scored = tmp_path / "scored.csv"
    result = run_cli("-m", "sentiment", "score", test, "--model", out, "--precision", "float32", "--out", scored)
    assert result.returncode == 0, result.stderr
    with open(scored, newline="") as fh:
        got = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in csv.DictReader(fh)])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(texts), expected, atol=1e-9)
    assert (got.argmax(axis=1) == 1).mean() > (_without_weights(out, texts).argmax(axis=1) == 1).mean()

    config["calibration"]["balance"]["weights"] = [1.0, 6.0]
    rewrite_config(out, config)
    with pytest.raises(Exception, match="bad 'calibration' section \\(balance: 2 class weights for a model with 3"):
        load_bundle(out)


def _without_weights(bundle, texts) -> np.ndarray:
    """The bundle's probabilities with its temperature and without its class weights."""
    from sentiment.calibration import Calibration

    clf = load_bundle(bundle, precision="float32")
    clf.calibration = Calibration(clf.calibration.log_t, clf.calibration.slope)
    return clf.predict_proba(texts)
