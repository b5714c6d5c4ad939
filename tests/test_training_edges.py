"""Training at its edges, as a user meets them: data with no words or two rows, a test set of
one class, options changed on --resume, a full disk, odd json text, Ctrl-C at start-up, and the
folder a run leaves when it stops before its first checkpoint."""
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, make_reviews, run_cli, write_table

TINY = ["--model", "rnn", "--embedding-dim", "8", "--hidden-size", "8", "--max-len", "16", "--batch-size", "8",
        "--vocab-size", "50", "--lr", "0.01", "--ema", "0", "--adversarial", "0", "--epochs", "1"]


def _reviews(path, n=60, seed=0):
    return write_table(path, [{"text": text, "label": label} for text, label in make_reviews(n, seed)])


def _error_lines(result):
    """The error lines of a run that failed as a user's mistake should: status 2, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _config(run):
    return json.loads((run / "config.json").read_text())


@pytest.mark.slow
def test_training_data_without_words_is_refused_before_anything_is_written(tmp_path):
    data = write_table(tmp_path / "empty.jsonl", [{"text": "" if i % 4 else " !? ", "label": i % 2}
                                                  for i in range(200)])
    out = tmp_path / "run"
    line = _error_lines(run_cli("train.py", "--data", data, "--out", out, *TINY))
    assert f"{data}: no words to learn: 200 of 200 training rows are empty or hold no words" in line
    assert "negative: 100 of 100, positive: 100 of 100" in line
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_some_rows_without_words_are_counted_and_training_goes_on(tmp_path):
    rows = [{"text": text, "label": label} for text, label in make_reviews(60)]
    rows[:5] = [{"text": "", "label": i % 2} for i in range(5)]
    result = run_cli("train.py", "--data", write_table(tmp_path / "r.jsonl", rows), "--out", tmp_path / "run", *TINY)
    assert result.returncode == 0, result.stderr
    assert "note: 5 of 60 training rows are empty or hold no words (negative: 3 of 30, positive: 2 of 30)" \
        in result.stderr


@pytest.mark.slow
def test_options_changed_on_resume_are_refused_and_the_device_may_change(tmp_path):
    run = tmp_path / "run"
    assert run_cli("train.py", "--data", _reviews(tmp_path / "r.jsonl"), "--out", run, *TINY).returncode == 0
    before = _config(run)
    line = _error_lines(run_cli("train.py", "--resume", run, "--epochs", "3", "--lr=0.5", "--seed", "0"))
    assert (f"--resume {run} continues the run as it was started, with its recorded options: "
            "--epochs was 1, now 3; --lr was 0.01, now 0.5 (only --device and --cache-dir may change") in line
    assert _config(run) == before
    # Options typed as they were recorded, and where the run computes, are accepted.
    result = run_cli("train.py", "--resume", run, "--device", "cpu", "--epochs", "1", "--model", "rnn")
    assert result.returncode == 0, result.stderr
    assert _config(run)["metrics"] == before["metrics"]


@pytest.mark.slow
def test_two_rows_and_a_test_set_of_one_class_end_with_the_bundle_and_its_metrics(tmp_path):
    data = write_table(tmp_path / "two.jsonl", [{"text": "great fun, loved it", "label": 1},
                                                {"text": "awful and boring", "label": 0}])
    test = write_table(tmp_path / "test.jsonl", [{"text": "loved it", "label": 1}] * 5)
    run = tmp_path / "run"
    result = run_cli("train.py", "--data", data, "--test-data", test, "--out", run, *TINY)
    assert result.returncode == 0, result.stderr
    metrics = _config(run)["metrics"]
    assert metrics["test"]["n"] == 5 and 0 <= metrics["test"]["accuracy"] <= 1
    assert metrics["test"]["roc_auc"] is None and metrics["validation"]["roc_auc"] is None
    card = (run / "README.md").read_text()
    test_row = next(row for row in card.splitlines() if row.startswith("| test | 5 |"))
    assert "| n/a |" in test_row
    # Resuming the finished run measures it again, the same way.
    result = run_cli("train.py", "--resume", run)
    assert result.returncode == 0, result.stderr
    assert _config(run)["metrics"] == metrics


def _small_files(limit):
    def apply():  # what a full disk does to a writer: a write fails part-way
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _train_on_a_full_disk(data, run, limit, *options):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "train.py", "--data", str(data), "--out", str(run), *TINY, *options],
                          cwd=ROOT, capture_output=True, text=True, env=env, preexec_fn=_small_files(limit),
                          timeout=600)


@pytest.mark.slow
def test_a_full_disk_at_the_plot_keeps_the_checkpoint_and_resume_finishes(tmp_path):
    data, run = _reviews(tmp_path / "r.jsonl"), tmp_path / "run"
    # The checkpoint (about 23 kB) fits, the plot (about 31 kB) does not.
    result = _train_on_a_full_disk(data, run, 27_000, "--epochs", "2")
    line = _error_lines(result)
    assert line.startswith(f"error: {run / 'curves.png'}: could not be written (File too large): the disk is full")
    assert f"the last whole checkpoint is kept: free space, then continue with `python train.py --resume {run}`" in line
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    result = run_cli("train.py", "--resume", run)
    assert result.returncode == 0, result.stderr
    assert _config(run)["trained"]["finished"] is True and _config(run)["trained"]["epochs_run"] == 2


@pytest.mark.slow
def test_a_full_disk_at_the_first_checkpoint_is_one_line(tmp_path):
    from sentiment.data import load_source

    data, run = _reviews(tmp_path / "r.jsonl"), tmp_path / "run"
    # The data's cache (in the tests' datasets cache, which train.py shares) is written while
    # the disk still has room: this test is about the checkpoint.
    load_source(data)
    line = _error_lines(_train_on_a_full_disk(data, run, 10_000))
    assert line.startswith(f"error: {run / 'checkpoint.pt'}: could not be written (")
    assert "the disk is full" in line and "no checkpoint was written yet" in line
    assert not (run / "checkpoint.pt").exists() and not [p for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_lone_surrogate_in_json_text_is_replaced_and_counted(tmp_path):
    data = tmp_path / "r.jsonl"
    lines = [json.dumps({"text": text, "label": label}) for text, label in make_reviews(60)]
    lines[:3] = ['{"text": "\\ud800 great", "label": "positive"}', '{"text": "awful \\udfff", "label": 0}',
                 '{"text": "fine \\ud83d\\ude00", "label": 1}']  # the last is a whole pair: an emoji
    data.write_text("\n".join(lines) + "\n")
    result = run_cli("train.py", "--data", data, "--out", tmp_path / "run", *TINY)
    assert result.returncode == 0, result.stderr
    assert "undecodable bytes were replaced with U+FFFD (train: 2 bytes in 2 reviews)" in result.stderr

    from sentiment.data import load_source

    texts = load_source(data, cache_dir=str(tmp_path / "cache"))["train"]["text"]
    assert "\ufffd great" in texts and "awful \ufffd" in texts and "fine \U0001f600" in texts


def _mapped(pid, library):
    try:
        return library in open(f"/proc/{pid}/maps").read()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc to see where start-up is")
def test_ctrl_c_during_start_up_is_one_line_and_status_130(tmp_path):
    data = _reviews(tmp_path / "r.jsonl", n=2000)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "train.py", "--data", str(data), "--out", str(tmp_path / "run"), *TINY],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Once torch's library is loaded, train.py is importing torch or reading the data: start-up.
    deadline = time.monotonic() + 120
    while not _mapped(proc.pid, "libtorch"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert [line for line in stderr.splitlines() if line.strip()] in (
        ["interrupted while train.py started: nothing was written; the same command runs it again"],
        ["interrupted before training began: nothing to resume; the same command starts the run again"]), stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.slow
def test_a_folder_left_before_the_first_checkpoint_is_started_afresh(tmp_path):
    data, run = _reviews(tmp_path / "r.jsonl"), tmp_path / "run"
    # What a run killed right after writing its tokenizer leaves: that file and a write cut short.
    run.mkdir()
    (run / "tokenizer.json").write_text("{}")
    (run / ".checkpoint.pt.x1y2.tmp").write_bytes(b"half")
    line = _error_lines(run_cli("train.py", "--resume", run))
    assert f"the run in {run} stopped before its first epoch ended (it left only tokenizer.json)" in line
    assert "nothing to resume: run the command that started it again" in line
    result = run_cli("train.py", "--data", data, "--out", run, *TINY)
    assert result.returncode == 0, result.stderr
    assert (f"note: --out {run} holds only the tokenizer.json of a run stopped before its first epoch ended; "
            "this run starts there afresh") in result.stderr
    assert _config(run)["trained"]["finished"] is True and not [p for p in run.iterdir() if p.name.endswith(".tmp")]
