"""Accuracy of the four models over several seeds, the linear baseline, and published figures.
Writes bench/results/accuracy.json and bench/results/accuracy.md; --readme puts the table
into docs/experiments.md (the flag kept its name from when the table lived in README.md), --ship copies each model's best-on-validation run into models/.

    python bench/accuracy.py --data ../shared/imdb/aclImdb_v1.tar.gz --seeds 0,1,2 --device cuda --ship --readme
    python bench/accuracy.py --pretrain --models lstm,bilstm --readme   # the pretrained column

Each run is `python train.py --model KIND --seed S --out RUNS/KIND-sS [extra options]`
(`RUNS/KIND-lm-sS` with `--pretrain lm`), the command a user runs; a finished run folder
is reused, so the script can be stopped and run again to continue, and `--only-finished` makes
the table from the runs that exist without training more. `--runs A,B` pools the finished
runs of several folders (say CPU runs and GPU runs): every finished run counts, a seed
run twice counts twice, and new runs go to A. `--jobs N` trains N runs at once (a GPU
has room for several of these small models), each logging to `RUNS/KIND-sS.log`; a run that
fails is named at the end and the others are tabulated. Results of other models and
variants already in the results file are kept. Choices (which seed to ship) use
validation accuracy only; the test split is read once per run, by train.py, after training.

`--short-text FILE` (rt-polarity's test.jsonl) adds the table of the shipped bundles in
models/: IMDB test accuracy and ECE (as config.json records them) beside accuracy and ECE
on the short reviews of FILE. Each bundle is scored on FILE once: the figures go into its
config.json (`metrics.short_text`, with the file's fingerprint and the calibration they
were measured with) and model card, and are read from there while neither changes. With
--readme that table also goes into README.md.

    python bench/accuracy.py --only-finished --no-baseline --short-text ../shared/rt-polarity/test.jsonl --readme
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The accuracy targets (IMDB test, 3-seed mean): from scratch, and with LM pretraining.
TARGETS = {"rnncell": 0.88, "rnn": 0.88, "lstm": 0.905, "bilstm": 0.91, "lstm+lm": 0.92, "bilstm+lm": 0.925}
PUBLISHED = [
    ("LSTM from scratch, full-length reviews (Dai & Le 2015)", 0.865),
    ("LSTM pretrained as a sequence autoencoder / LM on IMDB (Dai & Le 2015)", 0.924),
    ("Word vectors + bag of words (Maas et al. 2011)", 0.8889),
]
START, END = "<!-- accuracy:start -->", "<!-- accuracy:end -->"
SHIPPED_START, SHIPPED_END = "<!-- shipped:start -->", "<!-- shipped:end -->"
# The targets for the shipped bundles: accuracy on short reviews (the default
# model higher), and ECE on IMDB test and on the short reviews.
SHORT_TARGET, SHORT_TARGET_DEFAULT, ECE_TARGET = 0.78, 0.80, 0.03


def run_dir(runs: Path, kind: str, seed: int, pretrain: bool = False) -> Path:
    return runs / f"{kind}{'-lm' if pretrain else ''}-s{seed}"


def for_train(path: Path) -> str:
    """A path as train.py, run in the repository, is given it: relative to the repository, so
    the command a bundle records reads the same on every machine (../shared/..., runs/...)."""
    return os.path.relpath(path.resolve(), ROOT)


def shown(path: Path) -> str:
    """A path as the results file records it: relative to the repository where it lies inside."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def finished(folder: Path) -> dict | None:
    config = folder / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        if data.get("trained", {}).get("finished") and "test" in data.get("metrics", {}):
            return data
    return None


