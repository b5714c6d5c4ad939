"""Training end to end, as a user runs it: train.py in a subprocess on tiny data."""
import json
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli, write_archive, write_stanford_folder
from sentiment import load_bundle
from sentiment.train.training import WeightAverage, adversarial_perturbation, epoch_order

FAST = ["--embedding-dim", "16", "--hidden-size", "16", "--max-len", "32", "--batch-size", "16",
        "--vocab-size", "100", "--lr", "0.01", "--dropout", "0.1"]


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return write_archive(write_stanford_folder(root, n_train=300, n_test=100), root / "aclImdb_v1.tar.gz")


@pytest.fixture(scope="module")
def slow_archive(tmp_path_factory):
    # Big enough that one epoch lasts a second or more, so a kill lands mid-epoch.
    root = tmp_path_factory.mktemp("slow")
    return write_archive(write_stanford_folder(root, n_train=3000, n_test=50), root / "aclImdb_v1.tar.gz")


def _metrics(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    return config["metrics"]


def _history(run_dir):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in json.loads((run_dir / "history.json").read_text())]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rnncell", "rnn", "lstm", "bilstm"])
def test_train_writes_a_bundle_that_learned(tiny_archive, tmp_path, kind):
    out = tmp_path / "run"
    result = run_cli("train.py", "--model", kind, "--data", tiny_archive, "--epochs", "6", "--out", out, *FAST)
    assert result.returncode == 0, result.stderr
    assert "validation loss" in result.stdout and "test metrics of the best epoch" in result.stdout
    assert "roc_auc" in result.stdout and "actual positive" in result.stdout
    assert {"config.json", "tokenizer.json", "model.safetensors", "checkpoint.pt", "curves.png",
            "history.json"} <= {p.name for p in out.iterdir()}
    metrics = _metrics(out)
    assert metrics["test"]["n"] == 100 and metrics["validation"]["n"] == 30
    assert metrics["test"]["accuracy"] >= 0.8, metrics["test"]
    clf = load_bundle(out)
    assert list(clf.predict(["wonderful superb loved it", "awful boring hated it"])) == ["positive", "negative"]
    config = json.loads((out / "config.json").read_text())
    assert re.match(rf"python\S* train.py --model {kind} --data ", config["command"]), config["command"]
    assert config["trained"]["finished"] is True and config["data_fingerprint"]


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics(tiny_archive, tmp_path):
    runs = []
    for name in ("a", "b"):
        result = run_cli("train.py", "--model", "lstm", "--data", tiny_archive, "--epochs", "2", "--seed", "7",
                         "--out", tmp_path / name, *FAST)
        assert result.returncode == 0, result.stderr
        runs.append(_metrics(tmp_path / name))
    assert runs[0] == runs[1]
    other = tmp_path / "c"
    assert run_cli("train.py", "--model", "lstm", "--data", tiny_archive, "--epochs", "2", "--seed", "8",
                   "--out", other, *FAST).returncode == 0
    assert _metrics(other) != runs[0]


def _start_training(archive, out, epochs, extra=()):
    args = [sys.executable, "train.py", "--model", "lstm", "--data", str(archive), "--epochs", str(epochs),
            "--out", str(out), "--patience", "10", "--batch-size", "8", "--embedding-dim", "16",
            "--hidden-size", "32", "--max-len", "48", "--vocab-size", "100", "--lr", "0.005",
            # The averaged weights and word dropout's random draws must survive the kill too.
            "--ema", "0.9", "--word-dropout", "0.1", *extra]
    import os

    # Faulthandler: should a run hang, SIGABRT makes it print every thread's stack (see _wait_for_checkpoint).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc, out, timeout=300):
    # Monotonic: a wall clock set while waiting does not cut the wait short.
    deadline = time.monotonic() + timeout
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.communicate()
        if time.monotonic() > deadline:
            # Twice, on a loaded machine, the first epoch had not ended after 300 s (it takes
            # seconds; two threads per run on busy cores, likely: see conftest.py): show where the run was.
            proc.send_signal(signal.SIGABRT)
            stdout, stderr = proc.communicate()
            pytest.fail(f"no checkpoint after {timeout} s; the run's stacks:\n{stdout}\n{stderr}")
        time.sleep(0.01)
    time.sleep(0.3)  # well into the next epoch


