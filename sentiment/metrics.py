"""Classification metrics (scikit-learn), calibration (ECE, NLL, Brier) and the table they are printed as.

scikit-learn takes seconds to import, so it loads when metrics are first computed (or when
:func:`load_scikit_learn` asks for it): a command that stops early, on a mistake in its
input or at ``--help``, does not wait for it."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .calibration import calibration_metrics, predicted_classes
from .data import LABELS

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "macro_f1", "roc_auc", "ece", "nll", "brier", "mae",
                "within_one")


def load_scikit_learn():
    """scikit-learn's metrics module, imported on first use."""
    from sklearn import metrics

    return metrics


def numeric_classes(classes: Sequence[str]) -> np.ndarray | None:
    """The classes as numbers when every one is a number (ratings: ordered labels), else None."""
    try:
        return np.array([float(c) for c in classes])
    except (TypeError, ValueError):
        return None


def classification_metrics(labels, probabilities, classes: Sequence[str] | None = None) -> dict:
    """Accuracy, precision, recall, F1, ROC-AUC, the confusion matrix and calibration.

    ``probabilities``: [n, K], or P(class 1) [n] of a two-class model. With two classes,
    precision, recall, F1 and ROC-AUC are those of class 1 (positive), as they always were;
    with more they are macro averages (ROC-AUC one-vs-rest) and ``per_class`` has each
    class's. Ordered classes (numbers, such as ratings) add ``mae`` (mean absolute error, in
    the labels' own units) and ``within_one`` (the share predicted at most one class away).
    """
    skm = load_scikit_learn()
    labels = np.asarray(labels, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    k = 2 if p.ndim == 1 else p.shape[1]
    classes = list(classes) if classes is not None else (list(LABELS) if k == 2 else [str(i) for i in range(k)])
    predicted = predicted_classes(p)
    ids = list(range(k))
    precision, recall, f1, support = skm.precision_recall_fscore_support(labels, predicted, labels=ids,
                                                                         zero_division=0)
    result = {"n": int(len(labels)), "accuracy": float(skm.accuracy_score(labels, predicted))}
    if k == 2:
        positive = p if p.ndim == 1 else p[:, 1]
        result.update({
            "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
            "recall": float(skm.recall_score(labels, predicted, zero_division=0)),
            "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
            # ROC-AUC is undefined when only one class is present.
            "roc_auc": float(skm.roc_auc_score(labels, positive)) if len(set(labels.tolist())) == 2 else None})
    else:
        present = [c for c in ids if 0 < (labels == c).sum() < len(labels)]
        aucs = [skm.roc_auc_score(labels == c, p[:, c]) for c in present]
        result.update({"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean()),
                       "roc_auc": float(np.mean(aucs)) if aucs else None})
    result.update({
        "macro_f1": float(f1.mean()),
        "confusion_matrix": skm.confusion_matrix(labels, predicted, labels=ids).tolist(),
        "per_class": {name: {"precision": float(a), "recall": float(b), "f1": float(c), "support": int(d)}
                      for name, a, b, c, d in zip(classes, precision, recall, f1, support)},
        **calibration_metrics(labels, p),
    })
    values = numeric_classes(classes)
    if values is not None and k > 2:
        result["mae"] = float(np.abs(values[predicted] - values[labels]).mean())
        result["within_one"] = float((np.abs(predicted - labels) <= 1).mean())
    return result


def format_table(results: dict[str, dict], title: str = "", classes: Sequence[str] | None = None) -> str:
    """Models side by side: one column per model, one row per metric, then confusion matrices."""
    names = list(results)
    width = max([12] + [len(n) for n in names])
    lines = [title] if title else []
    lines.append(f"{'metric':<10} " + " ".join(f"{n:>{width}}" for n in names))
    for metric in ("n",) + METRIC_NAMES:
        if all(metric not in results[n] for n in names):
            continue
        cells = []
        for n in names:
            value = results[n].get(metric)
            cells.append(f"{'n/a' if value is None else (value if metric == 'n' else f'{value:.4f}'):>{width}}")
        lines.append(f"{metric:<10} " + " ".join(cells))
    for n in names:
        matrix = results[n]["confusion_matrix"]
        lines.append(f"confusion matrix{'' if len(names) == 1 else ' of ' + n} (rows true, columns predicted):")
        shown = list(classes) if classes is not None else list(results[n].get("per_class") or LABELS)
        if shown == list(LABELS):
            (tn, fp), (fn, tp) = matrix
            lines.append(f"{'':>16}{'pred neg':>10}{'pred pos':>10}")
            lines.append(f"{'actual negative':>16}{tn:>10}{fp:>10}")
            lines.append(f"{'actual positive':>16}{fn:>10}{tp:>10}")
            continue
        cell = max([8] + [len(c) + 1 for c in shown])
        lines.append(f"{'':>{cell}}" + "".join(f"{c:>{cell}}" for c in shown))
        lines.extend(f"{c:>{cell}}" + "".join(f"{v:>{cell}}" for v in row) for c, row in zip(shown, matrix))
    return "\n".join(lines)
