"""Scoring on Ray against the single-process scorer, on one 100,000-line file.
Writes bench/results/ray_score.json.

    python bench/ray_score.py [--model DIR] [--lines 100000]

The file is IMDB test reviews, one per line, repeated to ``--lines``. Every figure is a
whole command as a user runs it, timed from start to exit:

- ``single``: ``python -m sentiment score FILE --out scores.parquet``.
- ``ray_1`` / ``ray_2``: ``python -m sentiment score FILE --engine ray --workers N --out DIR``,
  which starts a local Ray cluster for the run and stops it at the end.
- ``ray_startup``: the same Ray command on a one-line file: starting the cluster and the
  workers, loading the model, writing; the fixed cost of a run.

reviews/s is lines / wall time; ``net`` takes the one-line run's time off first, the
rate once the cluster is up.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def reviews(archive: Path, n: int) -> list[str]:
    texts = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and "/test/" in member.name and member.name.endswith(".txt") and "/unsup/" not in member.name:
                texts.append(tar.extractfile(member).read().decode("utf-8", "replace").replace("\n", " "))
    return [texts[i % len(texts)] for i in range(n)]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "imdb" / "aclImdb_v1.tar.gz"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ray_score.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    try:
        big, one = work / "reviews.txt", work / "one.txt"
        texts = reviews(Path(args.data), args.lines)
        big.write_text("\n".join(texts) + "\n")
        one.write_text(texts[0] + "\n")
        model = ["--model", args.model] if args.model else []
        score = [sys.executable, "-m", "sentiment", "score"]
        figures = {}
        seconds = timed([*score, str(big), *model, "--out", str(work / "single.parquet")])
        figures["single"] = {"seconds": round(seconds, 1), "reviews_per_s": round(args.lines / seconds, 1)}
        startup = timed([*score, str(one), *model, "--engine", "ray", "--workers", "2", "--out", str(work / "one")])
        figures["ray_startup"] = {"seconds": round(startup, 1)}
        for workers in (1, 2):
            out = work / f"ray{workers}"
            seconds = timed([*score, str(big), *model, "--engine", "ray", "--workers", str(workers),
                             "--out", str(out)])
            figures[f"ray_{workers}"] = {"seconds": round(seconds, 1),
                                         "reviews_per_s": round(args.lines / seconds, 1),
                                         "net_reviews_per_s": round(args.lines / max(seconds - startup, 1e-9), 1)}
        for name in ("ray_1", "ray_2"):
            figures[name]["share_of_single"] = round(figures[name]["reviews_per_s"] / figures["single"]["reviews_per_s"], 3)
        result = {"command": " ".join(["python", "bench/ray_score.py", *sys.argv[1:]]), "lines": args.lines,
                  "cpus": os.cpu_count(), "model": args.model or "default (models/)", "figures": figures}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
