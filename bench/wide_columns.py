"""Scoring time against the number of columns: csv files of the same rows, one with a
text column and many small ones, one of the same size with the text column and one other
(the reviews made longer to match). Writes bench/results/wide_columns.json.

    python bench/wide_columns.py [--rows 300] [--columns 1000 2000 4000] [--big]

Each figure is one whole ``python -m sentiment score FILE --out scores.csv`` process;
``startup`` is the same command on a one-row file, and ``net`` figures subtract it.
Reading a row must cost in proportion to its bytes, not to the square of its columns:
``net_s_per_mb`` of a wide file should stay close to the narrow file's of the same size.
``--big`` adds 8,192 rows x 2,001 columns (about 33 MB).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REVIEW = "a great movie, I loved the story and the actors were superb"


def write_wide(path: Path, rows: int, columns: int) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", *(f"c{i}" for i in range(columns - 1))])
        for r in range(rows):
            writer.writerow([REVIEW, *(str((r + i) % 100) for i in range(columns - 1))])


def write_narrow(path: Path, rows: int, size: int) -> None:
    """``rows`` rows of two columns, ``size`` bytes in all: the reviews repeat to fill them."""
    per_row = max(len(REVIEW), size // rows - 8)
    text = (REVIEW + " ") * (per_row // (len(REVIEW) + 1) + 1)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "id"])
        for r in range(rows):
            writer.writerow([text[:per_row], r])


def run(path: Path, model: str, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sentiment", "score", str(path), "--model", model,
                             "--out", str(out), "--precision", "float32"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{path.name}: {result.stderr.strip()}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--columns", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--big", action="store_true", help="add 8,192 rows x 2,001 columns (about 33 MB)")
    parser.add_argument("--model", default=str(ROOT / "models" / "rnn"))
    args = parser.parse_args()
    shapes = [(args.rows, c) for c in args.columns] + ([(8192, 2001)] if args.big else [])
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_wide(tmp / "one.csv", 1, 2)
        startup = run(tmp / "one.csv", args.model, tmp / "out.csv")
        print(f"startup: {startup:.1f} s")
        for rows, columns in shapes:
            for kind in ("wide", "narrow"):
                path = tmp / f"{kind}.csv"
                if kind == "wide":
                    write_wide(path, rows, columns)
                    size = path.stat().st_size
                else:
                    write_narrow(path, rows, size)
                seconds = run(path, args.model, tmp / "out.csv")
                mb = path.stat().st_size / 1e6
                net = max(seconds - startup, 0.0)
                # Each narrow file is the size of the wide file before it.
                figures[f"{kind}_{rows}x{columns}" if kind == "wide" else f"narrow_{rows}x2_as_{columns}"] = {
                    "rows": rows, "columns": columns if kind == "wide" else 2, "mb": round(mb, 2),
                    "seconds": round(seconds, 2), "net_s_per_mb": round(net / mb, 3)}
                print(f"{kind:6} {rows:5} rows x {columns if kind == 'wide' else 2:5} columns, {mb:6.2f} MB: "
                      f"{seconds:7.1f} s ({net / mb:.3f} s/MB after start-up)")
    result = {"command": "python bench/wide_columns.py " + " ".join(sys.argv[1:]), "cpus": os.cpu_count(),
              "model": args.model.replace(str(ROOT) + os.sep, ""), "startup_s": round(startup, 2),
              "figures": figures}
    out = ROOT / "bench" / "results" / "wide_columns.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
