"""README's "What we promise": nothing lost, nothing overwritten, nothing unbounded, one-line errors.

Each test here is one promise, checked as a user would meet it (a command run from a
fresh process, a killed writer, a server under many calls).
"""
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli, write_table
from sentiment import load_bundle

POS, NEG = "wonderful superb loved it", "awful boring hated it"


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- run folders and bundles ----------------------------------------------------

@pytest.mark.slow
def test_a_new_run_never_writes_into_another_runs_folder(tiny_model, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_model, run)
    before = files_of(run)
    line = one_error_line(run_cli("train.py", "--data", "unused.csv", "--out", run))
    assert f"--out {run} already holds a run; continue it with `python train.py --resume {run}`" in line
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    line = one_error_line(run_cli("train.py", "--data", "unused.csv", "--out", other))
    assert f"--out {other} is not empty (holds config.json)" in line
    assert files_of(run) == before and (other / "config.json").read_text() == "{}"


@pytest.mark.slow
def test_a_bundle_whose_tokenizer_is_not_its_own_is_refused(tiny_model, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_model, bundle)
    tokenizer = json.loads((bundle / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = [w for w, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i > 1][:2]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # same size, other words: the old silent mix
    (bundle / "tokenizer.json").write_text(json.dumps(tokenizer))
    line = one_error_line(run_cli("-m", "sentiment", "score", "-", "--model", bundle, input="good\n"))
    assert "tokenizer.json: content does not match the sha256 recorded in config.json" in line


SAVER = """
import sys, torch
from pathlib import Path
from sentiment.bundle import load_bundle, save_bundle
from sentiment.models import ModelConfig, SentimentRNN
from sentiment.text import TextEncoder, train_tokenizer
out = Path(sys.argv[1])
encoders = [TextEncoder(train_tokenizer([f"w{i} x{k}" for k in range(n)], n + 2), 16) for i, n in ((0, 20), (1, 40))]
print("ready", flush=True)
i = 0
while True:
    encoder = encoders[i % 2]
    torch.manual_seed(i)
    model = SentimentRNN(ModelConfig(kind="rnn", vocab_size=encoder.vocab_size, embedding_dim=8, hidden_size=8))
    save_bundle(out, model, encoder, {"vocab": encoder.vocab_size})
    i += 1
"""


@pytest.mark.slow
def test_a_bundle_rewritten_in_place_is_old_or_new_after_kill_9(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"kept")  # a run folder's other files stay
    rng = random.Random(0)
    seen = set()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(12):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(out)], env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        if not (out / "config.json").exists():
            continue  # killed before the first save finished
        clf = load_bundle(out)  # a mix would be refused here (sha256 of weights and tokenizer)
        seen.add(clf.config["vocab"])
        assert clf.encoder.vocab_size == clf.config["vocab"] == clf.model.embedding.num_embeddings
        assert (out / "checkpoint.pt").read_bytes() == b"kept"
    assert len(seen) == 2  # both versions were caught, so the kills fell at different moments
    # Whatever the kills left beside the folder is cleared by the next writer.
    proc = subprocess.run([sys.executable, "-c", "from sentiment.bundle import clear_leftovers; from pathlib import "
                           f"Path; clear_leftovers(Path({str(out)!r}))"], env=env)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


@pytest.mark.slow
def test_leftovers_of_a_killed_scorer_are_cleared(tiny_model, tmp_path):
    (tmp_path / "in.txt").write_text(f"{POS}\n")
    leftover = tmp_path / ".out.csv.abc123.tmp"
    leftover.write_text("half")
    result = run_cli("-m", "sentiment", "score", tmp_path / "in.txt", "--model", tiny_model, "--out",
                     tmp_path / "out.csv")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.csv"]


# --- one line and exit 2, before any work ---------------------------------------

def _broken_bundle(tiny_model, tmp_path, section, values) -> Path:
    bundle = tmp_path / "broken"
    shutil.copytree(tiny_model, bundle)
    config = json.loads((bundle / "config.json").read_text())
    config[section].update(values)
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


@pytest.mark.slow
def test_unwritable_outputs_are_one_line(tiny_model, tmp_path):
    reviews = tmp_path / "r.txt"
    reviews.write_text(f"{POS}\n")
    score = ("-m", "sentiment", "score", reviews, "--model", tiny_model)
    assert "--out /proc/x.csv: cannot write in /proc" in one_error_line(run_cli(*score, "--out", "/proc/x.csv"))
    assert f"--out {tmp_path} is a folder" in one_error_line(run_cli(*score, "--out", tmp_path, "--format", "csv"))
    assert "--out /proc/run: cannot create it" in one_error_line(
        run_cli("train.py", "--data", reviews, "--out", "/proc/run"))
    assert f"--out {reviews} is a file; name a folder for the run" in one_error_line(
        run_cli("train.py", "--data", reviews, "--out", reviews))
    labelled = write_table(tmp_path / "l.csv", [{"text": POS, "label": 1}, {"text": NEG, "label": 0}])
    evaluate = ("-m", "sentiment", "evaluate", "--model", tiny_model, "--data", labelled)
    assert "--json /proc/x.json: cannot write in /proc" in one_error_line(run_cli(*evaluate, "--json", "/proc/x.json"))
    assert "--plot /proc/plots: cannot create it" in one_error_line(run_cli(*evaluate, "--plot", "/proc/plots"))
    assert "--batch-size must be at least 1 (got 0)" in one_error_line(run_cli(*evaluate, "--batch-size", "0"))


@pytest.mark.slow
def test_a_full_disk_while_scoring_is_one_line_and_leaves_nothing(tiny_model, tmp_path):
    reviews = tmp_path / "r.txt"
    reviews.write_text(f"{POS}\n" * 20_000)

    def small_file_limit():  # what a full disk does to a writer: a write fails part-way
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    result = subprocess.run([sys.executable, "-m", "sentiment", "score", str(reviews), "--model", str(tiny_model),
                             "--out", str(tmp_path / "out.csv")], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=small_file_limit)
    assert f"--out {tmp_path / 'out.csv'}: writing failed (File too large); nothing was written" in \
        one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]


