"""Classification metrics (scikit-learn), calibration (ECE, NLL, Brier) and the table they are printed as."""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from .calibration import calibration_metrics

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "ece", "nll", "brier")


def classification_metrics(labels, p_positive, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1 (positive class), ROC-AUC and the confusion matrix."""
    labels = np.asarray(labels, dtype=int)
    p_positive = np.asarray(p_positive, dtype=float)
    predicted = (p_positive >= threshold).astype(int)
    result = {
        "n": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
        "recall": float(skm.recall_score(labels, predicted, zero_division=0)),
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        # ROC-AUC is undefined when only one class is present.
        "roc_auc": float(skm.roc_auc_score(labels, p_positive)) if len(set(labels.tolist())) == 2 else None,
        "confusion_matrix": skm.confusion_matrix(labels, predicted, labels=[0, 1]).tolist(),
        **calibration_metrics(labels, p_positive),
    }
    return result


def format_table(results: dict[str, dict], title: str = "") -> str:
    """Models side by side: one column per model, one row per metric, then confusion matrices."""
    names = list(results)
    width = max([12] + [len(n) for n in names])
    lines = [title] if title else []
    lines.append(f"{'metric':<10} " + " ".join(f"{n:>{width}}" for n in names))
    for metric in ("n",) + METRIC_NAMES:
        cells = []
        for n in names:
            value = results[n].get(metric)
            cells.append(f"{'n/a' if value is None else (value if metric == 'n' else f'{value:.4f}'):>{width}}")
        lines.append(f"{metric:<10} " + " ".join(cells))
    for n in names:
        (tn, fp), (fn, tp) = results[n]["confusion_matrix"]
        lines.append(f"confusion matrix{'' if len(names) == 1 else ' of ' + n} (rows true, columns predicted):")
        lines.append(f"{'':>16}{'pred neg':>10}{'pred pos':>10}")
        lines.append(f"{'actual negative':>16}{tn:>10}{fp:>10}")
        lines.append(f"{'actual positive':>16}{fn:>10}{tp:>10}")
    return "\n".join(lines)
