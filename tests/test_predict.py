"""Classifier.read and Classifier.explain on a trained tiny model."""
import numpy as np

from sentiment import load_bundle


def test_read_marks_unknown_and_cut_words(tiny_model):
    clf = load_bundle(tiny_model)  # max_len 32, truncate tail
    text = "Zzzunknown " + " ".join(["wonderful"] * 40)
    r = clf.read(text)
    assert len(r.words) == 41 and r.words[0] == "Zzzunknown"
    assert r.known[0] is False and all(r.known[1:])
    assert r.kept == [False] * 9 + [True] * 32  # the tail is what the model reads
    assert r.truncated
    assert [text[a:b] for a, b in r.spans] == r.words


def test_explain_scores_every_read_word_and_matches_predict(tiny_model):
    clf = load_bundle(tiny_model)
    text = "wonderful superb the film was awful"
    e = clf.explain(text)
    assert np.isclose(e.p_positive, clf.predict_proba([text])[0, 1], atol=1e-6)
    assert len(e.contributions) == 6
    # Each contribution is exactly the drop in P(positive) when that word is left out (this
    # bundle has no calibration; the next test has one).
    words = text.split()
    for i, c in enumerate(e.contributions):
        without = " ".join(words[:i] + words[i + 1:])
        assert np.isclose(c, e.p_positive - clf.predict_proba([without])[0, 1], atol=1e-5)
    assert "".join(p for p, _ in e.highlighted()) == text


def test_explain_reads_every_word_left_out_at_the_temperature_of_the_whole_review(tiny_model, tmp_path):
    import json
    import shutil

    from sentiment.calibration import Calibration, rescale

    bundle = tmp_path / "b"
    shutil.copytree(tiny_model, bundle)
    config = json.loads((bundle / "config.json").read_text())
    config["calibration"] = {"method": "length_temperature", "log_t": 1.0, "slope": -0.5}
    (bundle / "config.json").write_text(json.dumps(config))
    clf = load_bundle(bundle)
    text = "wonderful superb the film was awful"
    e = clf.explain(text)
    assert np.isclose(e.p_positive, clf.predict_proba([text])[0, 1], atol=1e-6)
    t_review = Calibration(1.0, -0.5).temperatures([6])[0]
    clf.calibration = Calibration()
    words = text.split()
    for i, c in enumerate(e.contributions):
        raw = clf.predict_proba([" ".join(words[:i] + words[i + 1:])])[0, 1]
        assert np.isclose(c, e.p_positive - rescale(raw, t_review), atol=1e-5)