@pytest.mark.slow
def test_a_column_that_changes_type_names_the_row_for_parquet(tiny_model, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"text": POS, "n": 1}) + "\n" + json.dumps({"text": NEG, "n": "two"}) + "\n")
    line = one_error_line(run_cli("-m", "sentiment", "score", path, "--model", tiny_model,
                                  "--out", tmp_path / "o.parquet"))
    assert f"{path}:2: field 'n' is str ('two'), where earlier rows hold int64" in line


@pytest.mark.parametrize("section, values, message", [
    ("text", {"max_len": "x"}, "config.json: bad 'text' section (max_len must be a whole number (got 'x'))"),
    ("model", {"hidden_size": 10 ** 9}, "config.json: bad 'model' section (hidden_size must be at most 4,096 (got "
                                        "1,000,000,000))"),
    ("model", {"hidden_size": 17}, "tensor encoder.layers.0.0.weight_ih_l0 has shape (64, 16), config.json implies (68, 16)"),
    ("model", {"num_layers": 2.5}, "bad 'model' section (num_layers must be a whole number (got 2.5))"),
])
def test_a_bundle_config_with_bad_values_is_one_line(tiny_model, tmp_path, section, values, message):
    bundle = _broken_bundle(tiny_model, tmp_path, section, values)
    line = one_error_line(run_cli("-m", "sentiment", "score", "-", "--model", bundle, input="good\n"))
    assert message in line


@pytest.mark.slow
def test_serve_refuses_a_port_out_of_range():
    assert "--port must be at most 65535 (got 70000)" in one_error_line(run_cli("serve.py", "--port", "70000"))


# --- no wrong answer without a word ----------------------------------------------

