import pytest
import torch

from sentiment.models import MODEL_KINDS, ModelConfig, SentimentRNN, reverse_each
from sentiment.errors import SentimentError


def _batch(seed=0, vocab=50, lengths=(7, 3, 1, 5)):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    ids = torch.randint(2, vocab, (len(lengths), int(lengths.max())), generator=g)
    for row, n in enumerate(lengths):
        ids[row, n:] = 1
    return ids, lengths


def _model(kind, layers=1, seed=0):
    torch.manual_seed(seed)
    return SentimentRNN(ModelConfig(kind=kind, vocab_size=50, embedding_dim=8, hidden_size=6,
                                    num_layers=layers, dropout=0.3)).eval()


@pytest.mark.parametrize("layers", [1, 2])
def test_rnncell_loop_matches_nn_rnn_with_the_same_weights(layers):
    cell_model, rnn_model = _model("rnncell", layers, seed=1), _model("rnn", layers, seed=2)
    state = {}
    for key, value in cell_model.state_dict().items():
        if key.startswith("encoder.cells."):
            _, _, layer, name = key.split(".")
            state[f"encoder.layers.{layer}.0.{name}_l0"] = value
        else:
            state[key] = value
    rnn_model.load_state_dict(state)  # strict: every tensor of nn.RNN gets a cell's weight
    ids, lengths = _batch()
    with torch.no_grad():
        out_cell, last_cell = cell_model.encode(ids, lengths)
        out_rnn, last_rnn = rnn_model.encode(ids, lengths)
        real = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
        torch.testing.assert_close(out_cell[real], out_rnn[real], atol=1e-5, rtol=0)
        torch.testing.assert_close(last_cell, last_rnn, atol=1e-5, rtol=0)
        torch.testing.assert_close(cell_model(ids, lengths), rnn_model(ids, lengths), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_padding_never_changes_a_prediction(kind):
    model = _model(kind, layers=2)
    ids, lengths = _batch(lengths=(6, 4))
    with torch.no_grad():
        batched = model(ids, lengths)
        # The same reviews alone, without padding, and with much more padding.
        for row, n in enumerate(lengths.tolist()):
            alone = model(ids[row:row + 1, :n], torch.tensor([n]))
            padded = torch.cat([ids[row:row + 1, :n], torch.ones(1, 30, dtype=torch.long)], dim=1)
            torch.testing.assert_close(alone, batched[row:row + 1], atol=1e-5, rtol=0)
            torch.testing.assert_close(model(padded, torch.tensor([n])), alone, atol=1e-5, rtol=0)


def test_bilstm_backward_direction_reads_the_review_reversed():
    model = _model("bilstm")
    ids, lengths = _batch(lengths=(5,))
    with torch.no_grad():
        _, last = model.encode(ids, lengths)
        # Reversing the review swaps what the two directions see, but not the same way:
        # so the backward half of `last` must change when the first token changes.
        changed = ids.clone()
        changed[0, 0] = 3 if ids[0, 0] != 3 else 4
        _, last_changed = model.encode(changed, lengths)
    hidden = last.shape[1] // 2
    assert not torch.allclose(last[:, hidden:], last_changed[:, hidden:])


def test_reverse_each_keeps_padding_in_place_and_is_its_own_inverse():
    x = torch.arange(8.0).reshape(2, 4, 1)
    lengths = torch.tensor([3, 4])
    assert reverse_each(x, lengths)[:, :, 0].tolist() == [[2, 1, 0, 3], [7, 6, 5, 4]]
    assert torch.equal(reverse_each(reverse_each(x, lengths), lengths), x)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_kind_learns_a_toy_task(kind):
    # Positive iff token 5 appears: a few steps of Adam must fit it.
    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(kind=kind, vocab_size=12, embedding_dim=8, hidden_size=16, dropout=0.0))
    ids = torch.randint(6, 12, (64, 8))
    labels = torch.randint(0, 2, (64,))
    ids[labels == 1, torch.randint(0, 8, (int(labels.sum()),))] = 5
    lengths = torch.full((64,), 8)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(ids, lengths), labels)
        loss.backward()
        opt.step()
    assert (model(ids, lengths).argmax(-1) == labels).float().mean() > 0.95


def test_bad_model_parameters_are_named():
    with pytest.raises(SentimentError, match="model kind"):
        ModelConfig(kind="gru")
    with pytest.raises(SentimentError, match="hidden_size"):
        ModelConfig(hidden_size=0)
    with pytest.raises(SentimentError, match="word_dropout"):
        ModelConfig(word_dropout=1.0)


def test_word_dropout_blanks_whole_words_in_training_only():
    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(kind="lstm", vocab_size=50, embedding_dim=8, hidden_size=6, dropout=0.0,
                                     word_dropout=0.5))
    ids, lengths = _batch(lengths=(40, 40))
    captured = []
    model.encoder.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    model.train()(ids, lengths)
    model.eval()(ids, lengths)
    trained, evaluated = captured
    blank = (trained == 0).all(dim=-1)
    # Each blanked position loses all its features; the others are scaled by 1 / (1 - p).
    assert 0.25 < blank.float().mean() < 0.75
    torch.testing.assert_close(trained[~blank], 2 * evaluated[~blank])
    torch.testing.assert_close(evaluated, model.embedding(ids))
