"""The text pipeline: one WordLevel tokenizer, trained once and saved with the model.

Training, evaluation, the web page and the batch scorer all load the same
``tokenizer.json`` through :class:`TextEncoder`; nothing else preprocesses text.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer

from .errors import SentimentError
from .options import check_whole
from .readers import encodable

UNK, PAD = "<unk>", "<pad>"
UNK_ID, PAD_ID = 0, 1
TRUNCATE_SIDES = ("head", "tail", "head+tail")
# The most tokens a model may read of a review: the longest IMDB review is about 2,500 words.
# Explaining a review costs memory in the square of it.
MAX_LEN = 5000
# What TextEncoder.shorten keeps of a very long text: characters per word read, and words
# to spare at a cut (a word split in two, or half an HTML tag, makes one spurious word).
CUT_CHARS_PER_TOKEN, CUT_SPARE_WORDS = 64, 8
# Excerpts: sentences end at . ! ? followed by space, and at HTML line breaks.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|<br\s*/?>", re.IGNORECASE)
MOST_SENTENCES = 3


def _normalizer() -> normalizers.Normalizer:
    # Punctuation becomes a space (so "great!" and "great" are one word); HTML line
    # breaks in IMDB reviews are markup, not words.
    return normalizers.Sequence([
        normalizers.Lowercase(),
        normalizers.Replace(Regex(r"<br\s*/?>"), " "),
        normalizers.Replace(Regex(r"[^\w\s]|_"), " "),
    ])


def words(text: str) -> list[str]:
    """The words of a text as the tokenizer sees them (for models that build their own vocabulary)."""
    return _NORMALIZER.normalize_str(encodable(text)).split()


_NORMALIZER = _normalizer()


def train_tokenizer(texts: Iterable[str], vocab_size: int = 10_000, length: int | None = None) -> Tokenizer:
    """Learn the ``vocab_size`` most frequent words of ``texts`` plus ``<unk>``=0, ``<pad>``=1."""
    tokenizer = Tokenizer(WordLevel(unk_token=UNK))
    tokenizer.normalizer = _normalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = WordLevelTrainer(vocab_size=vocab_size + 2, special_tokens=[UNK, PAD], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer, length=length)
    return tokenizer


def check_reading(max_len, truncate) -> None:
    """Refuse a number of tokens to read, or a side to cut, that no encoder can have."""
    check_whole(SimpleNamespace(max_len=max_len), ("max_len",), minimum=2, options=False, maximum=MAX_LEN)
    if truncate not in TRUNCATE_SIDES:
        raise SentimentError(f"truncate must be one of {', '.join(TRUNCATE_SIDES)} (got {truncate!r})")


@dataclass
class Encoded:
    """A batch of reviews as the model sees them."""

    ids: np.ndarray       # int64 [n, max_len], <pad> after the real tokens
    lengths: np.ndarray   # int64 [n], real tokens kept (at least 1)
    total: np.ndarray     # int64 [n], tokens before truncation

    def __add__(self, other: "Encoded") -> "Encoded":
        """These reviews, then ``other``'s."""
        return Encoded(*(np.concatenate([a, b]) for a, b in ((self.ids, other.ids), (self.lengths, other.lengths),
                                                           (self.total, other.total))))


