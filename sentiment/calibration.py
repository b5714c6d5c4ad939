"""Honest confidence: calibration measures, and temperature scaling fitted after training.

A network trained with cross-entropy is often overconfident. Temperature scaling (Guo et
al., ICML 2017) divides its logits by one number T, fitted by minimising the negative
log-likelihood on held-out reviews (the validation split): labels never change (T > 0
keeps every argmax), probabilities move towards or away from 0.5. The bundle records T
in ``config.json`` under ``calibration``, and every probability the package gives uses it.

ECE (expected calibration error): the reviews are put in 15 equal-width bins of the
predicted class's probability; ECE is the average over bins, weighted by their share of
reviews, of |accuracy - mean confidence| in the bin.
"""
from __future__ import annotations

import numpy as np

ECE_BINS = 15
EPS = 1e-7
# Fewer held-out reviews than this give a temperature that fits their noise: a handful
# that the model gets all right pull it towards 0, every probability to 0 or 1.
MIN_REVIEWS = 200


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def calibration_metrics(labels, p_positive, bins: int = ECE_BINS) -> dict:
    """ECE (``bins`` equal-width bins of the predicted class's probability), NLL and Brier score."""
    labels = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(p_positive, dtype=np.float64), EPS, 1 - EPS)
    confidence = np.maximum(p, 1 - p)
    correct = ((p >= 0.5) == (labels == 1)).astype(np.float64)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    nll = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    brier = float(np.mean((p - labels) ** 2))
    return {"ece": float(ece), "nll": nll, "brier": brier}


def fit_temperature(labels, p_positive, low: float = 0.25, high: float = 10.0) -> float:
    """The temperature that minimises the NLL of ``labels`` under ``p_positive``'s logits / T.

    ``p_positive`` must come from the uncalibrated network (temperature 1). The NLL is
    unimodal in log T, so a golden-section search over [low, high] finds it.
    """
    labels = np.asarray(labels, dtype=np.float64)
    z = logit(p_positive)

    def nll(log_t: float) -> float:
        q = np.clip(sigmoid(z / np.exp(log_t)), EPS, 1 - EPS)
        return float(-np.mean(labels * np.log(q) + (1 - labels) * np.log(1 - q)))

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


def rescale(p_positive, temperature: float) -> np.ndarray:
    """Probabilities of the network at temperature 1, as they are at ``temperature``."""
    return sigmoid(logit(p_positive) / temperature)


def record(labels, p_positive) -> dict:
    """Fit a temperature on held-out ``labels`` and say what it did: the ``calibration`` of config.json.

    With fewer than ``MIN_REVIEWS`` reviews, or one class only, nothing is fitted (temperature 1)
    and the record says why."""
    labels = np.asarray(labels)
    if len(labels) < MIN_REVIEWS or len(set(labels.tolist())) < 2:
        return {"method": "none", "n": int(len(labels)),
                "reason": f"{len(labels)} validation reviews{'' if len(set(labels.tolist())) == 2 else ' of one class'}; "
                          f"a temperature needs at least {MIN_REVIEWS} of both classes"}
    temperature = fit_temperature(labels, p_positive)
    before = calibration_metrics(labels, p_positive)
    after = calibration_metrics(labels, rescale(p_positive, temperature))
    return {"method": "temperature", "temperature": round(temperature, 4), "fitted_on": "validation",
            "n": int(len(labels)), "ece_before": round(before["ece"], 4), "ece_after": round(after["ece"], 4),
            "nll_before": round(before["nll"], 4), "nll_after": round(after["nll"], 4)}
