"""Inference speed: reviews/s of every model on the IMDB test split, against a naive loop
and the machine's float32 matrix-multiply ceiling. Writes bench/results/score.json.

    python bench/score.py --data ../shared/imdb/aclImdb_v1.tar.gz

``cli_*`` figures time ``python -m sentiment score`` as a whole process (start-up included)
on the same reviews written one per line, to csv and to parquet, beside the in-process rate.
Each model is measured in a fresh process (so peak memory is its own), on all 25,000
test reviews through ``Classifier.predict_proba``, the path ``sentiment score`` uses. The
naive loop is the tutorial ``predict``: one review at a time through tokenizer and model.
Useful GFLOP/s counts the recurrent and linear work of real tokens only, not padding.
The scorer's default precision (``auto``: bfloat16 on CPUs with AVX512-BF16 or AMX) is
timed and compared label by label with float32, which is timed too; bfloat16 can beat
the float32 matrix-multiply ceiling, and the JSON says which precision ran.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def matmul_ceiling(size: int = 2048, repeats: int = 10) -> float:
    """Best float32 GFLOP/s of a large square matrix multiply on this machine."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def useful_flops(config: dict, lengths) -> float:
    """Multiply-adds x2 of the recurrent layers and the head, over real tokens only."""
    m = config["model"]
    e, h, layers = m["embedding_dim"], m["hidden_size"], m["num_layers"]
    dirs = 2 if m["kind"] == "bilstm" else 1
    gates = 1 if m["kind"] in ("rnn", "rnncell") else 4
    per_token = 0
    for layer in range(layers):
        inputs = e if layer == 0 else h * dirs
        per_token += dirs * 2 * gates * h * (inputs + h)
    tokens = float(sum(int(n) for n in lengths))
    return tokens * per_token + len(lengths) * 2 * (3 * h * dirs) * 2


def measure_model(model_dir: str, data: str, naive_n: int, repeats: int) -> dict:
    """Every timing is the best of ``repeats`` runs: this shared machine's speed wanders by up to 30%."""
    import numpy as np
    import torch

    from sentiment import load_bundle
    from sentiment.data import load_source

    texts = load_source(data)["test"]["text"]
    timings = {}
    probabilities = {}
    for precision in ("float32", "auto"):
        clf = load_bundle(model_dir, precision=precision)
        clf.predict_proba(texts[:256])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            probabilities[precision] = clf.predict_proba(texts)[:, 1]
            best = min(best, time.perf_counter() - start)
        timings[precision] = (best, clf.precision)
    seconds, fast_precision = timings["auto"]
    proba = probabilities["float32"]
    clf = load_bundle(model_dir)
    lengths = clf.encoder.encode(texts).lengths
    flops = useful_flops(clf.config, lengths)

    # The tutorial way: one review at a time, tokenizer and model each call.
    model, tokenizer = clf.model, clf.encoder.tokenizer
    naive_texts = texts[:naive_n]
    naive = np.empty(len(naive_texts))
    naive_seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            for i, text in enumerate(naive_texts):
                ids = tokenizer.encode(text).ids[-clf.encoder.max_len:] or [1]
                logits = model(torch.tensor([ids]), torch.tensor([len(ids)]))
                naive[i] = torch.softmax(logits, -1)[0, 1].item()
        naive_seconds = min(naive_seconds, time.perf_counter() - start)
    agree = float(np.mean((naive >= 0.5) == (proba[:naive_n] >= 0.5)))
    cli = measure_cli(model_dir, texts, repeats)
    float32_seconds = timings["float32"][0]
    return {
        "path": os.path.relpath(model_dir, ROOT), "kind": clf.config["model"]["kind"], "reviews": len(texts),
        "precision": fast_precision, "seconds": round(seconds, 3), "reviews_per_s": round(len(texts) / seconds, 1),
        "useful_gflop": round(flops / 1e9, 2), "useful_gflops_per_s": round(flops / seconds / 1e9, 2),
        "float32_seconds": round(float32_seconds, 3),
        "float32_reviews_per_s": round(len(texts) / float32_seconds, 1),
        "float32_useful_gflops_per_s": round(flops / float32_seconds / 1e9, 2),
        "label_agreement_with_float32": float(np.mean((probabilities["auto"] >= 0.5) == (proba >= 0.5))),
        "max_abs_p_difference_from_float32": float(np.abs(probabilities["auto"] - proba).max()),
        "repeats": repeats, "naive_reviews": len(naive_texts), "naive_reviews_per_s": round(len(naive_texts) / naive_seconds, 1),
        "speedup_vs_naive": round((len(texts) / seconds) / (len(naive_texts) / naive_seconds), 2),
        "naive_label_agreement": agree,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **{f"cli_{fmt}_seconds": round(s, 3) for fmt, s in cli.items()},
        **{f"cli_{fmt}_reviews_per_s": round(len(texts) / s, 1) for fmt, s in cli.items()},
        **{f"cli_{fmt}_share_of_in_process": round(seconds / s, 3) for fmt, s in cli.items()},
    }