class TextEncoder:
    """Turns raw review text into fixed-length id arrays, the same way everywhere."""

    def __init__(self, tokenizer: Tokenizer, max_len: int = 200, truncate: str = "tail"):
        check_reading(max_len, truncate)
        for token, expected in ((UNK, UNK_ID), (PAD, PAD_ID)):
            if tokenizer.token_to_id(token) != expected:
                raise SentimentError(f"tokenizer must map {token} to id {expected}")
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.truncate = truncate

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding table: the words plus ``<unk>`` and ``<pad>``."""
        return self.tokenizer.get_vocab_size()

    @classmethod
    def load(cls, path: str | Path, max_len: int, truncate: str) -> "TextEncoder":
        path = Path(path)
        # Checked before the file is read: a bad length costs no tokenizer load.
        check_reading(max_len, truncate)
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except FileNotFoundError:
            raise SentimentError(f"{path}: missing") from None
        except Exception as exc:  # the Rust side raises a plain Exception on bad JSON
            raise SentimentError(f"{path}: not a valid tokenizer file ({exc})") from None
        return cls(tokenizer, max_len, truncate)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    def kept_span(self, n_tokens: int) -> list[tuple[int, int]]:
        """Which [start, end) ranges of an n-token review the model reads."""
        m = self.max_len
        if n_tokens <= m:
            return [(0, n_tokens)]
        if self.truncate == "head":
            return [(0, m)]
        if self.truncate == "tail":
            return [(n_tokens - m, n_tokens)]
        head = m // 2
        return [(0, head), (n_tokens - (m - head), n_tokens)]

    def encode_one(self, text: str):
        """The full encoding of one review (ids, words, and their offsets in ``text``), uncut."""
        return self.tokenizer.encode(encodable(text), add_special_tokens=False)

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """The normalized words of each text, before the vocabulary lookup."""
        return [[tok for tok, _ in self.tokenizer.pre_tokenizer.pre_tokenize_str(
            self.tokenizer.normalizer.normalize_str(encodable(t)))] for t in texts]

    def _words(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def shorten(self, text: str) -> str:
        """``text`` without the part the model will not read, when that part is long.

        The tokenizer holds about 65 bytes per character of a text, so a 20 MB line would
        cost over a gigabyte. A text over ``2 * CUT_CHARS_PER_TOKEN * max_len`` characters
        keeps only that many from each side it is read from, once that piece is checked to
        hold more words than are read: the words read are then exactly those of the whole
        text (a word cut in two at the edge is never among them).
        """
        limit = CUT_CHARS_PER_TOKEN * self.max_len
        if len(text) <= 2 * limit:
            return text
        m, spare = self.max_len, CUT_SPARE_WORDS
        if self.truncate == "head":
            piece = text[:limit]
            return piece if self._words(piece) >= m + spare else text
        if self.truncate == "tail":
            piece = text[-limit:]
            return piece if self._words(piece) >= m + spare else text
        head, tail = text[:limit], text[-limit:]
        if self._words(head) >= m // 2 + spare and self._words(tail) >= m - m // 2 + spare:
            return head + " " + tail
        return text

    def encode(self, texts: Sequence[str]) -> Encoded:
        # Encoding without truncation keeps the whole review, so every side of the
        # cut (head, tail or both) is taken from the same token list.
        encodings = self.tokenizer.encode_batch_fast([self.shorten(encodable(t)) for t in texts],
                                                     add_special_tokens=False)
        n = len(encodings)
        ids = np.full((n, self.max_len), PAD_ID, dtype=np.int64)
        lengths = np.ones(n, dtype=np.int64)
        total = np.zeros(n, dtype=np.int64)
        for row, enc in enumerate(encodings):
            tokens = enc.ids
            total[row] = len(tokens)
            kept = [i for a, b in self.kept_span(len(tokens)) for i in tokens[a:b]]
            if kept:
                ids[row, :len(kept)] = kept
                lengths[row] = len(kept)
            # An empty review keeps one <pad> so packed sequences never see length 0.
        return Encoded(ids, lengths, total)


def excerpts(texts: Sequence[str], labels, seed: int, per_review: int) -> tuple[list[str], np.ndarray]:
    """``per_review`` runs of 1-``MOST_SENTENCES`` consecutive sentences of each review, labelled
    with its review's label (reviews without a sentence of two words give none): the short text
    people type, taken from long reviews. Seeded; all of the first round, then the second."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    split = [[s for s in SENTENCE_END.split(text) if len(s.split()) >= 2] for text in texts]
    chosen, chosen_labels = [], []
    for _ in range(per_review):
        for sentences, label in zip(split, labels):
            if not sentences:
                continue
            k = int(rng.integers(1, MOST_SENTENCES + 1))
            begin = int(rng.integers(0, max(1, len(sentences) - k + 1)))
            chosen.append(" ".join(sentences[begin:begin + k]))
            chosen_labels.append(label)
    return chosen, np.asarray(chosen_labels, dtype=labels.dtype)


def unknown_words(encoder: TextEncoder, texts: Sequence[str]) -> tuple[int, int, Counter]:
    """How ``texts`` meet ``encoder``'s vocabulary: (words in all, words it lacks, count of each word it lacks)."""
    vocab = encoder.tokenizer.get_vocab()
    total, missing = 0, Counter()
    for tokens in encoder.tokenize(texts):
        total += len(tokens)
        missing.update(t for t in tokens if t not in vocab)
    return total, sum(missing.values()), missing


def grow_vocabulary(encoder: TextEncoder, texts: Sequence[str], most: int,
                    min_count: int = 2) -> tuple[TextEncoder, list[str]]:
    """``encoder`` with up to ``most`` words of ``texts`` it lacks added after its own ids, the most
    frequent first, each seen at least ``min_count`` times (a word seen once would be learned from
    one example). Existing ids keep their meaning, so a trained embedding stays valid for them."""
    _, _, missing = unknown_words(encoder, texts)
    added = [word for word, count in sorted(missing.items(), key=lambda item: (-item[1], item[0]))
             if count >= min_count][:most]
    if not added:
        return encoder, []
    # WordLevel has no API to extend its vocabulary; its JSON form is the documented way to rebuild it.
    spec = json.loads(encoder.tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    first = max(vocab.values()) + 1
    vocab.update((word, first + i) for i, word in enumerate(added))
    return TextEncoder(Tokenizer.from_str(json.dumps(spec)), encoder.max_len, encoder.truncate), added
