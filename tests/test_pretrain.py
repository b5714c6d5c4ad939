"""Language-model pretraining and starting a classifier from it."""
import re

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from sentiment.models import ModelConfig, SentimentRNN
from sentiment.train.pretrain import LanguageModel
from sentiment.errors import SentimentError

SIZES = ["--embedding-dim", "16", "--hidden-size", "16", "--max-len", "32", "--batch-size", "16",
         "--vocab-size", "100"]


@pytest.mark.parametrize("kind", ["rnncell", "lstm", "bilstm"])
def test_lm_loss_ignores_padding(kind):
    torch.manual_seed(0)
    lm = LanguageModel(SentimentRNN(ModelConfig(kind=kind, vocab_size=30, embedding_dim=8, hidden_size=8))).eval()
    ids = torch.randint(2, 30, (1, 6))
    with torch.no_grad():
        alone = lm(ids, torch.tensor([6]))
        padded = lm(torch.cat([ids, torch.ones(1, 5, dtype=torch.long)], dim=1), torch.tensor([6]))
    torch.testing.assert_close(alone, padded)


def test_two_layer_bilstm_is_refused():
    with pytest.raises(SentimentError, match="bilstm with --num-layers 1 only"):
        LanguageModel(SentimentRNN(ModelConfig(kind="bilstm", vocab_size=30, num_layers=2)))


@pytest.mark.slow
def test_pretrain_then_init_from(stanford_archive, tmp_path):
    first = tmp_path / "lm"
    result = run_cli("train.py", "--model", "bilstm", "--data", stanford_archive, "--epochs", "1", "--out", first,
                     "--pretrain", "lm", "--pretrain-epochs", "4", "--lr", "0.01", *SIZES)
    assert result.returncode == 0, result.stderr
    assert "language model: 42 reviews (36 train + 6 unlabelled), 4 epoch(s)" in result.stdout
    losses = [float(x) for x in re.findall(r"language model epoch \d/4: loss ([\d.]+)", result.stdout)]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    lm = load_file(str(first / "lm.safetensors"))
    assert {k.split(".")[0] for k in lm} == {"embedding", "encoder"}

    second = tmp_path / "from-lm"
    # A vanishing learning rate: the classifier's embedding must still be the pretrained one.
    result = run_cli("train.py", "--model", "bilstm", "--data", stanford_archive, "--epochs", "1", "--out", second,
                     "--init-from", first, "--lr", "1e-12", "--weight-decay", "0", *SIZES)
    assert result.returncode == 0, result.stderr
    assert "initialised from" in result.stdout
    assert (second / "tokenizer.json").read_text() == (first / "tokenizer.json").read_text()
    trained = load_file(str(second / "model.safetensors"))
    torch.testing.assert_close(trained["embedding.weight"], lm["embedding.weight"], atol=1e-6, rtol=0)

    result = run_cli("train.py", "--model", "lstm", "--data", stanford_archive, "--out", tmp_path / "bad",
                     "--init-from", first, *SIZES)
    assert result.returncode == 2
    assert "lm.safetensors: its tensors are not those of a lstm model" in result.stderr
