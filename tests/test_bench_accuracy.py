"""bench/accuracy.py tabulates finished runs: pooled over run folders, chosen on validation."""
import json

import pytest
import os
import statistics
from pathlib import Path

import shutil

from conftest import ROOT, run_cli, write_archive, write_stanford_folder, write_table

FAST = "--epochs 2 --embedding-dim 16 --hidden-size 16 --max-len 32 --batch-size 16 --vocab-size 100 --lr 0.01"


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
    done = run_cli("bench/accuracy.py", "--only-finished", "--no-baseline", "--models", "rnn",
                   "--seeds", "0,1,2", "--runs", f"{cpu},{gpu}", "--out", out)
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


@pytest.mark.slow
def test_jobs_train_side_by_side_each_with_its_log_and_a_failure_is_named(tmp_path):
    archive = write_archive(write_stanford_folder(tmp_path, n_train=200, n_test=60), tmp_path / "imdb.tar.gz")
    runs, out = tmp_path / "runs", tmp_path / "accuracy.json"
    (runs / "lstm-s2").mkdir(parents=True)
    (runs / "lstm-s2" / "checkpoint.pt").write_bytes(b"not a checkpoint")  # a resume that must fail
    # Run from another folder with relative paths, as a user may: train.py runs in the repository.
    # No thread count from the caller: the script shares the cores out between the 3 runs.
    done = run_cli(ROOT / "bench" / "accuracy.py", "--data", "imdb.tar.gz", "--models", "lstm", "--seeds", "0,1,2",
                   "--jobs", "3", "--runs", "runs", "--extra", FAST, "--no-baseline", "--out", out, cwd=tmp_path,
                   env_extra={"OMP_NUM_THREADS": None})
    assert done.returncode != 0
    assert "runs/lstm-s2: train.py exited with status" in done.stderr
    assert "its output is in runs/lstm-s2.log" in done.stderr
    assert "checkpoint" in (runs / "lstm-s2.log").read_text()
    lstm = json.loads(out.read_text())["models"]["lstm"]  # the two good runs are tabulated all the same
    assert lstm["seeds"] == [0, 1]
    for seed in (0, 1):
        config = json.loads((runs / f"lstm-s{seed}" / "config.json").read_text())
        assert config["trained"]["finished"] and config["training"]["seed"] == seed
        assert config["trained"]["torch_threads"] == max(1, (os.cpu_count() or 1) // 3)
        # The recorded command names the data as seen from the repository, where train.py runs.
        assert f"--data {os.path.relpath(archive, ROOT)} " in config["command"]
        assert lstm["test_accuracy"][seed] == config["metrics"]["test"]["accuracy"]
        assert "test metrics of the best epoch" in (runs / f"lstm-s{seed}.log").read_text()
    assert "validation loss" not in done.stdout  # the progress of runs side by side goes to their logs


@pytest.mark.slow
def test_shipped_bundles_are_scored_on_short_text_once_and_it_is_recorded(tiny_model, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "lstm")
    short = write_table(tmp_path / "short.jsonl", [{"text": "superb", "label": 1}, {"text": "awful", "label": 0},
                                                   {"text": "great film", "label": 1}, {"text": "dull", "label": 1}])
    out = tmp_path / "accuracy.json"
    args = ("bench/accuracy.py", "--only-finished", "--no-baseline", "--models", "", "--short-text", short,
            "--models-dir", models, "--out", out)
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "measured on" in first.stdout
    recorded = json.loads((models / "lstm" / "config.json").read_text())["metrics"]["short_text"]
    assert recorded["n"] == 4 and recorded["data_fingerprint"] and "ece" in recorded
    figures = json.loads(out.read_text())["shipped"]["lstm"]
    assert figures["short_text_accuracy"] == recorded["accuracy"] and figures["default"]
    row = next(line for line in out.with_suffix(".md").read_text().splitlines() if "lstm` (default)" in line)
    assert f"{recorded['accuracy']:.2%}" in row
    assert "short reviews: " in (models / "lstm" / "README.md").read_text()
    # Read once: the second run takes the recorded figures; a new calibration measures again.
    again = run_cli(*args)
    assert again.returncode == 0 and "measured on" not in again.stdout
    config = json.loads((models / "lstm" / "config.json").read_text())
    config["calibration"] = {"method": "temperature", "temperature": 2.0}
    (models / "lstm" / "config.json").write_text(json.dumps(config))
    third = run_cli(*args)
    assert third.returncode == 0 and "measured on" in third.stdout


@pytest.mark.slow
def test_short_text_ceiling_measures_the_bundles_as_evaluate_does(tiny_model, stanford_archive, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "lstm")
    short = write_table(tmp_path / "short.jsonl", [{"text": "superb zzqxv", "label": 1}, {"text": "awful", "label": 0},
                                                   {"text": "great film", "label": 1}, {"text": "dull", "label": 1}])
    out, evaluated = tmp_path / "ceiling.json", tmp_path / "evaluate.json"
    done = run_cli("bench/short_text_ceiling.py", "--data", stanford_archive, "--short-text", short,
                   "--models-dir", models, "--out", out)
    assert done.returncode == 0, done.stderr
    assert run_cli("-m", "sentiment", "evaluate", "--data", short, "--model", models / "lstm",
                   "--json", evaluated).returncode == 0
    ceiling = json.loads(out.read_text())
    assert ceiling["n"] == 4
    assert ceiling["out_of_vocabulary"] == 1 / 6  # "zzqxv" is no word of the training reviews
    lstm = ceiling["models"]["lstm"]
    assert lstm["accuracy"] == json.loads(evaluated.read_text())["metrics"]["lstm"]["accuracy"]
    assert ceiling["models"]["mean of lstm"]["accuracy"] == lstm["accuracy"]  # the mean of one model is that model
    for name in ("tfidf+logreg, reviews", "tfidf+logreg, excerpts", "tfidf+logreg, reviews + excerpts"):
        assert 0 <= ceiling["models"][name]["accuracy"] <= 1
