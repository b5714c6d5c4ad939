"""The guard that the pipeline really learns, on the real IMDB archive beside the checkout."""
import json

import pytest

from conftest import SHARED_IMDB, run_cli

pytestmark = pytest.mark.skipif(not SHARED_IMDB.is_file(),
                                reason=f"the IMDB archive is not at {SHARED_IMDB} (see shared/imdb/README.md)")


@pytest.mark.slow
def test_lstm_learns_in_one_epoch_on_3000_real_reviews(tmp_path):
    out = tmp_path / "run"
    # Smaller batches, a higher peak rate and less dropout than the full recipe, and no word
    # dropout, weight averaging (measured 0.66 with them) or adversarial steps: one short
    # epoch has to move far. Same seed on CPU: the same result every run.
    result = run_cli("train.py", "--model", "lstm", "--data", SHARED_IMDB, "--train-subset", "3000",
                     "--epochs", "1", "--batch-size", "32", "--lr", "8e-3", "--dropout", "0.2",
                     "--word-dropout", "0", "--ema", "0", "--adversarial", "0",
                     "--test-subset", "1000", "--out", out, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "data: 2700 train, 300 validation, 1000 test reviews; vocabulary 10002 tokens" in result.stdout
    metrics = json.loads((out / "config.json").read_text())["metrics"]
    assert metrics["validation"]["accuracy"] >= 0.70, metrics["validation"]
    assert metrics["test"]["accuracy"] >= 0.65, metrics["test"]


@pytest.mark.slow
def test_shipped_default_model_bfloat16_agrees_with_float32():
    import numpy as np

    from sentiment import load_bundle
    from sentiment.bundle import default_model_dir
    from sentiment.data import load_source

    # 500 reviews: where the CPU lacks native bfloat16 it is emulated, about 9 times slower
    # than float32 (on 2,000 reviews of this sample 1 verdict differed, the largest gap was 0.021).
    texts = load_source(SHARED_IMDB)["test"].shuffle(seed=0)["text"][:500]
    full = load_bundle(default_model_dir()).predict_proba(texts)[:, 1]
    fast = load_bundle(default_model_dir(), precision="bfloat16").predict_proba(texts)[:, 1]
    assert np.mean((full >= 0.5) == (fast >= 0.5)) >= 0.995
    assert np.abs(full - fast).max() < 0.05
