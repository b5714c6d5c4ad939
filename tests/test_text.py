import pytest

from sentiment.errors import SentimentError
from sentiment.text import PAD_ID, UNK_ID, TextEncoder, train_tokenizer


def _encoder(max_len=5, truncate="tail", vocab_size=100):
    texts = ["Great movie!<br />Great cast.", "a bad, BAD film", "the end"]
    return TextEncoder(train_tokenizer(texts, vocab_size), max_len, truncate)


def test_normalization_lowercases_and_strips_breaks_and_punctuation():
    enc = _encoder()
    assert enc.tokenize(["Great movie!<br />Great<br/>cast... (really)"]) == [
        ["great", "movie", "great", "cast", "really"]]


def test_special_tokens_have_fixed_ids_and_vocab_keeps_most_frequent_words():
    tok = train_tokenizer(["b b b a a c", "b a d"], vocab_size=2)
    vocab = tok.get_vocab()
    assert vocab["<unk>"] == UNK_ID == 0 and vocab["<pad>"] == PAD_ID == 1
    assert set(vocab) == {"<unk>", "<pad>", "a", "b"}  # c and d are rarer than a and b


def test_unknown_words_become_unk_and_short_reviews_are_padded():
    enc = _encoder(max_len=6)
    vocab = enc.tokenizer.get_vocab()
    out = enc.encode(["great zebra"])
    assert out.ids[0].tolist() == [vocab["great"], UNK_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]
    assert out.lengths.tolist() == [2] and out.total.tolist() == [2]


@pytest.mark.parametrize("side, kept", [("head", "a b c d"), ("tail", "g h i j"), ("head+tail", "a b i j")])
def test_truncation_keeps_the_chosen_side(side, kept):
    words = "a b c d e f g h i j".split()
    enc = TextEncoder(train_tokenizer([" ".join(words)], 20), max_len=4, truncate=side)
    vocab = enc.tokenizer.get_vocab()
    out = enc.encode([" ".join(words)])
    assert out.ids[0].tolist() == [vocab[w] for w in kept.split()]
    assert out.lengths.tolist() == [4] and out.total.tolist() == [10]


def test_empty_review_is_one_pad_token_not_a_zero_length():
    out = _encoder().encode(["", "!!!"])
    assert out.lengths.tolist() == [1, 1]
    assert (out.ids == PAD_ID).all()


def test_saved_tokenizer_encodes_identically(tmp_path):
    enc = _encoder()
    enc.save(tmp_path / "tokenizer.json")
    again = TextEncoder.load(tmp_path / "tokenizer.json", enc.max_len, enc.truncate)
    texts = ["Great movie, bad end", "", "the film!"]
    assert (again.encode(texts).ids == enc.encode(texts).ids).all()


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(SentimentError, match="truncate"):
        _encoder(truncate="middle")
    with pytest.raises(SentimentError, match="max_len"):
        _encoder(max_len=1)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(SentimentError, match="tokenizer.json: not a valid tokenizer"):
        TextEncoder.load(tmp_path / "tokenizer.json", 10, "tail")
