"""``sentiment score --engine ray`` on a real Ray cluster started here (127.0.0.1 only)."""
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CLASSES, ROOT, free_port, run_cli, three_class_rows, write_table

POS, NEG = "wonderful superb loved it", "awful boring hated it"


def ray_available() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


needs_ray = pytest.mark.skipif(not ray_available(), reason='Ray Data is not installed: pip install -e ".[ray]"')
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node Ray cluster of 2 CPUs, as `ray start --head` makes one; stopped after the module."""
    port = free_port()
    temp = Path("/tmp") / f"ray-test-{os.getpid()}"  # Ray's socket paths must stay short
    ray = str(Path(sys.executable).with_name("ray"))
    # Token authentication, as Ray does by default: the cluster and every client here share
    # one token through the environment (run_cli passes it on to the commands tested).
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    env = dict(os.environ)
    start = subprocess.run([ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                           capture_output=True, text=True, env=env, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr
    yield f"127.0.0.1:{port}"
    subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=120)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def mixed_inputs(folder: Path, n: int = 3000) -> list[Path]:
    """A few thousand rows: txt with empty lines, csv with a malformed row, jsonl with non-text values."""
    rng = random.Random(0)
    words = POS.split() + NEG.split() + ["the", "film", "plot"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) for _ in range(n // 2)]
    txt = folder / "a.txt"
    txt.write_text("\n".join(lines) + "\n")
    rows = [{"id": str(i), "text": " ".join(rng.choice(words) for _ in range(6))} for i in range(n // 3)]
    csv = write_table(folder / "b.csv", rows)
    with open(csv, "a") as fh:
        fh.write('9999,"broken\n')  # an unclosed quote: an error row to the end of the file
    jsonl = folder / "c.jsonl"
    values = [POS, NEG, 7, None, "the plot"]
    jsonl.write_text("".join(json.dumps({"text": values[i % 5], "n": i}) + "\n" for i in range(n // 6)))
    return [txt, csv, jsonl]


def read_parts(out: Path) -> list[dict]:
    parts = sorted(p for p in out.iterdir() if p.name.endswith(".json"))
    return [json.loads(line) for p in parts for line in p.read_text().splitlines()]


def single_machine(inputs, model, tmp_path) -> list[dict]:
    """The rows of the single-machine scorer, input by input (inputs with different columns are
    scored separately on one machine): the code ``sentiment score`` runs, in this process, with
    the model loaded once."""
    from sentiment import load_bundle
    from sentiment.scoring.score import ScoreConfig, score

    classifier = load_bundle(model, precision="float32")
    rows = []
    for path in inputs:
        out = tmp_path / f"single-{path.stem}.jsonl"
        score(ScoreConfig(inputs=[str(path)], model=str(model), out=str(out), on_error="skip", precision="float32",
                          progress=False), classifier)
        rows += [json.loads(line) for line in out.read_text().splitlines()]
    return rows


@pytest.mark.slow
@needs_ray
def test_ray_gives_the_single_machine_rows_in_order(cluster, tiny_model, tmp_path):
    inputs = mixed_inputs(tmp_path)
    expected = single_machine(inputs, tiny_model, tmp_path)
    # One run over the three inputs: one read task per file, and the parts sorted by name hold
    # every file's rows in order, file after file, each row with its own file's columns.
    out = tmp_path / "ray"
    result = run_cli("-m", "sentiment", "score", *inputs, "--engine", "ray", "--address", cluster, "--workers", "2",
                     "--model", tiny_model, "--on-error", "skip", "--precision", "float32", "--format", "jsonl",
                     "--chunk-size", "500", "--out", out)
    assert result.returncode == 0, result.stderr
    got = read_parts(out)
    assert len(got) == len(expected) > 2500
    assert [r["source"] for r in got] == [r["source"] for r in expected]
    for a, b in zip(got, expected):
        assert list(a) == list(b)  # same columns, same order
        assert {k: v for k, v in a.items() if k != "p_positive"} == {k: v for k, v in b.items() if k != "p_positive"}
        assert (a["p_positive"] is None) == (b["p_positive"] is None)
        if a["p_positive"] is not None:
            assert a["p_positive"] == pytest.approx(b["p_positive"], abs=1e-6)
    assert any(r["error"] for r in got) and any(r["known_words"] == 0 for r in got)


@pytest.mark.slow
@needs_ray
def test_an_error_row_stops_the_run_in_one_line_without_skip(cluster, tiny_model, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"text": POS}) + "\n" + json.dumps({"text": 5}) + "\n")
    result = run_cli("-m", "sentiment", "score", path, "--engine", "ray", "--address", cluster, "--model",
                     tiny_model, "--out", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"error: {path}:2: field 'text' is a number (5), not text (use --on-error skip to write it as an error " \
        "row and go on)"


@pytest.mark.slow
@needs_ray
def test_a_worker_killed_mid_job_still_gives_every_row_once(cluster, tiny_model, tmp_path):
    path = tmp_path / "big.txt"
    n = 60_000
    path.write_text("".join(f"{POS if i % 2 else NEG} {i}\n" for i in range(n)))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen([sys.executable, "-m", "sentiment", "score", str(path), "--engine", "ray", "--address",
                            cluster, "--workers", "2", "--model", str(tiny_model), "--format", "jsonl",
                            "--chunk-size", "2000", "--out", str(out)], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and job.poll() is None and time.monotonic() < deadline:
        workers = subprocess.run(["pgrep", "-f", "MapWorker"], capture_output=True, text=True).stdout.split()
        if workers:
            time.sleep(1.0)  # let it take a block, then kill it in the middle of the job
            killed = int(workers[0])
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.1)
    stdout, stderr = job.communicate(timeout=300)
    assert killed is not None, "no scoring worker was seen to kill"
    assert job.returncode == 0, stderr
    rows = read_parts(out)
    assert [int(r["row"]) for r in rows] == list(range(1, n + 1))
    assert [r["prediction"] for r in rows[:4]] == ["negative", "positive", "negative", "positive"]


USER_SCRIPT = """
import json, sys, ray
from sentiment.scoring.ray_score import score_dataset
ray.init(address=sys.argv[1], log_to_driver=False)
texts = json.loads(sys.argv[3])
ds = ray.data.from_items([{"id": i, "review": t} for i, t in enumerate(texts)])
print(json.dumps(score_dataset(ds, sys.argv[2], text_column="review", precision="float32").take_all()))
"""


@pytest.mark.slow
@needs_ray
def test_a_user_dataset_gets_prediction_columns(cluster, tiny_model):
    from sentiment import load_bundle

    texts = [POS, NEG, "", None, "the plot"]
    result = run_cli("-c", USER_SCRIPT, cluster, tiny_model, json.dumps(texts))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout.splitlines()[-1])
    assert [r["id"] for r in rows] == list(range(5))
    expected = load_bundle(tiny_model)([t or "" for t in texts])
    assert [r["prediction"] for r in rows] == [e["label"] for e in expected]
    assert [r["known_words"] for r in rows] == [e["known_words"] for e in expected]
    assert rows[0]["p_positive"] == pytest.approx(expected[0]["p_positive"], abs=1e-6)


@pytest.mark.slow
@needs_ray
def test_a_three_class_model_gives_a_probability_column_per_class(cluster, tmp_path):
    from sentiment import load_bundle

    data = write_table(tmp_path / "three.csv", three_class_rows(120, 1))
    model = tmp_path / "model"
    trained = run_cli("train.py", "--data", data, "--model", "lstm", "--out", model, "--epochs", "2",
                      "--embedding-dim", "8", "--hidden-size", "8", "--max-len", "16", "--vocab-size", "60")
    assert trained.returncode == 0, trained.stderr
    texts = [row["text"] for row in three_class_rows(6, 2)] + [None]
    result = run_cli("-c", USER_SCRIPT, cluster, model, json.dumps(texts))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout.splitlines()[-1])
    expected = load_bundle(model, precision="float32")([t or "" for t in texts])
    assert [r["prediction"] for r in rows] == [e["label"] for e in expected]
    assert [k for k in rows[0] if k.startswith("p_")] == [f"p_{c}" for c in CLASSES]
    for row, answer in zip(rows, expected):
        for c in CLASSES:
            if answer["probabilities"] is None:
                assert row[f"p_{c}"] is None
            else:
                assert row[f"p_{c}"] == pytest.approx(answer["probabilities"][c], abs=1e-6)


@pytest.mark.slow
def test_without_ray_the_engine_says_how_to_install_it(tiny_model, tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    (tmp_path / "r.txt").write_text(f"{POS}\n")
    result = run_cli("-m", "sentiment", "score", tmp_path / "r.txt", "--engine", "ray", "--out", tmp_path / "out",
                     env_extra={"PYTHONPATH": f"{hide}{os.pathsep}{ROOT}"})
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: the Ray engine needs Ray Data, an optional extra: pip install -e ".[ray]"'


@pytest.mark.slow
def test_the_package_never_imports_ray():
    result = run_cli("-c", "import sys, sentiment, sentiment.scoring.score, sentiment.serve.app, sentiment.cli; "
                           "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_ray_engine_refuses_what_it_cannot_read_before_starting_ray(tmp_path):
    from sentiment.errors import SentimentError
    from sentiment.scoring.ray_score import check_ray_inputs

    with pytest.raises(SentimentError, match="reads files, not standard input"):
        check_ray_inputs(["-"])
    with pytest.raises(SentimentError, match="no such file"):
        check_ray_inputs([str(tmp_path / "missing.jsonl")])
