"""``sentiment evaluate``: models (and the linear baseline) side by side on labelled reviews."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import data as data_module
from ..errors import SentimentError
from ..files import check_file_target, check_folder_target, write_text_atomic
from ..options import check_whole
from ..metrics import classification_metrics, format_table
from ..predict import PRECISIONS


@dataclass
class EvaluateConfig:
    """Options of ``sentiment evaluate``."""

    data: str = field(default=data_module.DEFAULT_DATASET, metadata={
        "help": "labelled reviews: a dataset id, the Stanford archive or folder, or a csv/tsv/jsonl/parquet file",
        "metavar": "SRC"})
    models: list[str] = field(default_factory=list, metadata={"cli": False})
    split: str | None = field(default=None, metadata={
        "help": "split to evaluate (default: test, or the whole file for a table source)", "metavar": "NAME"})
    text_column: str = field(default="text", metadata={"help": "text column of table sources", "metavar": "NAME"})
    label_column: str = field(default="label", metadata={
        "help": "label column of table sources, or `rating` of the Stanford archive; its values must be the "
                "models' classes", "metavar": "NAME"})
    baseline: bool = field(default=False, metadata={
        "help": "add TF-IDF (1-2 grams) + logistic regression, trained on the source's train split"})
    plot: str | None = field(default=None, metadata={
        "help": "write confusion-matrix, ROC-curve and reliability-diagram PNGs into this folder", "metavar": "DIR"})
    json: str | None = field(default=None, metadata={"help": "write the metrics to this JSON file",
                                                     "metavar": "FILE"})
    precision: str = field(default="float32", metadata={
        "help": "float32 reproduces the metrics recorded at training exactly; auto uses bfloat16 where fast",
        "choices": PRECISIONS})
    batch_size: int = field(default=256, metadata={"help": "reviews per forward pass", "metavar": "N"})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder", "metavar": "DIR"})

    def __post_init__(self):
        check_whole(self, ("batch_size",))


def evaluate(config: EvaluateConfig) -> dict[str, dict]:
    """Metrics of each model (and the baseline) on the chosen split; prints the table."""
    from ..bundle import default_model_dir, load_bundle, model_names

    # Outputs are checked before the work, so an unwritable one never costs an evaluation.
    if config.json:
        check_file_target(config.json, "--json")
    if config.plot:
        check_folder_target(config.plot, "--plot")
    model_dirs = config.models or [str(default_model_dir())]
    classifiers = [load_bundle(d, precision=config.precision) for d in model_dirs]  # fail on a bad model before reading data
    classes = classifiers[0].labels
    for path, clf in zip(model_dirs, classifiers):
        if clf.labels != classes:
            raise SentimentError(f"{path}: its classes ({', '.join(clf.labels)}) are not those of {model_dirs[0]} "
                                 f"({', '.join(classes)}); models compared side by side need the same classes")
    # The data's labels are read as the models' classes: a row with another label stops at that row.
    splits = data_module.load_source(config.data, text_column=config.text_column, labels=classes,
                                     label_column=config.label_column, cache_dir=config.cache_dir)
    split = config.split or ("test" if "test" in splits else "train")
    if split not in splits:
        raise SentimentError(f"{config.data}: no {split!r} split (has: {', '.join(splits)})")
    rows = splits[split]
    labels = np.asarray(rows["label"])
    if (labels < 0).any():
        raise SentimentError(f"{config.data}: the {split} split has unlabelled rows; choose a labelled split")
    texts = rows["text"]
    note = data_module.undecodable_report(splits)
    if note:
        print(note, file=sys.stderr)
    results: dict[str, dict] = {}
    probabilities: dict[str, np.ndarray] = {}
    for name, clf in zip(model_names(model_dirs), classifiers):
        p = clf.predict_proba(texts, config.batch_size)
        probabilities[name] = p
        results[name] = classification_metrics(labels, p, classes)
    if config.baseline:
        if split == "train" or "train" not in splits:
            raise SentimentError("--baseline trains on the source's train split, so it needs a source with a "
                                 "separate split to evaluate (e.g. the IMDB archive, whose test split is used)")
        from .baseline import LinearBaseline

        train = splits["train"]
        baseline = LinearBaseline(classes).fit(train["text"], train["label"])
        probabilities["tfidf+logreg"] = baseline.predict_proba(texts)
        results["tfidf+logreg"] = classification_metrics(labels, probabilities["tfidf+logreg"], classes)
    print(format_table(results, title=f"{config.data} [{split}]: {len(labels)} reviews", classes=classes))
    if config.plot:
        plot_results(results, probabilities, labels, Path(config.plot), classes)
        print(f"plots written to {config.plot}")
    if config.json:
        payload = {"data": str(config.data), "split": split, "data_fingerprint": data_module.fingerprint(config.data),
                   "labels": list(classes),
                   "models": {n: {"path": p} for n, p in zip(model_names(model_dirs), model_dirs)}, "metrics": results}
        write_text_atomic(config.json, json.dumps(payload, indent=2) + "\n")
    return results


def plot_results(results: dict, probabilities: dict, labels: np.ndarray, folder: Path,
                 classes=data_module.LABELS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 5))
    # The curve of the last class against the rest: class 1 (positive) of two, the top rating of ratings.
    last = len(classes) - 1
    for name, p in probabilities.items():
        RocCurveDisplay.from_predictions(labels == last, p[:, last], name=name, ax=ax)
    ax.plot([0, 1], [0, 1], "k--", alpha=0.4)
    ax.set_title("ROC curve" if len(classes) == 2 else f"ROC curve of {classes[last]} against the rest")
    fig.tight_layout()
    fig.savefig(folder / "roc.png", dpi=100)
    plt.close(fig)
    _reliability(plt, probabilities, labels, folder / "reliability.png", 1 / len(classes))
    for name in results:
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ConfusionMatrixDisplay(np.asarray(results[name]["confusion_matrix"]),
                               display_labels=list(classes)).plot(ax=ax, colorbar=False)
        ax.set_title(f"{name}: accuracy {results[name]['accuracy']:.4f}")
        fig.tight_layout()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        fig.savefig(folder / f"confusion-{safe}.png", dpi=100)
        plt.close(fig)


def _reliability(plt, probabilities: dict, labels: np.ndarray, path: Path, least: float) -> None:
    """Accuracy against confidence per bin of the predicted class's probability (the bins of ECE)."""
    from ..calibration import ECE_BINS, reliability_bins

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([least, 1], [least, 1], "k--", alpha=0.4, label="perfectly calibrated")
    for name, p in probabilities.items():
        _, confidence, accuracy = zip(*reliability_bins(labels, p))
        ax.plot(confidence, accuracy, "o-", label=name)
    ax.set(xlabel="confidence (probability of the predicted class)", ylabel="accuracy",
           title=f"reliability ({ECE_BINS} equal-width bins)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
