"""Start-up cost of a one-line score against `import torch` alone. Writes bench/results/startup.json.

    python bench/startup.py [--runs 7]

Each figure is the median wall time of --runs fresh processes, alternated so both see the
same machine: ``python -c "import torch"`` and ``python -m sentiment score ONE_LINE.txt``
(the default model, CSV to a file). The difference is what the command adds to torch:
its own imports, loading the model, scoring one line, writing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "startup.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        one = Path(work) / "one.txt"
        one.write_text("A moving, beautifully acted film.\n")
        torch_only = [sys.executable, "-c", "import torch"]
        score = [sys.executable, "-m", "sentiment", "score", str(one), "--out", str(Path(work) / "out.csv")]
        wall(score)  # first run warms the file cache
        times = {"import_torch": [], "score_one_line": []}
        for _ in range(args.runs):
            times["import_torch"].append(wall(torch_only))
            times["score_one_line"].append(wall(score))
    medians = {k: round(statistics.median(v), 3) for k, v in times.items()}
    result = {"command": " ".join(["python", "bench/startup.py", *sys.argv[1:]]), "runs": args.runs,
              "median_s": medians, "score_minus_torch_s": round(medians["score_one_line"] - medians["import_torch"], 3),
              "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
