"""Short text from your own labels: the shipped IMDB models fine-tuned on a few thousand labelled
snippets, beside the same kinds trained on those snippets alone and the TF-IDF baseline
(docs/experiments.md, "Fine-tuning on your own data"). Writes bench/results/transfer.json.

    python bench/transfer.py --data ../shared/rt-polarity/dev.jsonl --test ../shared/rt-polarity/test.jsonl

Every model is trained on --data only, with the plain command a user types (the recipes'
own defaults; each chooses its best epoch and its calibration on a validation split carved
from --data), and reads --test once, at the end. A run folder that already holds a finished
bundle is measured, not trained again (its seconds are those recorded when it was trained).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sentiment import data as data_module  # noqa: E402
from sentiment.bundle import load_bundle  # noqa: E402
from sentiment.evaluate.baseline import LinearBaseline  # noqa: E402
from sentiment.files import write_text_atomic  # noqa: E402
from sentiment.metrics import classification_metrics  # noqa: E402

# name -> the train.py options of that model (--data and --out are added)
MODELS = {
    "bilstm fine-tuned from models/bilstm": ["--finetune-from", "models/bilstm"],
    "lstm fine-tuned from models/lstm": ["--finetune-from", "models/lstm"],
    "bilstm from scratch": ["--model", "bilstm"],
    "lstm from scratch": ["--model", "lstm"],
}
ENSEMBLE = "mean of the two fine-tuned"
KEPT = ("n", "accuracy", "f1", "roc_auc", "ece", "nll")


def folder_name(name: str) -> str:
    return name.split(" ")[0] + ("-finetuned" if "fine-tuned" in name else "-scratch")


def finished(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("trained", {}).get("finished", False)


def train(name: str, options: list[str], data: str, folder: Path) -> dict:
    command = ["python", "train.py", *options, "--data", data, "--out", str(folder)]
    folder = ROOT / folder
    if not finished(folder):
        print(f"{name}: {shlex.join(command)}", flush=True)
        subprocess.run([sys.executable, *command[1:]], cwd=ROOT, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    config = json.loads((folder / "config.json").read_text())
    # The command the bundle records is the one that trained it (an earlier run moved here keeps its own --out).
    return {"command": config["command"], "seconds": config["trained"]["wall_time_s"],
            "best_epoch": config["trained"]["best_epoch"], "epochs_run": config["trained"]["epochs_run"],
            "torch_threads": config["trained"]["torch_threads"],
            "validation": {k: config["metrics"]["validation"][k] for k in KEPT}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/rt-polarity/dev.jsonl", metavar="FILE",
                        help="the labelled rows every model learns from")
    parser.add_argument("--test", default="../shared/rt-polarity/test.jsonl", metavar="FILE",
                        help="the labelled rows each final model is measured on, once")
    parser.add_argument("--runs", default="runs/transfer", metavar="DIR",
                        help="where the runs go (relative to the repository, as --data is)")
    parser.add_argument("--only", nargs="+", choices=list(MODELS), metavar="NAME",
                        help="train and measure only these models (default: all, and the baseline)")
    parser.add_argument("--measure-only", action="store_true",
                        help="train nothing: measure the models whose runs have finished")
    parser.add_argument("--out", default=str(ROOT / "bench/results/transfer.json"), metavar="FILE")
    args = parser.parse_args()
    # The paths given, like the commands recorded, are the repository's: train.py runs there.
    os.chdir(ROOT)
    out = Path(args.out)
    results = json.loads(out.read_text()) if args.only and out.is_file() else {}
    results.update({"data": args.data, "data_fingerprint": data_module.fingerprint(args.data), "test": args.test,
                    "test_fingerprint": data_module.fingerprint(args.test)})
    results.setdefault("models", {})
    test = data_module.load_source(args.test)["train"]
    test_texts, test_labels = list(test["text"]), np.asarray(test["label"])
    p_positive = {}
    for name in args.only or MODELS:
        folder = Path(args.runs) / folder_name(name)
        if args.measure_only and not finished(folder):
            print(f"{name}: no finished run in {folder}, left out", flush=True)
            continue
        record = train(name, MODELS[name], args.data, folder)
        p_positive[name] = load_bundle(ROOT / folder).predict_proba(test_texts)[:, 1]
        record["test"] = {k: classification_metrics(test_labels, p_positive[name])[k] for k in KEPT}
        results["models"][name] = record
        print(name, json.dumps(record["test"]), flush=True)
    tuned = [name for name in MODELS if "fine-tuned" in name]
    if all(name in p_positive for name in tuned):
        metrics = classification_metrics(test_labels, np.mean([p_positive[name] for name in tuned], axis=0))
        results["models"][ENSEMBLE] = {"command": " and ".join(results["models"][n]["command"] for n in tuned),
                                       "seconds": sum(results["models"][n]["seconds"] for n in tuned),
                                       "test": {k: metrics[k] for k in KEPT}}
    if not args.only:
        train_rows = data_module.load_source(args.data)["train"]
        tick = time.time()
        baseline = LinearBaseline().fit(train_rows["text"], train_rows["label"])
        seconds = time.time() - tick
        metrics = classification_metrics(test_labels, baseline.predict_proba(test_texts)[:, 1])
        results["models"]["TF-IDF baseline"] = {
            "command": "sentiment.evaluate.baseline.LinearBaseline().fit(every row of --data)",
            "seconds": round(seconds, 1), "test": {k: metrics[k] for k in KEPT}}
    write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
