import json

import numpy as np
import pytest
import torch

from sentiment import load_bundle
from sentiment.bundle import save_bundle
from sentiment.errors import SentimentError
from sentiment.models import ModelConfig, SentimentRNN
from sentiment.text import TextEncoder, train_tokenizer

TEXTS = ["a great film", "an awful film", "", "great great awful"]


def _parts(kind="lstm", hidden=8):
    encoder = TextEncoder(train_tokenizer(["a great film", "an awful film"], 50), max_len=10, truncate="tail")
    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(kind=kind, vocab_size=encoder.vocab_size, embedding_dim=4,
                                     hidden_size=hidden, dropout=0.1))
    return model, encoder


@pytest.fixture
def bundle(tmp_path):
    model, encoder = _parts()
    return save_bundle(tmp_path / "bundle", model, encoder, {"metrics": {"test": {"accuracy": 0.5}}}), model, encoder


def test_round_trip_predicts_exactly_what_the_model_did(bundle):
    path, model, encoder = bundle
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                      "tokenizer.json"]
    clf = load_bundle(path)
    proba = clf.predict_proba(TEXTS)
    assert proba.shape == (4, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    model.eval()
    enc = encoder.encode(TEXTS)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(enc.ids), torch.from_numpy(enc.lengths)), -1).numpy()
    np.testing.assert_allclose(proba, expected, atol=1e-6)
    assert list(clf.predict(TEXTS)) == [("negative", "positive")[int(p >= 0.5)] for p in expected[:, 1]]
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == 1 and config["model"]["kind"] == "lstm"
    assert config["text"] == {"max_len": 10, "truncate": "tail", "vocab_size": encoder.vocab_size}
    assert config["metrics"]["test"]["accuracy"] == 0.5


def test_fp16_weights_load_and_agree(tmp_path):
    model, encoder = _parts()
    path = save_bundle(tmp_path / "b16", model, encoder, {}, weights_dtype="float16")
    full = save_bundle(tmp_path / "b32", model, encoder, {})
    assert (path / "model.safetensors").stat().st_size < (full / "model.safetensors").stat().st_size
    np.testing.assert_allclose(load_bundle(path).predict_proba(TEXTS), load_bundle(full).predict_proba(TEXTS),
                               atol=2e-3)


def test_saving_over_a_run_folder_keeps_its_other_files(bundle):
    path, model, encoder = bundle
    (path / "checkpoint.pt").write_bytes(b"keep me")
    save_bundle(path, model, encoder, {"metrics": {"test": {"accuracy": 0.9}}})
    assert (path / "checkpoint.pt").read_bytes() == b"keep me"
    assert json.loads((path / "config.json").read_text())["metrics"]["test"]["accuracy"] == 0.9
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]


def test_missing_files_are_named(bundle, tmp_path):
    path, _, _ = bundle
    with pytest.raises(SentimentError, match="no such model directory"):
        load_bundle(tmp_path / "nowhere")
    (path / "model.safetensors").unlink()
    with pytest.raises(SentimentError, match=r"model.safetensors: missing"):
        load_bundle(path)
    (path / "config.json").unlink()
    with pytest.raises(SentimentError, match=r"config.json: missing \(not a model bundle"):
        load_bundle(path)


def test_truncated_weights_are_refused(bundle):
    path, _, _ = bundle
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SentimentError, match="model.safetensors: content does not match the sha256"):
        load_bundle(path)
    config = json.loads((path / "config.json").read_text())
    config["weights"].pop("sha256")
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SentimentError, match="model.safetensors: not a valid safetensors file"):
        load_bundle(path)


def test_wrong_format_version_is_refused(bundle):
    path, _, _ = bundle
    config = json.loads((path / "config.json").read_text())
    config["format_version"] = 99
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SentimentError, match="format_version 99 is not supported"):
        load_bundle(path)


def test_an_unreadable_calibration_is_named_not_dropped(bundle):
    path, model, encoder = bundle
    config = json.loads((path / "config.json").read_text())
    config["calibration"] = {"method": "length_temperature", "log_t": 0.5, "slope": -0.1}
    (path / "config.json").write_text(json.dumps(config))
    calibrated = load_bundle(path).predict_proba(TEXTS[:2])[:, 1]
    for bad, message in (({"method": "isotonic"}, "method 'isotonic' is not one this version reads"),
                         ({"method": "length_temperature", "log_t": "0.5", "slope": -0.1}, "must be numbers"),
                         ({"method": "temperature", "temperature": 0}, "above 0"), ("2.0", "must be an object with a 'method' \\(got '2.0'\\)")):
        config["calibration"] = bad
        (path / "config.json").write_text(json.dumps(config))
        with pytest.raises(SentimentError, match=f"config.json: bad 'calibration' section .*{message}"):
            load_bundle(path)
    # A bundle with no calibration, or too little data to fit one ("none"), gives the network's own probabilities.
    config["calibration"] = {"method": "none", "reason": "20 validation reviews"}
    (path / "config.json").write_text(json.dumps(config))
    raw = load_bundle(path).predict_proba(TEXTS[:2])[:, 1]
    del config["calibration"]
    (path / "config.json").write_text(json.dumps(config))
    assert load_bundle(path).predict_proba(TEXTS[:2])[:, 1].tolist() == raw.tolist()
    assert not np.allclose(raw, calibrated)


