"""Star ratings from IMDB itself: fine-tune the shipped lstm and bilstm onto the archive's
`rating` column (8 classes: 1-4 and 7-10 stars), beside the TF-IDF baseline.

    python bench/ratings.py --data ../shared/imdb/aclImdb_v1.tar.gz

Each model is `python train.py --finetune-from models/KIND --data DATA --label-column rating
--train-subset N --test-subset M --epochs E --out RUNS/KIND`, the command a user runs: the
shipped model's embedding, encoder and tokenizer, a new head of 8 classes. The baseline (TF-IDF
of words and bigrams, multinomial logistic regression) is fitted twice: on the very rows the
models trained on (the same seeded subset, less the same validation rows), and on the whole
train split; all are measured on the same seeded subset of the test split.

Balanced decisions: each finished model is copied to RUNS/KIND-balanced and given class
weights by `python -m sentiment calibrate --model RUNS/KIND-balanced --balanced` (chosen for
macro-F1 on the run's own validation split; the same as `train.py --balanced` gives at the
end of training), and the baseline is fitted again with class weights that balance the
classes (scikit-learn's `class_weight="balanced"`), so both sides get the same help. The JSON
(bench/results/ratings.json) holds accuracy, macro-F1, mean absolute error (in stars) and the
share within one class of the truth, with the commands that made them. The fine-tunings run at once,
one thread each, while the baselines are fitted; a finished run folder is reused.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHOWN = ("accuracy", "macro_f1", "mae", "within_one", "ece")


def summary(metrics: dict) -> dict:
    return {k: round(metrics[k], 4) for k in SHOWN if metrics.get(k) is not None}


def shown(path) -> str:
    """A path as the JSON shows it: relative to the checkout, as the commands are typed there."""
    return os.path.relpath(path, ROOT) if Path(path).is_absolute() else str(path)


def finetune_command(kind: str, args, runs: Path) -> list[str]:
    return [sys.executable, "train.py", "--finetune-from", f"models/{kind}", "--data", shown(args.data),
            "--label-column", "rating", "--train-subset", str(args.train_subset),
            "--test-subset", str(args.test_subset), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--seed", str(args.seed), "--out", shown(runs / kind)]


def finished(folder: Path) -> bool:
    config_file = folder / "config.json"
    return config_file.is_file() and bool(json.loads(config_file.read_text()).get("trained", {}).get("finished"))


def start(kind: str, args, runs: Path) -> subprocess.Popen | None:
    """train.py for ``kind``, started in the background (None: a finished run is reused)."""
    if finished(runs / kind):
        return None
    runs.mkdir(parents=True, exist_ok=True)
    # One thread per training: several CPU-bound processes of two threads each on a few cores
    # wait on each other (a step took ten times as long with two threads as with one, here).
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    log = open(runs / f"{kind}.log", "w")
    return subprocess.Popen(finetune_command(kind, args, runs), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def figures(kind: str, args, runs: Path, folder: str | None = None) -> dict:
    config = json.loads((runs / (folder or kind) / "config.json").read_text())
    return {"command": shlex.join(["python", *finetune_command(kind, args, runs)[1:]]), "labels": config["labels"],
            "wall_time_s": config["trained"]["wall_time_s"], "best_epoch": config["trained"]["best_epoch"],
            "test": summary(config["metrics"]["test"]), "validation": summary(config["metrics"]["validation"])}


def balanced(kind: str, args, runs: Path) -> dict:
    """The finished model with class weights for balanced decisions, in a copy of its folder."""
    import shutil

    folder = runs / f"{kind}-balanced"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(runs / kind, folder, ignore=shutil.ignore_patterns("checkpoint.pt"))
    command = [sys.executable, "-m", "sentiment", "calibrate", "--model", shown(folder), "--balanced",
               "--data", shown(args.data)]
    subprocess.run(command, cwd=ROOT, check=True)
    result = figures(kind, args, runs, folder.name)
    result["command"] += " && " + shlex.join(["python", *command[1:]])
    result["balance"] = json.loads((folder / "config.json").read_text())["calibration"]["balance"]
    return result


def baselines(args) -> dict:
    """The TF-IDF baseline on the models' own training rows, and on the whole train split."""
    from sentiment.data import classes, load_source, split_validation
    from sentiment.evaluate.baseline import LinearBaseline
    from sentiment.metrics import classification_metrics

    splits = load_source(args.data, label_column="rating")
    names = classes(splits)
    # The rows train.py trains on: the seeded subset, less the seeded validation share.
    subset = splits["train"].shuffle(seed=args.seed).select(range(args.train_subset))
    same_rows, _ = split_validation(subset, 0.1, args.seed)
    test = splits["test"].shuffle(seed=args.seed).select(range(args.test_subset))
    out = {}
    for name, rows, weigh in (("tfidf+logreg, the models' training rows", same_rows, False),
                              ("tfidf+logreg balanced, the models' training rows", same_rows, True),
                              ("tfidf+logreg, the whole train split", splits["train"], False)):
        started = time.time()
        model = LinearBaseline(names, balanced=weigh).fit(rows["text"], rows["label"])
        metrics = classification_metrics(test["label"], model.predict_proba(test["text"]), names)
        out[name] = {"train_rows": len(rows), "test": summary(metrics), "seconds": round(time.time() - started, 1)}
        print(f"{name}: {out[name]}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "imdb" / "aclImdb_v1.tar.gz"))
    parser.add_argument("--kinds", default="lstm,bilstm")
    parser.add_argument("--train-subset", type=int, default=4000)
    parser.add_argument("--test-subset", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "ratings"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ratings.json"))
    args = parser.parse_args()
    runs = Path(args.runs)
    result = {"command": shlex.join(["python", "bench/ratings.py", *sys.argv[1:]]),
              "data": shown(args.data), "label_column": "rating",
              "note": "test figures on a seeded subset of the IMDB test split; mae in stars; within_one: the "
                      "share predicted at most one class away (4 and 7 stars are neighbours)",
              "models": {}, "baselines": {}}
    out = Path(args.out)
    # The fine-tunings run in the background while the baselines are fitted here.
    running = {kind: start(kind, args, runs) for kind in args.kinds.split(",")}
    result["baselines"] = baselines(args)
    for kind, process in running.items():
        if process is not None and process.wait() != 0:
            raise SystemExit(f"{kind}: train.py failed; its output is in {runs / kind}.log")
        result["models"][kind] = figures(kind, args, runs)
        print(f"{kind}: {result['models'][kind]['test']}", flush=True)
        result["models"][f"{kind}, balanced"] = balanced(kind, args, runs)
        print(f"{kind}, balanced: {result['models'][f'{kind}, balanced']['test']}", flush=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
