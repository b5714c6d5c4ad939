"""Tiny data the tests make themselves, in every format the loader reads."""
from __future__ import annotations

import io
import json
import os
import random
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

# Keep every test local and quiet: no hub calls, no telemetry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
# One torch thread per process, here and in every training the tests start. The tests' models
# are tiny, so a second thread buys nothing, and on a machine that is busy with other work two
# threads that wait on each other crawl: test_same_seed_gives_the_same_metrics (three small
# trainings) took 121 s with torch's default of 2 threads and 32 s with one, beside two
# one-thread trainings on 2 cores (and twice a first epoch of seconds had not ended after
# 300 s). A value the caller set wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A private datasets cache for the whole test run (set before datasets is imported),
# so tests never read or fill the user's cache.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="sentiment-test-hf-")

ROOT = Path(__file__).resolve().parent.parent
SHARED_IMDB = ROOT.parent / "shared" / "imdb" / "aclImdb_v1.tar.gz"

POSITIVE = ["great", "wonderful", "loved", "superb", "brilliant", "moving"]
NEGATIVE = ["awful", "boring", "hated", "terrible", "dull", "worst"]
FILLER = ["the", "movie", "plot", "actor", "scene", "film", "story", "was", "and", "a", "it", "director",
          "music", "camera", "end", "character", "script", "of", "to", "this"]


def make_review(rng: random.Random, label: int, words: int | None = None) -> str:
    words = words or rng.randint(8, 40)
    cue = POSITIVE if label == 1 else NEGATIVE
    tokens = [rng.choice(FILLER) for _ in range(words)]
    for _ in range(3):
        tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(cue))
    # Real reviews carry HTML breaks, capitals and punctuation.
    text = " ".join(tokens).capitalize() + "!"
    return text.replace(" the ", " the<br /><br />", 1)


def make_reviews(n: int, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [(make_review(rng, i % 2), i % 2) for i in range(n)]


CLASSES = ("negative", "neutral", "positive")
CUES = {"negative": ["awful", "boring", "hated", "terrible"], "neutral": ["okay", "average", "fine", "mediocre"],
        "positive": ["great", "wonderful", "loved", "superb"]}


def three_class_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = CLASSES[i % 3]
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 16))]
        for _ in range(3):
            words.insert(rng.randrange(len(words) + 1), rng.choice(CUES[label]))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_stanford_folder(root: Path, n_train: int = 40, n_test: int = 20, n_unsup: int = 6) -> Path:
    base = root / "aclImdb"
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        for i, (text, label) in enumerate(make_reviews(n, seed)):
            polarity = "pos" if label else "neg"
            rating = 8 if label else 2
            folder = base / split / polarity
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}_{rating}.txt").write_text(text)
    unsup = base / "train" / "unsup"
    unsup.mkdir(parents=True, exist_ok=True)
    for i, (text, _) in enumerate(make_reviews(n_unsup, 3)):
        (unsup / f"{i}_0.txt").write_text(text)
    (base / "train" / "urls_pos.txt").write_text("http://www.imdb.com/title/tt0000001/usercomments\n")
    return base


def write_archive(folder: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="aclImdb")
    return path


@pytest.fixture(scope="session")
def stanford_folder(tmp_path_factory) -> Path:
    return write_stanford_folder(tmp_path_factory.mktemp("stanford"))


@pytest.fixture(scope="session")
def stanford_archive(stanford_folder, tmp_path_factory) -> Path:
    return write_archive(stanford_folder, tmp_path_factory.mktemp("archive") / "aclImdb_v1.tar.gz")


def write_table(path: Path, rows: list[dict]) -> Path:
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        import csv

        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t" if suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def run_cli(*args, cwd=ROOT, env_extra=None, timeout=600, input=None):
    """Run a command as a user would, with this checkout importable; an env_extra value of None unsets it."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    env = {name: value for name, value in env.items() if value is not None}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, input=input)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, stanford_archive) -> Path:
    """A small trained bundle (cue words decide the label), trained once per test run."""
    from sentiment.train.training import TrainConfig, train

    out = tmp_path_factory.mktemp("model") / "tiny"
    config = TrainConfig(model="lstm", data=str(stanford_archive), out=str(out), epochs=8, embedding_dim=16,
                         hidden_size=16, max_len=32, batch_size=8, vocab_size=100, lr=0.01, dropout=0.1)
    import contextlib

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        train(config)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python serve.py ARGS`` on a free port of 127.0.0.1, as a user starts it."""

    def __init__(self, *args, log: Path):
        import subprocess

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with open(log, "w") as fh:
            self.proc = subprocess.Popen([sys.executable, "serve.py", "--port", str(self.port), *map(str, args)],
                                         cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180) -> "Server":
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"serve.py exited: {self.log.read_text()}"
            try:
                if httpx.get(self.url + "healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"serve.py not ready in {timeout} s: {self.log.read_text()}"
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()


@pytest.fixture(scope="session")
def server(tiny_model, tmp_path_factory):
    """The tiny model twice (as "tiny" and "again"), served as a user would serve it, with small limits."""
    import shutil

    again = tmp_path_factory.mktemp("again") / "again"
    shutil.copytree(tiny_model, again)
    log = tmp_path_factory.mktemp("server") / "serve.log"
    running = Server("--model", tiny_model, "--model", again, "--precision", "float32", "--max-chars", "5000",
                     "--max-batch", "8", "--max-upload-mb", "1", "--max-rows", "50", log=log).wait_ready()
    yield running
    running.stop()


# With pytest-xdist (`-n 2 --dist loadgroup`), each test file keeps to one worker, so a
# server or cluster a module starts once is started once, and the tests that start Ray
# clusters (marked `ray`) share a worker: `ray stop` ends every cluster of the machine.
#
# The groups that take longest go out first (minutes each in the durations the test command
# prints: trainings killed and resumed, the Ray clusters and Ray Serve, the real IMDB data),
# then the rest by their number of tests, largest first, as pytest-xdist orders groups by
# default. A worker takes the next group in this order when it runs short of work, so a long
# group left near the end runs alone on one worker while the other has nothing left to take:
# by number of tests, test_real_data.py (2 tests, over 2 minutes) went last.
LONGEST_FIRST = ("test_training.py", "ray", "test_training_edges.py", "test_promises.py", "test_real_data.py")


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist") and hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # the order below, not pytest-xdist's by number of tests


def _group(item) -> str:
    return "ray" if item.get_closest_marker("ray") else item.path.name


# tryfirst: the groups must be set before pytest-xdist's own hook reads them.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))
    if hasattr(config, "workerinput"):  # a worker: its collection order is the order groups are handed out
        sizes, first = {}, {}
        for index, item in enumerate(items):
            sizes[_group(item)] = sizes.get(_group(item), 0) + 1
            first.setdefault(_group(item), index)

        def rank(group: str) -> tuple:
            return (LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST), -sizes[group],
                    first[group])

        items.sort(key=lambda item: rank(_group(item)))  # stable: each group keeps its own order