@pytest.mark.slow
def test_training_data_of_one_class_is_refused(tmp_path):
    data = write_table(tmp_path / "one.csv", [{"text": f"good film {i}", "label": 1} for i in range(20)])
    line = one_error_line(run_cli("train.py", "--data", data, "--out", tmp_path / "run"))
    assert "every training row's label is 'positive' (all 20 rows, column 'label')" in line


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-32"])
def test_files_with_a_byte_order_mark_are_decoded(tiny_model, tmp_path, encoding):
    txt, csv = tmp_path / "r.txt", tmp_path / "r.csv"
    txt.write_bytes(f"{POS}\n{NEG}\n".encode(encoding))
    csv.write_bytes(f"text,id\n{POS},a\n{NEG},b\n".encode(encoding))
    for path in (txt, csv):
        result = run_cli("-m", "sentiment", "score", path, "--model", tiny_model, "--format", "jsonl")
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert [r["prediction"] for r in rows] == ["positive", "negative"], rows
        assert "undecodable" not in result.stderr


@pytest.mark.slow
def test_jsonl_text_that_is_not_a_string_is_an_error_row(tiny_model, tmp_path):
    path = tmp_path / "r.jsonl"
    values = [POS, True, 5, None, {"a": 1}, ["x"]]
    path.write_text("".join(json.dumps({"text": v}) + "\n" for v in values))
    result = run_cli("-m", "sentiment", "score", path, "--model", tiny_model, "--on-error", "skip",
                     "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["prediction"] for r in rows] == ["positive", None, None, None, None, None]
    assert [r["error"] for r in rows[1:]] == [
        f"{path}:{n}: field 'text' is {what}, not text" for n, what in
        ((2, "a boolean (true)"), (3, "a number (5)"), (4, "null"), (5, 'an object ({"a": 1})'), (6, 'a list (["x"])'))]
    line = one_error_line(run_cli("-m", "sentiment", "score", path, "--model", tiny_model))
    assert f"{path}:2: field 'text' is a boolean (true), not text (use --on-error skip" in line


@pytest.mark.slow
def test_a_csv_header_that_names_a_column_twice_is_refused(tiny_model, tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(f"text,text,id\n{POS},{NEG},1\n")
    line = one_error_line(run_cli("-m", "sentiment", "score", path, "--model", tiny_model))
    assert f"{path}:1: the header names the column 'text' more than once" in line


@pytest.mark.slow
def test_a_jsonl_row_with_a_new_key_is_an_error_row_that_says_so(tiny_model, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"text": POS}) + "\n" + json.dumps({"text": NEG, "stars": 2}) + "\n"
                    + json.dumps({"text": NEG}) + "\n")
    result = run_cli("-m", "sentiment", "score", path, "--model", tiny_model, "--on-error", "skip",
                     "--format", "jsonl")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["prediction"] for r in rows] == ["positive", None, "negative"]
    assert rows[1]["error"] == f"{path}:2: has the field 'stars' that the first row does not " \
                               "(the output's columns are the first row's)"


# --- bounded memory ----------------------------------------------------------------

PEAK = "import resource, sys, runpy; sys.argv = ['sentiment', *sys.argv[1:]]\ntry:\n    runpy.run_module(" \
       "'sentiment', run_name='__main__')\nfinally:\n    print('peak', resource.getrusage(resource.RUSAGE_SELF)" \
       ".ru_maxrss, file=sys.stderr)"


def _peak_mb(*args) -> float:
    result = run_cli("-c", PEAK, *args)
    assert result.returncode == 0, result.stderr
    return int(result.stderr.split("peak ")[-1]) / 1024


@pytest.mark.slow
def test_a_20_mb_line_costs_little_more_than_itself(tiny_model, tmp_path):
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_text(f"{POS}\n")
    big.write_text(f"{NEG} " * 900_000 + f"{POS}\n")  # 20 MB; the model reads its tail
    base = _peak_mb("score", small, "--model", tiny_model, "--out", tmp_path / "a.csv")
    peak = _peak_mb("score", big, "--model", tiny_model, "--out", tmp_path / "b.csv")
    assert peak - base < 250, (base, peak)  # it was 1.3 GB: the tokenizer held every word
    # The words read are the same as if the whole line had been tokenized.
    clf = load_bundle(tiny_model)
    text = big.read_text().rstrip("\n")
    encoding = clf.encoder.encode_one(text).ids
    kept = encoding[-clf.encoder.max_len:]
    assert clf.encoder.encode([text]).ids[0].tolist() == kept
