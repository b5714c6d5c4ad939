"""Honest confidence: calibration measures, and temperature scaling fitted after training.

A network trained with cross-entropy is often overconfident. Temperature scaling (Guo et
al., ICML 2017) divides its logits by a number T, fitted by minimising the negative
log-likelihood on held-out reviews: labels never change (T > 0 keeps every argmax),
probabilities move towards or away from 0.5.

One T does not fit every length. A model trained on long reviews is far more sure of
itself than it should be on a sentence (its validation reviews need T ~ 1.2, sentences
T ~ 2-4). So T depends on the number of words n the model reads:
``log T(n) = log_t + slope * ln n``, fitted on the validation reviews together with
excerpts of them (1-3 consecutive sentences, two per review, seeded): held-out short
text from the training data's own domain, labelled with its review's label. The bundle
records ``log_t`` and ``slope`` in ``config.json`` under ``calibration`` (method
``length_temperature``; bundles with one ``temperature`` still load), and every
probability the package gives uses it.

Balanced decisions (``train.py --balanced``, ``sentiment calibrate --balanced``): when some
classes are rare (star ratings: 1 and 10 stars are common, 2 and 3 are not), the likeliest
class is seldom a rare one, and macro-F1 (every class counting the same) suffers. Each
class's probability is then weighed by its share of the training rows to the power
``-strength`` and the row normalised again (logit adjustment, Menon et al., ICLR 2021):
the probabilities the model would give if the classes were closer to equally common.
``strength`` (0 to 1.5) is chosen for macro-F1 on the validation split; the record
(``calibration.balance``: the strength, the shares, the weights) sits beside the
temperature, and every probability the package gives uses both.

ECE (expected calibration error): the reviews are put in 15 equal-width bins of the
predicted class's probability; ECE is the average over bins, weighted by their share of
reviews, of |accuracy - mean confidence| in the bin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .errors import SentimentError
from .text import MOST_SENTENCES, excerpts

ECE_BINS = 15
EPS = 1e-7
# Fewer held-out reviews than this give a temperature that fits their noise: a handful
# that the model gets all right pull it towards 0, every probability to 0 or 1.
MIN_REVIEWS = 200
EXCERPTS_PER_REVIEW = 2
# A slope needs lengths that differ: when the middle 90% of them span less than this factor,
# one temperature is fitted (slope 0) rather than a slope that fits noise.
MIN_LENGTH_SPREAD = 4.0
# Lengths at which config.json and the model card show T, for people to read.
SHOWN_LENGTHS = (5, 20, 200)
# What a fit may find: log_t within [ln 0.05, ln 100], slope within [-1, 1].
FIT_BOUNDS = [(math.log(0.05), math.log(100.0)), (-1.0, 1.0)]
# The temperatures a bundle may give, at every length it reads: wide enough for any fit at
# up to 5,000 words read (1e-5 to 5e5), narrow enough that T stays a positive float32 and
# logits / T stay finite, so no probability comes out NaN or 0.5 for every review.
TEMPERATURE_RANGE = (1e-6, 1e6)


@dataclass(frozen=True)
class Calibration:
    """The temperature for a review the model reads ``n`` words of: ``exp(log_t + slope * ln n)``.

    ``Calibration()`` is the network as trained (T = 1 at every length)."""

    log_t: float = 0.0
    slope: float = 0.0
    # Balanced decisions: one weight per class (None: the probabilities as the temperature leaves them).
    weights: tuple[float, ...] | None = None

    def temperatures(self, lengths) -> np.ndarray:
        n = np.maximum(np.asarray(lengths, dtype=np.float64), 1.0)
        return np.exp(self.log_t + self.slope * np.log(n))

    def reweigh(self, p: np.ndarray) -> np.ndarray:
        """[n, K] probabilities with the class weights applied (unchanged without weights)."""
        return p if self.weights is None else weighed(p, np.asarray(self.weights))

    def check(self, max_len: int) -> "Calibration":
        """This calibration, refused unless T is within ``TEMPERATURE_RANGE`` at every length
        from 1 to ``max_len`` words (log T is linear in ln n: its ends are at 1 and ``max_len``)."""
        low, high = TEMPERATURE_RANGE
        for n in (1, max_len):
            log_temperature = self.log_t + self.slope * math.log(n)
            if not math.log(low) <= log_temperature <= math.log(high):
                raise SentimentError(
                    f"T = exp(log_t + slope * ln n) must stay within [{low:g}, {high:g}] for every length up to "
                    f"max_len {max_len}, but log_t {self.log_t:g} and slope {self.slope:g} give "
                    f"ln T = {log_temperature:g} at {n} words")
        return self

    @classmethod
    def of(cls, recorded, max_len: int = 1, num_classes: int | None = None) -> "Calibration":
        """The calibration a bundle's ``config.json`` ``calibration`` section records: none, or
        method ``none`` (too little validation data to fit one), is T = 1. A section that is
        there but unreadable, whose T leaves ``TEMPERATURE_RANGE`` at a length up to
        ``max_len``, or whose class weights are not one per class of ``num_classes``, raises
        SentimentError, rather than giving other probabilities without a word."""
        calibration = cls._read(recorded).check(max_len)
        if num_classes is not None and calibration.weights is not None and len(calibration.weights) != num_classes:
            raise SentimentError(f"balance: {len(calibration.weights)} class weights for a model with "
                                 f"{num_classes} classes")
        return calibration

    @classmethod
    def _read(cls, recorded) -> "Calibration":
        if recorded is None:
            return cls()
        if not isinstance(recorded, dict):
            raise SentimentError(f"must be an object with a 'method' (got {recorded!r})")
        temperature = cls._read_temperature(recorded)
        if recorded.get("balance") is None:
            return temperature
        weights = recorded["balance"].get("weights") if isinstance(recorded["balance"], dict) else None
        if not (isinstance(weights, list) and len(weights) >= 2
                and all(_is_number(w) and 1e-6 <= w <= 1e6 for w in weights)):
            raise SentimentError(f"balance: weights must be a list of 2 or more numbers within [1e-06, 1e+06] "
                                 f"(got {weights!r})")
        return cls(temperature.log_t, temperature.slope, tuple(float(w) for w in weights))

    @classmethod
    def _read_temperature(cls, recorded: dict) -> "Calibration":
        method = recorded.get("method")
        if method == "none":
            return cls()
        if method == "length_temperature":
            log_t, slope = recorded.get("log_t"), recorded.get("slope")
            if not all(_is_number(v) for v in (log_t, slope)):
                raise SentimentError(f"log_t and slope must be numbers (got {log_t!r} and {slope!r})")
            return cls(float(log_t), float(slope))
        if method == "temperature":
            value = recorded.get("temperature")
            if not (_is_number(value) and value > 0):
                raise SentimentError(f"temperature must be a number above 0 (got {value!r})")
            return cls(math.log(value), 0.0)
        raise SentimentError(f"method {method!r} is not one this version reads "
                             "(length_temperature, temperature, none)")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _clipped(p) -> np.ndarray:
    return np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)


# Every function below takes a model's probabilities as P(positive) [n] or as [n, K] (one column
# per class). Two columns are read as P(class 1), the arithmetic of the binary models it always
# was, so their figures do not move; three or more use the softmax over log-probabilities.
def _positive(p) -> np.ndarray | None:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 1:
        return p
    return p[:, 1] if p.shape[1] == 2 else None


def predicted_classes(p) -> np.ndarray:
    """The class id each row of probabilities predicts: P(class 1) >= 0.5 for two classes (so a
    tie goes to class 1, as always), the likeliest class for more."""
    binary = _positive(p)
    if binary is not None:
        return (binary >= 0.5).astype(np.int64)
    return np.asarray(p).argmax(axis=1).astype(np.int64)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _multi_nll(labels: np.ndarray, log_q: np.ndarray) -> float:
    return float(-np.mean(np.maximum(log_q[np.arange(len(labels)), labels.astype(int)], math.log(EPS))))


def mean_nll(labels: np.ndarray, p_positive) -> float:
    """The mean negative log-likelihood of ``labels`` under the probabilities (clipped off 0 and 1)."""
    binary = _positive(p_positive)
    if binary is None:
        return _multi_nll(np.asarray(labels), np.log(_clipped(p_positive)))
    p = _clipped(binary)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def reliability_bins(labels, p_positive, bins: int = ECE_BINS) -> list[tuple[float, float, float]]:
    """(share of reviews, mean confidence, accuracy) of each non-empty bin of ``bins``
    equal-width bins of the predicted class's probability: ECE's terms, and the reliability diagram."""
    labels = np.asarray(labels, dtype=np.float64)
    binary = _positive(p_positive)
    if binary is None:
        p = np.asarray(p_positive, dtype=np.float64)
        confidence = p.max(axis=1)
        correct = (p.argmax(axis=1) == labels).astype(np.float64)
    else:
        p = _clipped(binary)
        confidence = np.maximum(p, 1 - p)
        correct = ((p >= 0.5) == (labels == 1)).astype(np.float64)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return [(float(in_bin.mean()), float(confidence[in_bin].mean()), float(correct[in_bin].mean()))
            for in_bin in (which == b for b in range(bins)) if in_bin.any()]


def calibration_metrics(labels, p_positive, bins: int = ECE_BINS) -> dict:
    """ECE (``bins`` equal-width bins of the predicted class's probability), NLL and Brier score
    (for K classes, the sum over classes of the squared error, as Brier defined it)."""
    labels = np.asarray(labels, dtype=np.float64)
    ece = 0.0
    for share, confidence, accuracy in reliability_bins(labels, p_positive, bins):
        ece += share * abs(accuracy - confidence)
    binary = _positive(p_positive)
    if binary is None:
        p = np.asarray(p_positive, dtype=np.float64)
        brier = float(np.mean(((p - np.eye(p.shape[1])[labels.astype(int)]) ** 2).sum(axis=1)))
    else:
        brier = float(np.mean((_clipped(binary) - labels) ** 2))
    return {"ece": float(ece), "nll": mean_nll(labels, p_positive), "brier": brier}


def fit_temperature(labels, p_positive, low: float = 0.25, high: float = 10.0) -> float:
    """The temperature that minimises the NLL of ``labels`` under the probabilities' logits / T.

    The probabilities must come from the uncalibrated network (temperature 1). The NLL is
    unimodal in log T, so a golden-section search over [low, high] finds it.
    """
    labels = np.asarray(labels, dtype=np.float64)
    binary = _positive(p_positive)
    if binary is None:
        z = np.log(_clipped(p_positive))

        def nll(log_t: float) -> float:
            return _multi_nll(labels, _log_softmax(z / np.exp(log_t)))
    else:
        z = logit(binary)

        def nll(log_t: float) -> float:
            return mean_nll(labels, sigmoid(z / np.exp(log_t)))

    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    for _ in range(80):
        if nll(c) < nll(d):
            b, d = d, c
            c = b - ratio * (b - a)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
    return float(np.exp((a + b) / 2))


def _nll_and_gradient(labels: np.ndarray, p, log_n: np.ndarray):
    """NLL of ``labels`` under the probabilities at T(n) = exp(w0 + w1 ln n), and its gradient in w."""
    binary = _positive(p)
    if binary is not None:
        z = logit(binary)

        def binary_nll(w: np.ndarray) -> tuple[float, np.ndarray]:
            u = z * np.exp(-(w[0] + w[1] * log_n))
            q = _clipped(sigmoid(u))
            d = -(q - labels) * u  # d NLL / d log T, per review
            return mean_nll(labels, q), np.array([d.mean(), (d * log_n).mean()])
        return binary_nll
    z = np.log(_clipped(p))
    onehot = np.eye(z.shape[1])[labels.astype(int)]

    def multi_nll(w: np.ndarray) -> tuple[float, np.ndarray]:
        u = z * np.exp(-(w[0] + w[1] * log_n))[:, None]
        log_q = _log_softmax(u)
        d = -((np.exp(log_q) - onehot) * u).sum(axis=1)  # d NLL / d log T, per review
        return _multi_nll(labels, log_q), np.array([d.mean(), (d * log_n).mean()])
    return multi_nll


def fit_length_temperature(labels, p_positive, lengths) -> Calibration:
    """The ``Calibration`` (log_t, slope) that minimises the NLL of ``labels`` under the
    probabilities' logits / T(length); one temperature (slope 0) where the lengths hardly differ."""
    from scipy.optimize import minimize

    labels = np.asarray(labels, dtype=np.float64)
    log_n = np.log(np.maximum(np.asarray(lengths, dtype=np.float64), 1.0))
    one = Calibration(math.log(fit_temperature(labels, p_positive)), 0.0)
    low, high = np.percentile(log_n, [5, 95])
    if high - low < math.log(MIN_LENGTH_SPREAD):
        return one
    found = minimize(_nll_and_gradient(labels, p_positive, log_n), np.array([one.log_t, one.slope]), jac=True,
                     method="L-BFGS-B", bounds=FIT_BOUNDS)
    return Calibration(float(found.x[0]), float(found.x[1]))


def rescale(p_positive, temperature) -> np.ndarray:
    """Probabilities of the network at temperature 1, as they are at ``temperature`` (one, or one per review)."""
    p = np.asarray(p_positive, dtype=np.float64)
    if p.ndim <= 1:
        return sigmoid(logit(p) / temperature)
    t = np.reshape(np.asarray(temperature, dtype=np.float64), (-1, 1))
    if p.shape[1] == 2:
        positive = sigmoid(logit(p[:, 1]) / t[:, 0])
        return np.stack([1.0 - positive, positive], axis=1)
    return np.exp(_log_softmax(np.log(_clipped(p)) / t))


def weighed(p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each row of [n, K] probabilities times the class weights, normalised again. With two
    classes, column 0 stays 1 - column 1, as everywhere."""
    q = np.asarray(p, dtype=np.float64) * weights
    q /= q.sum(axis=1, keepdims=True)
    if q.shape[1] == 2:
        q[:, 0] = 1.0 - q[:, 1]
    return q


def class_shares(labels, k: int) -> np.ndarray:
    """Each of ``k`` classes' share of ``labels`` (class ids)."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.bincount(labels, minlength=k)[:k] / max(len(labels), 1)


# The strengths a balance may take, the smallest first: ties go to the least change.
BALANCE_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def fit_balance(labels, p, shares) -> dict:
    """Choose how strongly rare classes are favoured: the strength (of ``BALANCE_STRENGTHS``)
    whose weights ``shares ** -strength`` give the best macro-F1 on held-out ``labels`` and
    their (calibrated) probabilities ``p`` [n, K]; the ``balance`` record of ``calibration``."""
    from sklearn.metrics import f1_score

    labels, p = np.asarray(labels), np.asarray(p, dtype=np.float64)
    shares = np.maximum(np.asarray(shares, dtype=np.float64), 1e-6)
    ids = list(range(p.shape[1]))

    def macro_f1(weights: np.ndarray) -> float:
        return float(f1_score(labels, predicted_classes(weighed(p, weights)), labels=ids, average="macro",
                              zero_division=0))

    def weights_of(strength: float) -> np.ndarray:
        w = shares ** -strength
        return np.clip(w / w.mean(), 1e-6, 1e6)

    scores = [macro_f1(weights_of(a)) for a in BALANCE_STRENGTHS]
    best = int(np.argmax(scores))
    return {"strength": BALANCE_STRENGTHS[best], "class_shares": [round(float(x), 6) for x in shares],
            "weights": [round(float(w), 6) for w in weights_of(BALANCE_STRENGTHS[best])],
            "chosen_on": f"macro-F1 of {len(labels)} validation reviews",
            "validation_macro_f1_before": round(scores[0], 4), "validation_macro_f1_after": round(scores[best], 4)}


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 4) for k, v in metrics.items()}