def train(kind: str, seed: int, args, runs: list[Path]) -> list[tuple[Path, dict]]:
    """The finished runs of this model and seed in any of the runs folders (replicates, say a
    CPU and a GPU run, all count); if there are none, train one into the first folder."""
    done = [(folder, config) for folder in (run_dir(r, kind, seed, args.pretrain) for r in runs)
            if (config := finished(folder)) is not None]
    for folder, _ in done:
        print(f"{folder}: finished earlier, reused", flush=True)
    if done:
        return done
    folder = run_dir(runs[0], kind, seed, args.pretrain)
    if args.only_finished:
        print(f"{folder}: not finished, left out", flush=True)
        return []
    data = for_train(Path(args.data)) if Path(args.data).exists() else args.data  # else a dataset id
    command = [sys.executable, "train.py", "--model", kind, "--seed", str(seed), "--data", data,
               "--device", args.device, "--out", for_train(folder), "--weights-dtype", "float16",
               *(["--pretrain", "lm"] if args.pretrain else []), *shlex.split(args.extra)]
    if (folder / "checkpoint.pt").is_file():
        command = [sys.executable, "train.py", "--resume", for_train(folder)]
    # Runs side by side would interleave their progress bars: each writes its own log.
    log = folder.with_name(folder.name + ".log") if args.jobs > 1 else None
    print("$", shlex.join(command), *([f">> {log}"] if log else []), flush=True)
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") if log else contextlib.nullcontext() as output:
        code = subprocess.run(command, cwd=ROOT, env=child_env(args.jobs), stdout=output,
                              stderr=subprocess.STDOUT if log else None).returncode
    if code != 0:
        raise RuntimeError(f"{folder}: train.py exited with status {code}" + (f"; its output is in {log}" if log else ""))
    print(f"{folder}: finished", flush=True)
    config = finished(folder)
    return [] if config is None else [(folder, config)]


def child_env(jobs: int) -> dict:
    """The environment of one training: with several at once, the cores shared out between them.

    Each torch process otherwise starts a thread per core, and on 2 cores two trainings of
    two threads each crawl (threads that wait on each other while the other run holds the
    core): beside two one-thread trainings, three small trainings took 121 s with 2 threads
    and 32 s with 1.
    OMP_NUM_THREADS set by the caller wins."""
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def baseline(data: str) -> dict:
    from sentiment.evaluate.baseline import LinearBaseline
    from sentiment.data import load_source
    from sentiment.metrics import classification_metrics

    splits = load_source(data)
    model = LinearBaseline().fit(splits["train"]["text"], splits["train"]["label"])
    return classification_metrics(splits["test"]["label"], model.predict_proba(splits["test"]["text"])[:, 1])


def short_text(bundle: Path, config: dict, data: Path) -> dict:
    """The bundle's accuracy and calibration on the labelled short reviews of ``data``: as its
    config.json (``config``) records them when measured on this file with this calibration, else
    measured now (the file read once per bundle) and recorded there and in its model card."""
    from sentiment.bundle import rewrite_config
    from sentiment.data import fingerprint
    from sentiment.evaluate.evaluation import EvaluateConfig, evaluate

    key = {"data": shown(data), "data_fingerprint": fingerprint(data), "calibration": config.get("calibration")}
    recorded = (config.get("metrics") or {}).get("short_text")
    if isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in key.items()):
        return recorded
    (metrics,) = evaluate(EvaluateConfig(data=str(data), models=[str(bundle)])).values()
    measured = {**metrics, **key}
    config.setdefault("metrics", {})["short_text"] = measured
    rewrite_config(bundle, config)
    print(f"{bundle}: measured on {shown(data)}: accuracy {measured['accuracy']:.2%}, ECE {measured['ece']:.4f}",
          flush=True)
    return measured


def shipped(data: Path, models: Path) -> dict:
    """IMDB test and short-text figures of each bundle in ``models`` (models/)."""
    from sentiment.bundle import default_model_dir, read_config, shipped_bundles

    default = default_model_dir(models).name
    figures = {}
    for bundle in shipped_bundles(models):
        kind, config = bundle.name, read_config(bundle)
        test = config.get("metrics", {}).get("test", {})
        short = short_text(bundle, config, data)
        figures[kind] = {"bundle": shown(bundle), "default": kind == default, "imdb_test_accuracy": test.get("accuracy"),
                         "imdb_test_ece": test.get("ece"), "short_text_accuracy": short["accuracy"],
                         "short_text_ece": short["ece"], "short_text_data": short["data"]}
    return figures


