"""bench/accuracy.py tabulates finished runs: pooled over run folders, chosen on validation."""
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(folder: Path, device: str, validation: float, test: float, minutes: float, finished: bool = True) -> None:
    folder.mkdir(parents=True)
    metrics = {"validation": {"accuracy": validation}}
    if finished:
        metrics["test"] = {"accuracy": test}
    (folder / "config.json").write_text(json.dumps({
        "command": f"python train.py --out {folder}", "device": device, "metrics": metrics,
        "trained": {"finished": finished, "wall_time_s": minutes * 60}}))


def test_runs_of_several_folders_are_pooled_and_the_best_on_validation_is_named(tmp_path):
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    _run(cpu / "rnn-s0", "cpu", 0.897, 0.8766, 9.5)
    _run(gpu / "rnn-s0", "cuda", 0.892, 0.8748, 7.0)
    _run(gpu / "rnn-s1", "cuda", 0.889, 0.8757, 7.0)
    _run(gpu / "rnn-s2", "cuda", 0.899, 0.8700, 7.0, finished=False)  # cut short: left out
    out = tmp_path / "accuracy.json"
    done = subprocess.run(
        [sys.executable, "bench/accuracy.py", "--only-finished", "--no-baseline", "--models", "rnn",
         "--seeds", "0,1,2", "--runs", f"{cpu},{gpu}", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rnn = json.loads(out.read_text())["models"]["rnn"]
    assert rnn["seeds"] == [0, 0, 1]
    assert rnn["devices"] == ["cpu", "cuda", "cuda"]
    assert rnn["test_accuracy"] == [0.8766, 0.8748, 0.8757]
    assert rnn["shipped_run"] == str(cpu / "rnn-s0")  # highest validation accuracy, not highest test
    assert f"{gpu / 'rnn-s2'}: not finished" not in done.stdout  # seed 2 has no finished run anywhere
    assert "rnn-s2: not finished, left out" in done.stdout
    table = out.with_suffix(".md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| rnn "))
    mean = statistics.mean(rnn["test_accuracy"])
    assert f"{mean:.2%} ± {statistics.stdev(rnn['test_accuracy']):.2%}" in row
    assert "0 (cpu), 0 (cuda), 1 (cuda)" in row
    assert "9.5 min on cpu; 7.0 min on cuda" in row