def measure_cli(model_dir: str, texts: list[str], repeats: int) -> dict[str, float]:
    """Seconds of ``python -m sentiment score reviews.txt --out scores.FMT`` as a whole process
    (start-up included), the way a user runs it, on the same reviews, one per line."""
    import tempfile

    best = {}
    with tempfile.TemporaryDirectory() as work:
        reviews = Path(work) / "reviews.txt"
        reviews.write_text("".join(t.replace("\r", " ").replace("\n", " ") + "\n" for t in texts))
        for fmt in ("csv", "parquet"):
            best[fmt] = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "sentiment", "score", str(reviews), "--model", model_dir,
                                "--out", str(Path(work) / f"scores.{fmt}")], cwd=ROOT, check=True, capture_output=True)
                best[fmt] = min(best[fmt], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "imdb" / "aclImdb_v1.tar.gz"))
    parser.add_argument("--model", dest="models", action="append", default=[],
                        help="bundle folder (repeatable; default: every model in models/)")
    parser.add_argument("--naive-n", type=int, default=2000, help="reviews timed through the naive loop")
    parser.add_argument("--repeats", type=int, default=2, help="timings are the best of this many runs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "score.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_model(args.one, args.data, args.naive_n, args.repeats)))
        return
    import torch

    models = args.models or sorted(str(p.parent) for p in (ROOT / "models").glob("*/config.json"))
    if not models:
        sys.exit("no models: pass --model DIR or train into models/")
    ceiling = matmul_ceiling()
    results = {}
    for model in models:
        proc = subprocess.run([sys.executable, __file__, "--one", model, "--data", args.data,
                               "--naive-n", str(args.naive_n), "--repeats", str(args.repeats)],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{model}: {proc.stderr.strip().splitlines()[-1]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["useful_fraction_of_ceiling"] = round(result["useful_gflops_per_s"] / ceiling, 3)
        result["float32_useful_fraction_of_ceiling"] = round(result["float32_useful_gflops_per_s"] / ceiling, 3)
        results[Path(model).name] = result
        print(f"{Path(model).name:>8}: {result['reviews_per_s']:8.1f} reviews/s in {result['precision']} "
              f"({result['speedup_vs_naive']:.1f}x naive {result['naive_reviews_per_s']:.1f}/s; "
              f"float32 {result['float32_reviews_per_s']:.1f}/s), "
              f"{result['useful_gflops_per_s']:.1f} useful GFLOP/s = "
              f"{result['useful_fraction_of_ceiling']:.0%} of the fp32 ceiling {ceiling:.1f} "
              f"(float32: {result['float32_useful_fraction_of_ceiling']:.0%}); labels agree with float32 on "
              f"{result['label_agreement_with_float32']:.2%}; peak {result['peak_rss_mb']:.0f} MB")
    payload = {
        "command": " ".join(["python", "bench/score.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine(), "device": "cpu"},
        "matmul_fp32_gflops_per_s": round(ceiling, 1),
        "models": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