def shipped_markdown(figures: dict) -> str:
    lines = ["| model | IMDB test accuracy | IMDB test ECE | short reviews: accuracy | short reviews: ECE |",
             "|---|---|---|---|---|"]
    for kind, f in figures.items():
        target = SHORT_TARGET_DEFAULT if f["default"] else SHORT_TARGET
        cells = [f"{f['imdb_test_accuracy']:.2%}" if f["imdb_test_accuracy"] is not None else "not measured",
                 mark(f["imdb_test_ece"], ECE_TARGET, higher=False),
                 mark(f["short_text_accuracy"], target, higher=True),
                 mark(f["short_text_ece"], ECE_TARGET, higher=False)]
        lines.append(f"| `{f['bundle']}`{' (default)' if f['default'] else ''} | " + " | ".join(cells) + " |")
    data = next(iter(figures.values()))["short_text_data"] if figures else "?"
    lines.append("")
    lines.append(f"Short reviews: {data}. Targets: short-review accuracy at least "
                 f"{SHORT_TARGET:.0%} ({SHORT_TARGET_DEFAULT:.0%} for the default), ECE at most {ECE_TARGET} on both; "
                 "a figure that misses its target says so.")
    return "\n".join(lines) + "\n"


def mark(value, target: float, higher: bool) -> str:
    """A figure, with the target it misses (if it does)."""
    if value is None:
        return "not measured"
    text = f"{value:.2%}" if higher else f"{value:.4f}"
    met = value >= target if higher else value <= target
    return text if met else f"{text} (target {target:.0%})" if higher else f"{text} (target {target})"


