"""``Classifier``: a loaded model and its tokenizer, the one object every surface calls."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .calibration import Calibration
from .data import LABELS
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


def positive_probability(model: SentimentRNN, encoded: Encoded, batch_size: int = 256,
                         device: str | torch.device = "cpu", temperature: float | np.ndarray = 1.0) -> np.ndarray:
    """P(positive) for each encoded review, in input order (computed in the model's dtype).

    Batches are formed from reviews of similar length so little time goes to padding.
    The logits are divided by ``temperature`` first (1: the network as trained): one number,
    or one per review (calibration by length).
    """
    n = len(encoded.lengths)
    result = np.empty(n, dtype=np.float64)
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
            result[idx] = torch.softmax(logits / t, dim=-1)[:, 1].cpu().numpy()
    model.train(was_training)
    return result


def uncalibrated(model: SentimentRNN, encoder: TextEncoder, device: str | torch.device = "cpu",
                 batch_size: int = 256):
    """``texts -> (P(positive) of the network as trained, words read of each)``: what calibration is fitted on."""
    def score(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = encoder.encode(list(texts))
        return positive_probability(model, encoded, batch_size, device), encoded.lengths
    return score


@dataclass
class Scores:
    """What the model made of a list of reviews, in input order."""

    p_positive: np.ndarray   # float64 [n]
    known_words: np.ndarray  # int64 [n]: words of the vocabulary among those the model read

    @property
    def judged(self) -> np.ndarray:
        """Whether each review gave the model anything to judge (at least one known word)."""
        return self.known_words > 0

    def labels(self) -> list[str | None]:
        """The label of each review, None where there is nothing to judge."""
        return [LABELS[int(p >= 0.5)] if k else None for p, k in zip(self.p_positive, self.known_words)]

    def results(self) -> list[dict]:
        out = []
        for label, p, known in zip(self.labels(), self.p_positive.tolist(), self.known_words.tolist()):
            if label is None:
                out.append({"label": None, "score": None, "p_positive": None, "known_words": 0,
                            "note": NOTHING_TO_JUDGE})
            else:
                out.append({"label": label, "score": p if label == LABELS[1] else 1.0 - p, "p_positive": p,
                            "known_words": known, "note": None})
        return out


@dataclass
class Explanation:
    """Why the model decided as it did, word by word (occlusion: leave one word out).

    ``contributions[i]`` is P(positive) with the whole review minus P(positive) without
    word i: above 0 the word pushed towards positive, below 0 towards negative. Words the
    model never read (cut by the length limit) contribute 0.
    """

    text: str
    p_positive: float
    words: list[str]                 # as written in ``text``
    spans: list[tuple[int, int]]     # where each word is in ``text``
    known: list[bool]                # in the vocabulary (False: read as <unk>)
    kept: list[bool]                 # within the words the model reads
    contributions: list[float] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # vocabulary ids, <unk> = 0
    method: str = "occlusion (leave one word out)"

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
        """The n words that pushed hardest towards positive (or negative)."""
        pairs = [(w, c) for w, c, k in zip(self.words, self.contributions, self.kept) if k]
        pairs.sort(key=lambda p: p[1], reverse=positive)
        return [p for p in pairs[:n] if (p[1] > 0 if positive else p[1] < 0)]


class Classifier:
    """A trained sentiment model with the scikit-learn prediction interface.

    Column 0 of ``predict_proba`` is negative, column 1 positive; ``classes_`` names them.
    """

    classes_ = np.array(LABELS)

    def __init__(self, model: SentimentRNN, encoder: TextEncoder, config: dict, path: str | None = None,
                 device: str | torch.device = "cpu", precision: str = "float32"):
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        # bfloat16 weights, not autocast: nothing is cast per call.
        self.model = model.to(self.device, getattr(torch, self.precision)).eval()
        self.encoder = encoder
        self.config = config
        self.path = path
        # Post-hoc calibration (a temperature by length), when fitted: every probability uses it.
        self.calibration = Calibration.of(config.get("calibration"), encoder.max_len)

    def __repr__(self) -> str:
        return f"Classifier(kind={self.config['model']['kind']!r}, path={self.path!r})"

    @staticmethod
    def _as_list(texts: Sequence[str] | str) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings; wrap one review in a list")
        return ["" if t is None else str(t) for t in texts]

    def predict_proba(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """[n, 2] probabilities: column 0 negative, column 1 positive."""
        p = self.scores(texts, batch_size).p_positive
        return np.stack([1.0 - p, p], axis=1)

    def scores(self, texts: Sequence[str], batch_size: int = 256) -> "Scores":
        """P(positive) of each review and how many known words the model read in it."""
        encoded = self.encoder.encode(self._as_list(texts))
        known = ((encoded.ids != UNK_ID) & (encoded.ids != PAD_ID)).sum(axis=1)
        temperatures = self.calibration.temperatures(encoded.lengths)
        return Scores(positive_probability(self.model, encoded, batch_size, self.device, temperatures), known)

    def __call__(self, texts: Sequence[str], batch_size: int = 256) -> list[dict]:
        """One result per review, shaped as a ``transformers`` sentiment pipeline's.

        ``{"label", "score", "p_positive", "known_words", "note"}``: ``score`` is the
        probability of ``label``. A review with no known words gets no verdict: ``label``,
        ``score`` and ``p_positive`` are None and ``note`` says why.
        """
        return self.scores([texts] if isinstance(texts, str) else texts, batch_size).results()

    def read(self, text: str) -> Explanation:
        """The words of ``text`` as the model reads them (known or ``<unk>``, kept or cut), without scores."""
        text = encodable("" if text is None else str(text))
        encoding = self.encoder.encode_one(text)
        kept = [False] * len(encoding.ids)
        for a, b in self.encoder.kept_span(len(encoding.ids)):
            kept[a:b] = [True] * (b - a)
        return Explanation(text=text, p_positive=float("nan"), words=[text[a:b] for a, b in encoding.offsets],
                           spans=[tuple(o) for o in encoding.offsets], known=[t != UNK_ID for t in encoding.ids],
                           kept=kept, contributions=[0.0] * len(encoding.ids), ids=list(encoding.ids))

    def explain(self, text: str, batch_size: int = 128) -> Explanation:
        """Each word's contribution to P(positive), by leaving that word out."""
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
        p = positive_probability(self.model, Encoded(rows, lengths, lengths.copy()), batch_size, self.device,
                                 temperatures)
        e.p_positive = float(p[0])
        for j, i in enumerate(kept_positions):
            e.contributions[i] = float(p[0] - p[j + 1])
        return e

    def warm_up(self) -> None:
        """Run one review of every padded width through the model, so that no user of a server
        waits while the CPU's RNN kernels for a new shape are set up."""
        ids = np.full((1, self.encoder.max_len), PAD_ID, dtype=np.int64)
        for width in range(WIDTH_STEP, self.encoder.max_len + WIDTH_STEP, WIDTH_STEP):
            lengths = np.array([min(width, self.encoder.max_len)])
            positive_probability(self.model, Encoded(ids, lengths, lengths), 1, self.device)

    def predict(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """The label of each review: "negative" or "positive"."""
        return self.classes_[(self.predict_proba(texts, batch_size)[:, 1] >= 0.5).astype(int)]
