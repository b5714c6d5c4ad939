"""Accuracy of the four models over several seeds, the linear baseline, and published figures.
Writes bench/results/accuracy.json and bench/results/accuracy.md; --readme puts the table
into README.md, --ship copies each model's best-on-validation run into models/.

    python bench/accuracy.py --data ../shared/imdb/aclImdb_v1.tar.gz --seeds 0,1,2 --device cuda --ship --readme

Each run is `python train.py --model KIND --seed S --out RUNS/KIND-sS [extra options]`,
the command a user runs; a finished run folder is reused, so the script can continue in
a later session. Choices (which seed to ship) use validation accuracy only; the test
split is read once per run, by train.py, after training.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PUBLISHED = [
    ("LSTM from scratch, full-length reviews (Dai & Le 2015)", 0.865),
    ("LSTM pretrained as a sequence autoencoder / LM on IMDB (Dai & Le 2015)", 0.924),
    ("Word vectors + bag of words (Maas et al. 2011)", 0.8889),
]
START, END = "<!-- accuracy:start -->", "<!-- accuracy:end -->"


def run_dir(runs: Path, kind: str, seed: int) -> Path:
    return runs / f"{kind}-s{seed}"


def finished(folder: Path) -> dict | None:
    config = folder / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        if data.get("trained", {}).get("finished") and "test" in data.get("metrics", {}):
            return data
    return None


def train(kind: str, seed: int, args, runs: Path) -> dict:
    folder = run_dir(runs, kind, seed)
    done = finished(folder)
    if done:
        print(f"{folder}: finished earlier, reused")
        return done
    command = [sys.executable, "train.py", "--model", kind, "--seed", str(seed), "--data", args.data,
               "--device", args.device, "--out", str(folder), "--weights-dtype", "float16", *shlex.split(args.extra)]
    if (folder / "checkpoint.pt").is_file():
        command = [sys.executable, "train.py", "--resume", str(folder)]
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)
    return finished(folder)


def baseline(data: str) -> dict:
    from sentiment.baseline import LinearBaseline
    from sentiment.data import load_source
    from sentiment.metrics import classification_metrics

    splits = load_source(data)
    model = LinearBaseline().fit(splits["train"]["text"], splits["train"]["label"])
    return classification_metrics(splits["test"]["label"], model.predict_proba(splits["test"]["text"])[:, 1])


def markdown(results: dict) -> str:
    lines = ["| model | test accuracy (mean ± sd) | seeds | best-on-validation run: test accuracy | "
             "training time per run |", "|---|---|---|---|---|"]
    for kind, r in results["models"].items():
        accs = r["test_accuracy"]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {kind} | {statistics.mean(accs):.2%} ± {sd:.2%} | {len(accs)} | "
                     f"{r['shipped_test_accuracy']:.2%} | {statistics.mean(r['wall_time_s']) / 60:.1f} min on "
                     f"{r['device']} |")
    if "baseline" in results:
        lines.append(f"| TF-IDF 1-2 grams + logistic regression (scikit-learn) | "
                     f"{results['baseline']['accuracy']:.2%} | | | |")
    for name, acc in PUBLISHED:
        lines.append(f"| {name} (published) | {acc:.1%} | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "imdb" / "aclImdb_v1.tar.gz"))
    parser.add_argument("--models", default="rnncell,rnn,lstm,bilstm", help="comma-separated; '' for none")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--extra", default="", help="more train.py options, quoted")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "accuracy"))
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--ship", action="store_true", help="copy each model's best-on-validation run to models/")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md between markers")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "accuracy.json"))
    args = parser.parse_args()

    runs = Path(args.runs)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    results: dict = {"command": shlex.join(["python", "bench/accuracy.py", *sys.argv[1:]]), "models": {}}
    for kind in [k for k in args.models.split(",") if k]:
        configs = [train(kind, seed, args, runs) for seed in seeds]
        best = max(range(len(seeds)), key=lambda i: configs[i]["metrics"]["validation"]["accuracy"])
        results["models"][kind] = {
            "seeds": seeds,
            "validation_accuracy": [c["metrics"]["validation"]["accuracy"] for c in configs],
            "test_accuracy": [c["metrics"]["test"]["accuracy"] for c in configs],
            "wall_time_s": [c["trained"]["wall_time_s"] for c in configs],
            "device": configs[0]["device"],
            "command": configs[0]["command"],
            "shipped_seed": seeds[best],
            "shipped_test_accuracy": configs[best]["metrics"]["test"]["accuracy"],
        }
        if args.ship:
            target = ROOT / "models" / kind
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for name in ("config.json", "tokenizer.json", "model.safetensors", "history.json", "curves.png"):
                shutil.copy2(run_dir(runs, kind, seeds[best]) / name, target / name)
    if not args.no_baseline:
        results["baseline"] = baseline(args.data)
        print(f"baseline test accuracy {results['baseline']['accuracy']:.4f}")
    table = markdown(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)
    if args.readme:
        readme = (ROOT / "README.md").read_text()
        if START not in readme or END not in readme:
            sys.exit(f"README.md has no {START} ... {END} markers")
        head, rest = readme.split(START, 1)
        (ROOT / "README.md").write_text(f"{head}{START}\n{table}{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    main()
