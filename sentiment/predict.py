"""``Classifier``: a loaded model and its tokenizer, the one object every surface calls."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .models import SentimentRNN
from .text import Encoded, TextEncoder

LABELS = ("negative", "positive")


def positive_probability(model: SentimentRNN, encoded: Encoded, batch_size: int = 256,
                         device: str | torch.device = "cpu") -> np.ndarray:
    """P(positive) for each encoded review, in input order.

    Batches are formed from reviews of similar length so little time goes to padding.
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
            ids = torch.from_numpy(encoded.ids[idx, :width]).to(device)
            lengths = torch.from_numpy(encoded.lengths[idx])
            logits = model(ids, lengths).float()
            result[idx] = torch.softmax(logits, dim=-1)[:, 1].cpu().numpy()
    model.train(was_training)
    return result


class Classifier:
    """A trained sentiment model with the scikit-learn prediction interface.

    Column 0 of ``predict_proba`` is negative, column 1 positive; ``classes_`` names them.
    """

    classes_ = np.array(LABELS)

    def __init__(self, model: SentimentRNN, encoder: TextEncoder, config: dict, path: str | None = None,
                 device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.encoder = encoder
        self.config = config
        self.path = path
        self.device = torch.device(device)

    def __repr__(self) -> str:
        return f"Classifier(kind={self.config['model']['kind']!r}, path={self.path!r})"

    @staticmethod
    def _as_list(texts: Sequence[str] | str) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings; wrap one review in a list")
        return ["" if t is None else str(t) for t in texts]

    def predict_proba(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """[n, 2] probabilities: column 0 negative, column 1 positive."""
        texts = self._as_list(texts)
        p = positive_probability(self.model, self.encoder.encode(texts), batch_size, self.device)
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """The label of each review: "negative" or "positive"."""
        return self.classes_[(self.predict_proba(texts, batch_size)[:, 1] >= 0.5).astype(int)]