def put_between(page: Path, start: str, end: str, table: str) -> None:
    text = page.read_text()
    if start not in text or end not in text:
        sys.exit(f"{page} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    page.write_text(f"{head}{start}\n{table}{end}{rest.split(end, 1)[1]}")


def markdown(results: dict) -> str:
    lines = ["| model | test accuracy (mean ± sd) | target | seeds | best-on-validation run: test accuracy | "
             "training time per run |", "|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        accs = r["test_accuracy"]
        sd = f"{statistics.stdev(accs):.2%}" if len(accs) > 1 else "n/a (1 seed)"
        target = TARGETS.get(name)
        mean = statistics.mean(accs)
        verdict = "" if target is None else f"{target:.1%} ({'met' if mean >= target else f'{(target - mean) * 100:.3f} pt short'})"
        label = name.replace("+lm", " + LM pretraining")
        devices = r["devices"]
        times = "; ".join(
            f"{statistics.mean(t for t, d in zip(r['wall_time_s'], devices) if d == device) / 60:.1f} min on {device}"
            for device in dict.fromkeys(devices))
        mixed = len(set(devices)) > 1  # then each seed says where it ran
        seeds = ", ".join(f"{seed} ({device.split()[0]})" if mixed else str(seed)
                          for seed, device in zip(r["seeds"], devices))
        lines.append(f"| {label} | {mean:.2%} ± {sd} | {verdict} | "
                     f"{seeds} | {r['shipped_test_accuracy']:.2%} | {times} |")
    if "baseline" in results:
        lines.append(f"| TF-IDF 1-2 grams + logistic regression (scikit-learn) | "
                     f"{results['baseline']['accuracy']:.2%} | | | | |")
    for name, acc in PUBLISHED:
        lines.append(f"| {name} (published) | {acc:.1%} | | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "imdb" / "aclImdb_v1.tar.gz"))
    parser.add_argument("--models", default="rnncell,rnn,lstm,bilstm", help="comma-separated; '' for none")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--extra", default="", help="more train.py options, quoted")
    parser.add_argument("--pretrain", action="store_true", help="runs with --pretrain lm (the second column)")
    parser.add_argument("--only-finished", action="store_true",
                        help="train nothing: tabulate the finished runs (seeds without one are left out)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "accuracy"),
                        help="run folders' parent; several, comma-separated, pool their finished runs "
                             "(new runs go to the first)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="trainings at once (each then logs to RUNS/KIND-sS.log); on a big GPU a few "
                             "side by side use it better, but each is slower: 14 at once on one H100 "
                             "made a bilstm epoch take 95 s")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--ship", action="store_true", help="copy each model's best-on-validation run to models/")
    parser.add_argument("--readme", action="store_true", help="write the table into docs/experiments.md between markers")
    parser.add_argument("--short-text", metavar="FILE",
                        help="labelled short reviews (rt-polarity's test.jsonl): adds the shipped bundles' table")
    parser.add_argument("--models-dir", default=str(ROOT / "models"), metavar="DIR",
                        help="where the shipped bundles are (--ship copies into models/ whatever this says)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "accuracy.json"))
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1 (got {args.jobs})")

    runs = [Path(r) for r in args.runs.split(",") if r]
    out = Path(args.out)
    # Entries of other models and variants stay, each with the command that produced it.
    results: dict = json.loads(out.read_text()) if out.is_file() else {}
    results.setdefault("models", {})
    if "command" in results:  # the file's older layout: one command for everything in it
        results.setdefault("baseline_command", results.pop("command"))
    command = shlex.join(["python", "bench/accuracy.py", *sys.argv[1:]])
    kinds = [k for k in args.models.split(",") if k]
    seed_list = [int(s) for s in args.seeds.split(",") if s]
    pool = ThreadPoolExecutor(args.jobs)  # one job: the runs one after another, in order
    jobs = {(kind, seed): pool.submit(train, kind, seed, args, runs) for kind in kinds for seed in seed_list}
    try:
        wait(jobs.values())
    except KeyboardInterrupt:  # the running train.py got the Ctrl-C too and saves its checkpoint
        pool.shutdown(wait=True, cancel_futures=True)
        sys.exit("interrupted: runs not started were left out; run the same command again to continue")
    pool.shutdown()
    failed = []
    for kind in kinds:
        found = []
        for seed in seed_list:
            try:
                found += [(seed, folder, config) for folder, config in jobs[kind, seed].result()]
            except (RuntimeError, OSError) as error:  # the other runs still count
                failed.append(str(error))
        if not found:
            continue
        seeds, folders, configs = zip(*found)
        best = max(range(len(found)), key=lambda i: configs[i]["metrics"]["validation"]["accuracy"])
        results["models"][f"{kind}+lm" if args.pretrain else kind] = {
            "results_command": command,
            "seeds": list(seeds),
            "runs": [shown(folder) for folder in folders],
            "devices": [c["device"] for c in configs],
            "validation_accuracy": [c["metrics"]["validation"]["accuracy"] for c in configs],
            "test_accuracy": [c["metrics"]["test"]["accuracy"] for c in configs],
            "wall_time_s": [c["trained"]["wall_time_s"] for c in configs],
            "command": configs[0]["command"],
            "shipped_seed": seeds[best],
            "shipped_run": shown(folders[best]),
            "shipped_test_accuracy": configs[best]["metrics"]["test"]["accuracy"],
        }
        if args.ship:
            target = ROOT / "models" / kind
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for name in ("config.json", "tokenizer.json", "model.safetensors", "history.json", "curves.png"):
                shutil.copy2(folders[best] / name, target / name)
            from sentiment.card import write_card

            write_card(target)
    if not args.no_baseline:
        results["baseline"] = baseline(args.data)
        results["baseline_command"] = command
        print(f"baseline test accuracy {results['baseline']['accuracy']:.4f}")
    results["models"] = {name: results["models"][name] for name in sorted(
        results["models"], key=lambda n: (n.endswith("+lm"), list(TARGETS).index(n) if n in TARGETS else 99))}
    table = markdown(results)
    if args.short_text:
        results["shipped"] = shipped(Path(args.short_text), Path(args.models_dir))
        results["shipped_command"] = command
    shipped_table = shipped_markdown(results["shipped"]) if results.get("shipped") else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + (f"\n{shipped_table}" if shipped_table else ""))
    print(table)
    print(shipped_table)
    if args.readme:
        put_between(ROOT / "docs" / "experiments.md", START, END, table)
        if shipped_table:
            put_between(ROOT / "README.md", SHIPPED_START, SHIPPED_END, shipped_table)
    if failed:
        sys.exit("runs that failed (left out of the table):\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