def test_mismatched_shapes_name_the_tensor(bundle):
    path, _, _ = bundle
    other, encoder = _parts(hidden=12)
    # Weights of a 12-unit model under a config that says 8 units.
    save_bundle(path.parent / "other", other, encoder, {})
    config = json.loads((path / "config.json").read_text())
    (path / "model.safetensors").write_bytes((path.parent / "other" / "model.safetensors").read_bytes())
    config["weights"].pop("sha256")
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SentimentError, match=r"tensor encoder.layers.0.0.weight_ih_l0 has shape \(48, 4\), "
                                             r"config.json implies \(32, 4\)"):
        load_bundle(path)


def test_tensors_of_another_kind_are_named(bundle):
    path, _, _ = bundle
    rnn, encoder = _parts(kind="rnncell")
    save_bundle(path.parent / "cell", rnn, encoder, {})
    (path / "model.safetensors").write_bytes((path.parent / "cell" / "model.safetensors").read_bytes())
    config = json.loads((path / "config.json").read_text())
    config["weights"].pop("sha256")
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SentimentError, match="tensors do not match a lstm model .missing: encoder.layers"):
        load_bundle(path)


def test_a_single_string_is_refused_rather_than_read_letter_by_letter(bundle):
    with pytest.raises(TypeError, match="wrap one review in a list"):
        load_bundle(bundle[0]).predict_proba("a great film")


def test_default_model_is_the_shipped_one_best_on_validation(tmp_path):
    from sentiment.bundle import SHIPPED_MODELS, default_model_dir

    with pytest.raises(SentimentError, match="no shipped model in"):
        default_model_dir(tmp_path)
    for kind, validation, test in (("bilstm", 0.90, 0.99), ("lstm", 0.91, 0.80), ("rnn", 0.91, 0.95)):
        model, encoder = _parts(kind)
        save_bundle(tmp_path / kind, model, encoder,
                    {"metrics": {"validation": {"accuracy": validation}, "test": {"accuracy": test}}})
    # Validation decides, never test; among equals the more capable kind.
    assert default_model_dir(tmp_path) == tmp_path / "lstm"
    assert default_model_dir(SHIPPED_MODELS).parent == SHIPPED_MODELS
    assert load_bundle(default_model_dir()).predict(["a wonderful film"])[0] in ("positive", "negative")


def test_model_card_carries_the_metadata_and_figures_of_config(tiny_model, tmp_path):
    from sentiment.card import card_body, write_card

    config = json.loads((tiny_model / "config.json").read_text())
    card = (tiny_model / "README.md").read_text()
    front, body = card.split("\n---\n", 1)
    assert front.startswith("---\nlanguage: en\nlibrary_name: pytorch\n")
    assert "datasets: [stanfordnlp/imdb]" in front  # trained on the Stanford archive
    assert "\nlicense: apache-2.0\n" in front
    assert f"    - {{type: accuracy, value: {round(config['metrics']['test']['accuracy'], 6)}}}" in front
    for section in ("## Intended use", "## Training", "## Evaluation", "## Limitations", "## License"):
        assert section in body
    assert "Apache License 2.0" in body and "Maas et al. 2011" in body  # the data's terms are its authors'
    assert f"Command: `{config['command']}`" in body
    test_n = config["metrics"]["test"]["n"]
    assert f"| test | {test_n:,} | {config['metrics']['test']['accuracy']:.2%} |" in body
    assert "Calibration: none fitted" in body
    assert card_body(card) == body.lstrip("\n")
    # Rewritten from a changed config.json, as bench/accuracy.py --ship does for a shipped model.
    config["calibration"] = {"method": "temperature", "temperature": 1.5}
    config["metrics"]["short_text"] = {"n": 10, "accuracy": 0.7, "ece": 0.05, "data": "short.jsonl"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    rewritten = write_card(tmp_path).read_text()
    assert "Calibration: temperature scaling, T = 1.5 fitted on" in rewritten
    assert "| short reviews: short.jsonl | 10 | 70.00% |" in rewritten and "not measured" in rewritten