def _ctrl_c(proc, started):
    """Send Ctrl-C to a training; return what it printed, and when the signal went (for failure messages)."""
    proc.send_signal(signal.SIGINT)
    sent = f"SIGINT sent {time.monotonic() - started:.2f}s after the start"
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"{sent}; still running 120 s later\n{stdout}\n{stderr}")
    return stdout, stderr, f"{sent}\n{stdout}\n{stderr}"


@pytest.mark.slow
def test_resume_after_kill_9_mid_epoch_ends_with_the_same_metrics(slow_archive, tmp_path):
    # Two epochs: the kill lands in the second, which the resumed run plays again from the
    # checkpoint of the first (its order, word dropout draws, averaged weights and optimizer).
    straight = tmp_path / "straight"
    proc = _start_training(slow_archive, straight, epochs=2)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr

    crashed = tmp_path / "crashed"
    proc = _start_training(slow_archive, crashed, epochs=2)
    _wait_for_checkpoint(proc, crashed)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    import torch

    checkpoint = torch.load(crashed / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1, "the kill should land in epoch 2; make the test data bigger"

    result = run_cli("train.py", "--resume", crashed)
    assert result.returncode == 0, result.stderr
    assert f"resuming {crashed} after epoch 1" in result.stdout
    assert _metrics(crashed) == _metrics(straight)
    assert _history(crashed) == _history(straight)
    # The bundle names the command that reproduces the run, not the resume that finished it.
    config = json.loads((crashed / "config.json").read_text())
    assert "--resume" not in config["command"] and f"--out {crashed}" in config["command"]
    assert [c.split(" ", 1)[1] for c in config["resumed_with"]] == [f"train.py --resume {crashed}"]


@pytest.mark.slow
def test_resume_after_kill_9_during_language_model_pretraining(slow_archive, tmp_path):
    lm = ["--pretrain", "lm", "--pretrain-epochs", "2"]  # the kill lands in the second, the last
    straight = tmp_path / "straight"
    proc = _start_training(slow_archive, straight, epochs=1, extra=lm)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr

    crashed = tmp_path / "crashed"
    proc = _start_training(slow_archive, crashed, epochs=1, extra=lm)
    _wait_for_checkpoint(proc, crashed)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    import torch

    checkpoint = torch.load(crashed / "checkpoint.pt", weights_only=True)
    assert checkpoint["stage"] == "lm" and len(checkpoint["losses"]) == 1, "the kill should land in LM epoch 2"

    result = run_cli("train.py", "--resume", crashed)
    assert result.returncode == 0, result.stderr
    assert f"resuming {crashed}: language model after epoch 1" in result.stdout
    assert "language model epoch 1/2" not in result.stdout and "language model epoch 2/2" in result.stdout
    from safetensors.torch import load_file

    resumed_lm, straight_lm = load_file(str(crashed / "lm.safetensors")), load_file(str(straight / "lm.safetensors"))
    for name in straight_lm:
        torch.testing.assert_close(resumed_lm[name], straight_lm[name], rtol=0, atol=0)
    assert _metrics(crashed) == _metrics(straight)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_keeps_the_best_model(slow_archive, tmp_path):
    out = tmp_path / "run"
    started = time.monotonic()
    proc = _start_training(slow_archive, out, epochs=5)
    _wait_for_checkpoint(proc, out)
    # Twice, on a loaded machine, the signal was lost and training ran to the end (see CtrlC).
    stdout, stderr, printed = _ctrl_c(proc, started)
    assert proc.returncode == 130, printed
    assert "interrupted: the best model so far (epoch 1" in stderr and f"--resume {out}" in stderr, printed
    assert "Traceback" not in stderr, printed
    assert load_bundle(out).predict_proba(["a wonderful film"]).shape == (1, 2)


@pytest.mark.slow
def test_ctrl_c_during_language_model_pretraining_says_how_to_resume(slow_archive, tmp_path):
    out = tmp_path / "run"
    started = time.monotonic()
    proc = _start_training(slow_archive, out, epochs=1, extra=["--pretrain", "lm", "--pretrain-epochs", "5"])
    _wait_for_checkpoint(proc, out)
    stdout, stderr, printed = _ctrl_c(proc, started)
    assert proc.returncode == 130, printed
    assert f"interrupted while pretraining the language model: its last finished epoch is in {out}" in stderr, printed
    assert f"--resume {out}" in stderr and "Traceback" not in stderr, printed
    assert "language model epoch 5/5" not in stdout, printed
    import torch

    # What --resume continues from: the language model after its last finished epoch.
    assert torch.load(out / "checkpoint.pt", weights_only=True)["stage"] == "lm"


# train.py, but the first time matplotlib saves a figure (after epoch 1) Ctrl-C arrives, and the
# KeyboardInterrupt it raises is caught and dropped, as a library's callback might.
SWALLOWED_CTRL_C = """
import runpy, signal, sys
import matplotlib.figure

save = matplotlib.figure.Figure.savefig

def savefig(self, *args, **kwargs):
    save(self, *args, **kwargs)
    if not getattr(savefig, "done", False):
        savefig.done = True
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            print("KeyboardInterrupt dropped", file=sys.stderr)

matplotlib.figure.Figure.savefig = savefig
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow
def test_ctrl_c_dropped_by_a_library_still_stops_training(tiny_archive, tmp_path):
    out = tmp_path / "run"
    result = run_cli("-c", SWALLOWED_CTRL_C, "--model", "lstm", "--data", tiny_archive, "--epochs", "2",
                     "--out", out, *FAST)
    assert "KeyboardInterrupt dropped" in result.stderr, result.stderr
    assert result.returncode == 130, result.stdout + result.stderr
    assert "interrupted: the best model so far (epoch 1" in result.stderr
    assert "epoch 2/2" not in result.stdout
    assert len(json.loads((out / "history.json").read_text())) == 1
    assert load_bundle(out).predict_proba(["a wonderful film"]).shape == (1, 2)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tiny_archive, tmp_path):
    out = tmp_path / "ddp"
    result = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
                     "--model", "bilstm", "--data", tiny_archive, "--epochs", "6", "--out", out,
                     "--device", "cpu", *FAST, "--batch-size", "8", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "x 2 processes" in result.stdout
    assert result.stdout.count("model saved to") == 1  # only rank 0 writes
    clf = load_bundle(out)
    assert _metrics(out)["test"]["accuracy"] >= 0.7
    assert json.loads((out / "config.json").read_text())["device"] == "cpu x 2"
    assert clf.predict(["wonderful superb loved it"])[0] == "positive"


@pytest.mark.slow
def test_torchrun_two_cpu_processes_pretrain_a_language_model(tiny_archive, tmp_path):
    out = tmp_path / "ddp-lm"
    result = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
                     "--model", "lstm", "--data", tiny_archive, "--epochs", "1", "--out", out, "--device", "cpu",
                     "--pretrain", "lm", "--pretrain-epochs", "2", *FAST, "--batch-size", "8", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    # Rank 0 alone reports and writes.
    assert result.stdout.count("language model epoch 2/2") == 1 and result.stdout.count("model saved to") == 1
    assert (out / "lm.safetensors").is_file() and load_bundle(out)


def test_epoch_order_is_a_seeded_permutation_of_length_sorted_batches():
    import numpy as np

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 201, size=1000)
    order = epoch_order(1000, 10, seed=3, epoch=1, lengths=lengths, window=5)
    assert sorted(order) == list(range(1000))
    assert (order == epoch_order(1000, 10, seed=3, epoch=1, lengths=lengths, window=5)).all()
    assert not (order == epoch_order(1000, 10, seed=3, epoch=2, lengths=lengths, window=5)).all()
    batches = order.reshape(100, 10)
    steps = lengths[batches].max(axis=1).sum()  # what an epoch runs: each batch its longest review
    shuffled = epoch_order(1000, 10, seed=3, epoch=1).reshape(100, 10)
    assert steps < 0.8 * lengths[shuffled].max(axis=1).sum()
    # Batches still mix the data: their first reviews do not come in length order.
    firsts = lengths[batches[:, 0]]
    assert not (np.diff(firsts) <= 0).all()


def test_weight_average_forgets_the_start_and_follows_the_weights():
    import torch

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(2000):
        average.update()
    torch.testing.assert_close(average.state["weight"], torch.ones(1, 2))
    average.update()
    assert average.state["weight"] is not model.weight  # a copy, not the live weights


@pytest.mark.slow
def test_bad_regularisation_options_are_named():
    result = run_cli("train.py", "--word-dropout", "1.5")
    assert result.returncode == 2 and "--word-dropout must be in [0, 1) (got 1.5)" in result.stderr
    result = run_cli("train.py", "--ema", "1")
    assert result.returncode == 2 and "--ema must be in [0, 1)" in result.stderr
    result = run_cli("train.py", "--adversarial", "-1")
    assert result.returncode == 2 and "--adversarial must be at least 0 (got -1.0)" in result.stderr


def test_recipe_sizes_follow_the_model_and_pretraining():
    from sentiment.train.training import TrainConfig

    def sizes(**options):
        config = TrainConfig(**options)
        return config.embedding_dim, config.num_layers

    assert sizes(model="bilstm") == (256, 2)
    # A bilstm language model has one layer, and --init-from must match the sizes it was pretrained with.
    assert sizes(model="bilstm", pretrain="lm") == (128, 1)
    assert sizes(model="bilstm", init_from="runs/lm") == (128, 1)
    assert sizes(model="lstm") == sizes(model="rnn") == sizes(model="rnncell") == (128, 1)
    assert sizes(model="bilstm", num_layers=3, embedding_dim=64) == (64, 3)  # given options win


@pytest.mark.slow
def test_two_layer_bilstm_language_model_is_refused_before_reading_data(tmp_path):
    result = run_cli("train.py", "--model", "bilstm", "--pretrain", "lm", "--num-layers", "2",
                     "--data", tmp_path / "missing.tar.gz")
    assert result.returncode == 2, result.stderr
    assert "--pretrain lm supports bilstm with --num-layers 1 only (got 2)" in result.stderr


@pytest.mark.parametrize("kind", ["rnn", "bilstm"])
def test_adversarial_perturbation_raises_the_loss_more_than_a_random_one(kind):
    import torch

    from sentiment.models import ModelConfig, SentimentRNN

    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(kind=kind, vocab_size=50, embedding_dim=8, hidden_size=8, dropout=0.0)).eval()
    ids = torch.randint(2, 50, (16, 12))
    lengths = torch.randint(3, 13, (16,))
    ids[torch.arange(12)[None, :] >= lengths[:, None]] = 1  # padding
    targets = torch.randint(0, 2, (16,))

    def loss(perturbation):
        return torch.nn.functional.cross_entropy(model(ids, lengths, perturbation), targets, reduction="none")

    zero = torch.zeros(16, 12, 8, requires_grad=True)
    loss(zero).sum().backward()
    adversarial = adversarial_perturbation(zero.grad, 0.5)
    torch.testing.assert_close(adversarial.flatten(1).norm(dim=1), torch.full((16,), 0.5))
    random = torch.randn(16, 12, 8)
    random = 0.5 * random / random.flatten(1).norm(dim=1)[:, None, None]
    with torch.no_grad():
        clean, pushed, shaken = loss(None), loss(adversarial), loss(random)
    assert (pushed > clean).all() and (pushed - clean).mean() > 3 * (shaken - clean).abs().mean()


@pytest.mark.slow
def test_adversarial_training_learns_and_is_recorded(tiny_archive, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train.py", "--model", "lstm", "--data", tiny_archive, "--epochs", "6", "--out", out,
                     "--adversarial", "1.0", *FAST)
    assert result.returncode == 0, result.stderr
    assert _metrics(out)["test"]["accuracy"] >= 0.8
    assert json.loads((out / "config.json").read_text())["training"]["adversarial"] == 1.0
