"""``Classifier``: a loaded model and its tokenizer, the one object every surface calls."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .calibration import Calibration, predicted_classes
from .data import LABELS, is_negative_positive
from .errors import SentimentError
from .models import SentimentRNN
from .text import PAD_ID, UNK_ID, Encoded, TextEncoder, encodable

# A review with no word of the vocabulary among those the model reads (an empty one, say)
# gives the model nothing but padding and <unk>: its output then says nothing about the text.
NOTHING_TO_JUDGE = "nothing to judge: no known words"
PRECISIONS = ("auto", "float32", "bfloat16")
SMALL_BATCH, WIDTH_STEP = 16, 32


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere it is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``auto`` is bfloat16 where the hardware computes it natively (faster), else float32."""
    if precision not in PRECISIONS:
        raise SentimentError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_bf16() else "float32"


def class_probabilities(model: SentimentRNN, encoded: Encoded, batch_size: int = 256,
                        device: str | torch.device = "cpu", temperature: float | np.ndarray = 1.0) -> np.ndarray:
    """[n, K] probabilities of each class for each encoded review, in input order (computed in the
    model's dtype).

    Batches are formed from reviews of similar length so little time goes to padding.
    The logits are divided by ``temperature`` first (1: the network as trained): one number,
    or one per review (calibration by length). With two classes, column 0 is 1 - column 1,
    as it always was, so the probabilities of a binary bundle are exactly those of earlier versions.
    """
    n = len(encoded.lengths)
    k = model.config.num_classes
    result = np.empty((n, k), dtype=np.float64)
    order = np.argsort(-encoded.lengths, kind="stable")
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            width = int(encoded.lengths[idx].max())
            if len(idx) < SMALL_BATCH:
                # A few reviews at a time (the web page): widths rounded up to a multiple of
                # 32 keep the set of shapes small, which keeps the tail latency low. Large
                # batches keep exact widths: rounding costs them throughput.
                width = min(encoded.ids.shape[1], -(-width // WIDTH_STEP) * WIDTH_STEP)
            ids = torch.from_numpy(encoded.ids[idx, :width]).to(device)
            lengths = torch.from_numpy(encoded.lengths[idx])
            logits = model(ids, lengths).float()
            t = temperature[idx] if isinstance(temperature, np.ndarray) else temperature
            t = torch.as_tensor(t, dtype=logits.dtype, device=logits.device).reshape(-1, 1)
            result[idx] = torch.softmax(logits / t, dim=-1).cpu().numpy()
    model.train(was_training)
    if k == 2:
        result[:, 0] = 1.0 - result[:, 1]
    return result


def positive_probability(model: SentimentRNN, encoded: Encoded, batch_size: int = 256,
                         device: str | torch.device = "cpu", temperature: float | np.ndarray = 1.0) -> np.ndarray:
    """The probability of class 1 of a two-class model (P(positive) of an IMDB one)."""
    return class_probabilities(model, encoded, batch_size, device, temperature)[:, 1]


def uncalibrated(model: SentimentRNN, encoder: TextEncoder, device: str | torch.device = "cpu",
                 batch_size: int = 256):
    """``texts -> ([n, K] probabilities of the network as trained, words read of each)``: what
    calibration is fitted on."""
    def score(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = encoder.encode(list(texts))
        return class_probabilities(model, encoded, batch_size, device), encoded.lengths
    return score


@dataclass
class Scores:
    """What the model made of a list of reviews, in input order."""

    probabilities: np.ndarray  # float64 [n, K], columns in the order of ``classes``
    known_words: np.ndarray    # int64 [n]: words of the vocabulary among those the model read
    classes: tuple[str, ...] = LABELS

    def part(self, start: int, stop: int) -> "Scores":
        """The scores of reviews ``start`` to ``stop`` (a caller's share of a shared batch)."""
        return Scores(self.probabilities[start:stop], self.known_words[start:stop], self.classes)

    @staticmethod
    def joined(parts: Sequence["Scores"]) -> "Scores":
        """Scores of consecutive parts as one, in order."""
        return Scores(np.concatenate([p.probabilities for p in parts]),
                      np.concatenate([p.known_words for p in parts]), parts[0].classes)

    @property
    def judged(self) -> np.ndarray:
        """Whether each review gave the model anything to judge (at least one known word)."""
        return self.known_words > 0

    @property
    def sentiment(self) -> bool:
        """Whether the classes are IMDB's negative/positive, the ones ``p_positive`` speaks of."""
        return is_negative_positive(self.classes)

    @property
    def p_positive(self) -> np.ndarray:
        """P(positive) of each review, for a negative/positive model only."""
        if not self.sentiment:
            raise SentimentError(f"this model's classes are {', '.join(self.classes)}, not negative/positive: "
                                 "read probabilities instead")
        return self.probabilities[:, 1]

    def labels(self) -> list[str | None]:
        """The label of each review, None where there is nothing to judge."""
        best = predicted_classes(self.probabilities)
        return [self.classes[int(c)] if k else None for c, k in zip(best, self.known_words)]

    def results(self) -> list[dict]:
        """One ``{"label", "score", "probabilities", "known_words", "note"}`` per review (and
        ``p_positive`` for a negative/positive model)."""
        out = []
        for label, row, known in zip(self.labels(), self.probabilities.tolist(), self.known_words.tolist()):
            if label is None:
                result = {"label": None, "score": None, "p_positive": None, "probabilities": None,
                          "known_words": 0, "note": NOTHING_TO_JUDGE}
            else:
                result = {"label": label, "score": row[self.classes.index(label)], "p_positive": row[-1],
                          "probabilities": dict(zip(self.classes, row)), "known_words": known, "note": None}
            if not self.sentiment:
                del result["p_positive"]
            out.append(result)
        return out

    def ranked(self, top_k: int | None = None) -> list[list[dict]]:
        """Per review, ``{"label", "score"}`` of the ``top_k`` likeliest classes (None: every class),
        likeliest first, as a ``transformers`` pipeline gives with ``top_k``; empty where there is
        nothing to judge."""
        out = []
        for row, known in zip(self.probabilities.tolist(), self.known_words.tolist()):
            pairs = sorted(zip(self.classes, row), key=lambda pair: -pair[1]) if known else []
            out.append([{"label": label, "score": p} for label, p in pairs[:top_k]])
        return out


@dataclass
class Explanation:
    """Why the model decided as it did, word by word (occlusion: leave one word out).

    ``contributions[i]`` is P(``towards``) with the whole review minus P(``towards``) without
    word i: above 0 the word pushed towards that class, below 0 away from it. ``towards`` is
    positive for a negative/positive model, else the class the model predicts. Words the
    model never read (cut by the length limit) contribute 0.
    """

    text: str
    probability: float               # of ``towards``, for the whole review
    words: list[str]                 # as written in ``text``
    spans: list[tuple[int, int]]     # where each word is in ``text``
    known: list[bool]                # in the vocabulary (False: read as <unk>)
    kept: list[bool]                 # within the words the model reads
    contributions: list[float] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # vocabulary ids, <unk> = 0
    method: str = "occlusion (leave one word out)"
    towards: str = LABELS[1]

    @property
    def p_positive(self) -> float:
        """P(positive) of the review, for a negative/positive model (whose ``towards`` is positive)."""
        if self.towards != LABELS[1]:
            raise SentimentError(f"this explanation is about {self.towards!r}, not positive")
        return self.probability

    @property
    def truncated(self) -> bool:
        return not all(self.kept)

    def highlighted(self) -> list[tuple[str, float | None]]:
        """The original text in pieces, each word with its contribution, for highlighting."""
        pieces: list[tuple[str, float | None]] = []
        at = 0
        for (start, end), score in zip(self.spans, self.contributions):
            if start > at:
                pieces.append((self.text[at:start], None))
            pieces.append((self.text[start:end], score))
            at = end
        if at < len(self.text):
            pieces.append((self.text[at:], None))
        return pieces

    def top(self, n: int = 5, positive: bool = True) -> list[tuple[str, float]]:
        """The n words that pushed hardest towards ``towards`` (``positive=False``: away from it)."""
        pairs = [(w, c) for w, c, k in zip(self.words, self.contributions, self.kept) if k]
        pairs.sort(key=lambda p: p[1], reverse=positive)
        return [p for p in pairs[:n] if (p[1] > 0 if positive else p[1] < 0)]


class Classifier:
    """A trained model with the scikit-learn prediction interface.

    The columns of ``predict_proba`` are the bundle's classes, in its order: ``labels`` (a
    tuple) and ``classes_`` (an array, as scikit-learn names it) list them. A bundle that
    names none is negative/positive.
    """

    def __init__(self, model: SentimentRNN, encoder: TextEncoder, config: dict, path: str | None = None,
                 device: str | torch.device = "cpu", precision: str = "float32"):
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        # bfloat16 weights, not autocast: nothing is cast per call.
        self.model = model.to(self.device, getattr(torch, self.precision)).eval()
        self.encoder = encoder
        self.config = config
        self.path = path
        self.labels = tuple(config.get("labels") or LABELS)
        if len(self.labels) != model.config.num_classes:
            raise SentimentError(f"{len(self.labels)} labels ({', '.join(self.labels)}) for a model with "
                                 f"{model.config.num_classes} outputs")
        self.classes_ = np.array(self.labels)
        # Post-hoc calibration (a temperature by length), when fitted: every probability uses it.
        self.calibration = Calibration.of(config.get("calibration"), encoder.max_len, len(self.labels))

    def __repr__(self) -> str:
        return f"Classifier(kind={self.config['model']['kind']!r}, path={self.path!r})"

    @staticmethod
    def _as_list(texts: Sequence[str] | str) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings; wrap one review in a list")
        return ["" if t is None else str(t) for t in texts]

    def predict_proba(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """[n, K] probabilities, one column per class of ``classes_``."""
        return self.scores(texts, batch_size).probabilities

    def scores(self, texts: Sequence[str], batch_size: int = 256) -> "Scores":
        """Each review's class probabilities and how many known words the model read in it."""
        encoded = self.encoder.encode(self._as_list(texts))
        known = ((encoded.ids != UNK_ID) & (encoded.ids != PAD_ID)).sum(axis=1)
        temperatures = self.calibration.temperatures(encoded.lengths)
        probabilities = class_probabilities(self.model, encoded, batch_size, self.device, temperatures)
        return Scores(self.calibration.reweigh(probabilities), known, self.labels)

    def __call__(self, texts: Sequence[str] | str, batch_size: int = 256, top_k: int | None = 1) -> list:
        """One result per review, shaped as a ``transformers`` text-classification pipeline's.

        ``top_k=1`` (the default): ``{"label", "score", "probabilities", "known_words", "note"}``
        per review, where ``score`` is the probability of ``label`` and ``probabilities`` maps
        every class to its probability (a negative/positive model adds ``p_positive``). A review
        with no known words gets no verdict: ``label``, ``score`` and the probabilities are None
        and ``note`` says why. ``top_k=None`` (every class) or another number: per review a list
        of ``{"label", "score"}``, likeliest first, empty where there is nothing to judge.
        """
        scores = self.scores([texts] if isinstance(texts, str) else texts, batch_size)
        if top_k == 1:
            return scores.results()
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise SentimentError(f"top_k must be a whole number of at least 1, or None (got {top_k!r})")
        return scores.ranked(top_k)

    def read(self, text: str) -> Explanation:
        """The words of ``text`` as the model reads them (known or ``<unk>``, kept or cut), without scores."""
        text = encodable("" if text is None else str(text))
        encoding = self.encoder.encode_one(text)
        kept = [False] * len(encoding.ids)
        for a, b in self.encoder.kept_span(len(encoding.ids)):
            kept[a:b] = [True] * (b - a)
        return Explanation(text=text, probability=float("nan"), words=[text[a:b] for a, b in encoding.offsets],
                           spans=[tuple(o) for o in encoding.offsets], known=[t != UNK_ID for t in encoding.ids],
                           kept=kept, contributions=[0.0] * len(encoding.ids), ids=list(encoding.ids))

    def explain(self, text: str, batch_size: int = 128) -> Explanation:
        """Each word's contribution to the probability of a class (``Explanation.towards``), by
        leaving that word out."""
        e = self.read(text)
        kept_positions = [i for i, k in enumerate(e.kept) if k]
        read = np.array([e.ids[i] for i in kept_positions], dtype=np.int64)
        n = len(read)
        width = self.encoder.max_len
        # Row 0 is the review as read; row j+1 leaves out word j.
        rows = np.full((n + 1, width), PAD_ID, dtype=np.int64)
        lengths = np.ones(n + 1, dtype=np.int64)
        rows[0, :n] = read
        lengths[0] = max(n, 1)
        for j in range(n):
            rows[j + 1, :n - 1] = np.delete(read, j)
            lengths[j + 1] = max(n - 1, 1)
        # Every row at the temperature of the review as read: a word's contribution is then the
        # network's, not a change of temperature that one word less would bring.
        temperatures = self.calibration.temperatures(np.full(n + 1, lengths[0]))
        probabilities = self.calibration.reweigh(class_probabilities(
            self.model, Encoded(rows, lengths, lengths.copy()), batch_size, self.device, temperatures))
        column = 1 if is_negative_positive(self.labels) else int(predicted_classes(probabilities[:1])[0])
        p = probabilities[:, column]
        e.towards, e.probability = self.labels[column], float(p[0])
        for j, i in enumerate(kept_positions):
            e.contributions[i] = float(p[0] - p[j + 1])
        return e

    def warm_up(self) -> None:
        """Run one review of every padded width through the model, so that no user of a server
        waits while the CPU's RNN kernels for a new shape are set up."""
        ids = np.full((1, self.encoder.max_len), PAD_ID, dtype=np.int64)
        for width in range(WIDTH_STEP, self.encoder.max_len + WIDTH_STEP, WIDTH_STEP):
            lengths = np.array([min(width, self.encoder.max_len)])
            class_probabilities(self.model, Encoded(ids, lengths, lengths), 1, self.device)

    def predict(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """The label of each review, one of ``classes_``."""
        return self.classes_[predicted_classes(self.predict_proba(texts, batch_size))]