def fit(texts: Sequence[str], labels, uncalibrated: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]],
        seed: int) -> dict:
    """Fit the length-aware temperature on held-out ``texts`` (the validation split) and their
    excerpts, and say what it did: the ``calibration`` section of config.json.

    ``uncalibrated(texts)`` gives the network's probabilities ([n, K], or P(positive)) at temperature 1 and the number of
    words it read of each text. With fewer than ``MIN_REVIEWS`` reviews, or one class only,
    nothing is fitted (T = 1) and the record says why."""
    labels = np.asarray(labels)
    if len(labels) < MIN_REVIEWS or len(set(labels.tolist())) < 2:
        return {"method": "none", "n": int(len(labels)),
                "reason": f"{len(labels)} validation reviews{'' if len(set(labels.tolist())) >= 2 else ' of one class'}; "
                          f"a temperature needs at least {MIN_REVIEWS} of two classes or more"}
    short, short_labels = excerpts(texts, labels, seed, EXCERPTS_PER_REVIEW)
    p_reviews, n_reviews = uncalibrated(texts)
    p_short, n_short = uncalibrated(short) if short else (p_reviews[:0], n_reviews[:0])
    fitted = fit_length_temperature(np.r_[labels, short_labels], np.concatenate([p_reviews, p_short]),
                                    np.r_[n_reviews, n_short])
    record = {"method": "length_temperature", "log_t": round(fitted.log_t, 6), "slope": round(fitted.slope, 6),
              "temperature_at": {str(n): round(float(fitted.temperatures([n])[0]), 3) for n in SHOWN_LENGTHS},
              "fitted_on": f"validation reviews and {EXCERPTS_PER_REVIEW} excerpts of 1-{MOST_SENTENCES} "
                           "sentences of each", "seed": seed, "n": int(len(labels)), "n_excerpts": len(short),
              "validation_before": _rounded(calibration_metrics(labels, p_reviews)),
              "validation_after": _rounded(calibration_metrics(
                  labels, rescale(p_reviews, fitted.temperatures(n_reviews))))}
    if short:
        record["excerpts_before"] = _rounded(calibration_metrics(short_labels, p_short))
        record["excerpts_after"] = _rounded(calibration_metrics(short_labels, rescale(p_short, fitted.temperatures(n_short))))
    return record


