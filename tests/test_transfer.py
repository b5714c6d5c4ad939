"""Fine-tuning a bundle on one's own data: a grown vocabulary (--grow-vocab) and a lower
learning rate for the pretrained embedding and encoder (--body-lr)."""
import json
import random

import pytest
import torch

from conftest import make_review, run_cli, write_table
from sentiment.text import UNK_ID, TextEncoder, grow_vocabulary, train_tokenizer, unknown_words


def _encoder() -> TextEncoder:
    return TextEncoder(train_tokenizer(["good film", "bad film", "good good plot"], vocab_size=10), 16, "tail")


def test_grown_vocabulary_keeps_every_id_and_adds_the_frequent_new_words_after_them():
    encoder = _encoder()
    texts = ["A zesty, zesty film!", "soggy plot", "soggy, zesty and soggy", "once-only"]
    total, missing, counts = unknown_words(encoder, texts)
    assert (total, missing) == (12, 10) and counts["soggy"] == 3 and counts["zesty"] == 3
    grown, added = grow_vocabulary(encoder, texts, most=10)
    # Seen twice or more, most frequent first, ties alphabetical; "a", "and", "once", "only" once each.
    assert added == ["soggy", "zesty"]
    old = encoder.tokenizer.get_vocab()
    assert {w: grown.tokenizer.get_vocab()[w] for w in old} == old
    assert grown.vocab_size == encoder.vocab_size + 2
    assert grown.encode(["zesty film"]).ids[0, 0] == encoder.vocab_size + 1
    assert grow_vocabulary(encoder, texts, most=1)[1] == ["soggy"]
    assert grow_vocabulary(encoder, ["good film"], most=10) == (encoder, [])


def test_body_lr_gives_the_embedding_and_encoder_their_own_peak():
    from sentiment.models import ModelConfig, SentimentRNN
    from sentiment.train.distributed import Processes
    from sentiment.train.loop import parameter_groups, start_stage

    model = SentimentRNN(ModelConfig(kind="lstm", vocab_size=20, embedding_dim=4, hidden_size=4))
    assert len(parameter_groups(model, 1e-3, None)) == 1
    stage = start_stage(model, parameter_groups(model, 1e-3, 2e-4), 1e-3, 0.01, 2, 10, 5, torch.device("cpu"),
                        Processes.start("cpu"))
    body, head = stage.optimizer.param_groups
    assert [group["max_lr"] for group in stage.optimizer.param_groups] == [2e-4, 1e-3]
    assert len(head["params"]) == 2 and sum(p.numel() for p in body["params"]) == sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("head."))


def test_grow_vocab_needs_a_bundle_to_grow():
    result = run_cli("train.py", "--grow-vocab", "100")
    assert result.returncode == 2 and "--grow-vocab adds words to the vocabulary of --finetune-from" in result.stderr


@pytest.mark.slow
def test_finetune_grows_the_vocabulary_and_new_words_start_as_unk(tiny_model, tmp_path):
    from sentiment import load_bundle
    from sentiment.calibration import Calibration

    rng = random.Random(5)
    rows = [{"text": make_review(rng, i % 2) + (" zesty" if i % 2 else " soggy"), "label": i % 2} for i in range(40)]
    data = write_table(tmp_path / "own.jsonl", rows)
    result = run_cli("train.py", "--data", data, "--finetune-from", tiny_model, "--epochs", "1", "--lr", "1e-9",
                     "--grow-vocab", "5", "--adversarial", "0", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "unknown to" in result.stdout and "2 of them, each seen at least twice, added" in result.stdout
    tuned, original = load_bundle(tmp_path / "run"), load_bundle(tiny_model)
    assert tuned.config["model"]["vocab_size"] == original.config["model"]["vocab_size"] + 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["training"]["grow_vocab"] == 5
    embedding = tuned.model.embedding.weight
    # At a learning rate of 1e-9 the new rows are still the <unk> row they started as, and the
    # model answers as the bundle did, new words or not.
    assert torch.allclose(embedding[-2:], embedding[UNK_ID].expand(2, -1), atol=1e-5)
    texts = ["wonderful zesty loved it", "awful soggy hated it"]
    tuned.calibration = original.calibration = Calibration()
    assert abs(tuned.predict_proba(texts) - original.predict_proba(texts)).max() < 1e-3
