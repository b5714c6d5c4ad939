"""Training for short input: random contiguous crops of training reviews (train.py --crop)."""
import json

import pytest

import numpy as np
import torch

from conftest import run_cli
from sentiment.train.loop import crop_batch
from sentiment.text import PAD_ID


def _batch():
    rng = np.random.default_rng(0)
    lengths = np.array([200, 50, 8, 3, 120])
    ids = np.full((5, 200), PAD_ID, dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(2, 10_000, n)
    return ids, lengths


def test_every_crop_is_a_contiguous_run_of_the_review():
    ids, lengths = _batch()
    torch.manual_seed(0)
    cropped, new = crop_batch(ids, lengths, 1.0, 5, 40)
    assert (ids == _batch()[0]).all()  # the input is left as it was
    for row in range(len(lengths)):
        n, size = lengths[row], new[row]
        assert min(5, n) <= size <= min(40, n)
        kept = cropped[row, :size].tolist()
        original = ids[row, :n].tolist()
        assert any(original[i:i + size] == kept for i in range(n - size + 1))
        assert (cropped[row, size:] == PAD_ID).all()


def test_no_share_crops_nothing_and_a_seed_crops_alike():
    ids, lengths = _batch()
    same_ids, same_lengths = crop_batch(ids, lengths, 0.0, 5, 40)
    assert (same_ids == ids).all() and (same_lengths == lengths).all()
    torch.manual_seed(3)
    first = crop_batch(ids, lengths, 0.5, 5, 40)
    torch.manual_seed(3)
    again = crop_batch(ids, lengths, 0.5, 5, 40)
    assert (first[0] == again[0]).all() and (first[1] == again[1]).all()


@pytest.mark.slow
def test_crop_options_are_checked_and_recorded(stanford_archive, tmp_path):
    bad = run_cli("train.py", "--crop-words", "40-5")
    assert bad.returncode == 2 and "--crop-words needs 1 <= MIN <= MAX (got '40-5')" in bad.stderr
    result = run_cli("train.py", "--data", stanford_archive, "--model", "rnn", "--epochs", "1", "--crop", "0.5",
                     "--crop-words", "2-6", "--embedding-dim", "8", "--hidden-size", "8", "--max-len", "32",
                     "--vocab-size", "100", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    training = json.loads((tmp_path / "run" / "config.json").read_text())["training"]
    assert (training["crop"], training["crop_words"]) == (0.5, "2-6")


@pytest.mark.slow
def test_finetune_from_a_bundle_keeps_its_kind_sizes_and_vocabulary(tiny_model, stanford_archive, tmp_path):
    from sentiment import load_bundle
    from sentiment.calibration import Calibration

    result = run_cli("train.py", "--data", stanford_archive, "--finetune-from", tiny_model, "--epochs", "1",
                     "--lr", "1e-9", "--crop", "0.3", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    tuned, original = load_bundle(tmp_path / "run"), load_bundle(tiny_model)
    sizes = ("kind", "vocab_size", "embedding_dim", "hidden_size", "num_layers")
    assert [tuned.config["model"][k] for k in sizes] == [original.config["model"][k] for k in sizes]
    assert (tmp_path / "run" / "tokenizer.json").read_text() == (tiny_model / "tokenizer.json").read_text()
    # At a learning rate of 1e-9 the weights stay those of the bundle it started from.
    texts = ["wonderful superb loved it", "awful boring hated it"]
    tuned.calibration = original.calibration = Calibration()
    assert abs(tuned.predict_proba(texts) - original.predict_proba(texts)).max() < 1e-3


@pytest.mark.slow
def test_excerpts_add_sentences_of_training_reviews_to_the_training_rows(stanford_archive, tmp_path):
    bad = run_cli("train.py", "--excerpts", "-1")
    assert bad.returncode == 2 and "--excerpts" in bad.stderr
    common = ("--data", stanford_archive, "--model", "rnn", "--epochs", "1", "--embedding-dim", "8", "--hidden-size",
              "8", "--max-len", "32", "--vocab-size", "100", "--adversarial", "0")
    plain = run_cli("train.py", *common, "--out", tmp_path / "plain")
    result = run_cli("train.py", *common, "--excerpts", "2", "--out", tmp_path / "run")
    assert plain.returncode == 0 and result.returncode == 0, result.stderr
    n_plain = int(plain.stdout.split("data: ")[1].split(" train")[0])
    n_more = int(result.stdout.split("data: ")[1].split(" train")[0])
    added = int(result.stdout.split("excerpts: ")[1].split(" of")[0])
    # Every training review of the test data has a sentence of two words: two excerpts each.
    assert added == 2 * n_plain and n_more == 3 * n_plain
    assert json.loads((tmp_path / "run" / "config.json").read_text())["training"]["excerpts"] == 2
