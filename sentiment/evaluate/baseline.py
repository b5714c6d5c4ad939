"""The linear baseline: TF-IDF of unigrams and bigrams with logistic regression (scikit-learn).

It reads words exactly as the recurrent models' tokenizer does (``text.words``), but
keeps every word and bigram seen twice, with no length limit.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..calibration import predicted_classes
from ..data import LABELS
from ..text import words


class LinearBaseline:
    """``fit`` on training reviews, then ``predict_proba`` like a :class:`Classifier`."""

    def __init__(self, classes: Sequence[str] = LABELS, C: float = 4.0, seed: int = 0, balanced: bool = False):
        # The classes by id, as a Classifier has them; logistic regression is multinomial for more than two.
        self.classes_ = np.array(classes)
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.pipeline = make_pipeline(
            TfidfVectorizer(analyzer=words_and_bigrams, min_df=2, sublinear_tf=True),
            LogisticRegression(C=C, max_iter=2000, random_state=seed, class_weight="balanced" if balanced else None))

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> "LinearBaseline":
        self.pipeline.fit(list(texts), np.asarray(labels))
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """[n, K]: one column per class of ``classes_``, 0 for a class the training rows lacked."""
        found = self.pipeline.predict_proba(list(texts))
        out = np.zeros((len(found), len(self.classes_)))
        out[:, self.pipeline.classes_.astype(int)] = found
        return out

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.classes_[predicted_classes(self.predict_proba(texts))]


def words_and_bigrams(text: str) -> list[str]:
    tokens = words(text)
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]
