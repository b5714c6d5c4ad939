"""How far IMDB-only training can go on short reviews (docs/experiments.md, "How far IMDB-only training
reaches on short reviews").
Writes bench/results/short_text_ceiling.json.

    python bench/short_text_ceiling.py --data ../shared/imdb/aclImdb_v1.tar.gz --short-text ../shared/rt-polarity/dev.jsonl

On FILE (tuning data: rt-polarity's dev.jsonl, never its test file) it measures
- the share of FILE's words outside the default bundle's vocabulary;
- the linear baseline (sentiment.evaluate.baseline: every word and bigram seen twice, no vocabulary
  limit) fitted on the IMDB training reviews, on sentence excerpts of them
  (sentiment.text.excerpts, 3 per review, the review's label), and on both;
- each shipped bundle (or each in --models-dir), and the mean of their probabilities (an ensemble);
- each of those with the threshold at the median probability instead of 0.5: an oracle
  (it reads FILE's balance) bounding what correcting a lean to one class could give.
Nothing here is trained or tuned on FILE.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sentiment import data as data_module  # noqa: E402
from sentiment.evaluate.baseline import LinearBaseline  # noqa: E402
from sentiment.bundle import SHIPPED_MODELS, default_model_dir, load_bundle, shipped_bundles  # noqa: E402
from sentiment.files import write_text_atomic  # noqa: E402
from sentiment.text import excerpts, words  # noqa: E402


def figures(labels: np.ndarray, p: np.ndarray) -> dict:
    return {"accuracy": float(((p >= 0.5) == labels).mean()), "predicted_positive": float((p >= 0.5).mean()),
            "accuracy_median_threshold": float(((p >= np.median(p)) == labels).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/imdb/aclImdb_v1.tar.gz", help="IMDB source (its train split)")
    parser.add_argument("--short-text", default="../shared/rt-polarity/dev.jsonl", metavar="FILE",
                        help="labelled short reviews (tuning data)")
    parser.add_argument("--models-dir", default=str(SHIPPED_MODELS), metavar="DIR",
                        help="the bundles to measure, one folder each (default: models/)")
    parser.add_argument("--out", default=str(ROOT / "bench/results/short_text_ceiling.json"), metavar="FILE")
    args = parser.parse_args()

    train = data_module.load_source(args.data)["train"]
    texts, labels = train["text"], np.asarray(train["label"])
    short = data_module.load_source(args.short_text)["train"]
    short_texts, short_labels = short["text"], np.asarray(short["label"])

    models_dir = Path(args.models_dir)
    bundles = {folder.name: load_bundle(folder) for folder in shipped_bundles(models_dir)}
    vocabulary = bundles[default_model_dir(models_dir).name].encoder.tokenizer.get_vocab()
    tokens = [w for t in short_texts for w in words(t)]
    results = {"data": args.data, "short_text": args.short_text, "n": len(short_labels),
               "out_of_vocabulary": sum(w not in vocabulary for w in tokens) / len(tokens), "models": {}}
    print(f"words of {args.short_text} outside the vocabulary: {results['out_of_vocabulary']:.1%}", flush=True)

    excerpt_texts, excerpt_labels = excerpts(texts, labels, seed=0, per_review=3)
    fits = {"tfidf+logreg, reviews": (list(texts), labels),
            "tfidf+logreg, excerpts": (excerpt_texts, excerpt_labels),
            "tfidf+logreg, reviews + excerpts": (list(texts) + excerpt_texts,
                                                 np.concatenate([labels, excerpt_labels]))}
    for name, (x, y) in fits.items():
        p = LinearBaseline().fit(x, y).predict_proba(short_texts)[:, 1]
        results["models"][name] = figures(short_labels, p)
        print(name, results["models"][name], flush=True)
    shipped = {}
    for name, bundle in bundles.items():
        shipped[name] = bundle.predict_proba(short_texts)[:, 1]
        results["models"][name] = figures(short_labels, shipped[name])
        print(name, results["models"][name], flush=True)
    ensemble = "mean of " + ", ".join(shipped)
    results["models"][ensemble] = figures(short_labels, np.mean(list(shipped.values()), axis=0))
    print(ensemble, results["models"][ensemble])
    write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