def describe(record: dict) -> str:
    """One sentence on a ``calibration`` record, for people (the calibrate command, the model card)."""
    method = record.get("method") if isinstance(record, dict) else None
    if method == "length_temperature":
        at = record.get("temperature_at") or {}
        shown = ", ".join(f"{t} at {n} words" for n, t in at.items())
        before, after = record.get("validation_before") or {}, record.get("validation_after") or {}
        text = (f"temperature by length, T = {shown}, fitted on {record.get('n')} validation reviews and "
                f"{record.get('n_excerpts')} excerpts of them (1-{MOST_SENTENCES} sentences); ECE on the reviews "
                f"{before.get('ece')} -> {after.get('ece')}")
        if "excerpts_after" in record:
            text += f", on the excerpts {record['excerpts_before'].get('ece')} -> {record['excerpts_after'].get('ece')}"
        return text
    if method == "temperature":
        return (f"temperature scaling, T = {record.get('temperature')} fitted on {record.get('n')} validation "
                f"reviews (ECE {record.get('ece_before')} -> {record.get('ece_after')})")
    reason = f" ({record['reason']})" if isinstance(record, dict) and record.get("reason") else ""
    return f"none fitted{reason}"


def describe_balance(record: dict) -> str | None:
    """One sentence on a ``calibration`` record's balance, for people; None without one."""
    balance = record.get("balance") if isinstance(record, dict) else None
    if not isinstance(balance, dict):
        return None
    return (f"balanced decisions: each class's probability weighed by its share of the training rows to the power "
            f"-{balance.get('strength')} ({balance.get('chosen_on')}: {balance.get('validation_macro_f1_before')} "
            f"-> {balance.get('validation_macro_f1_after')})")
