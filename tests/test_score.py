"""`sentiment score` as a user runs it, on every input format."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli, write_table
from sentiment import load_bundle

POS, NEG = "wonderful superb loved it", "awful boring hated it"


def score(*args, **kw):
    return run_cli("-m", "sentiment", "score", *args, **kw)


def _csv_rows(text):
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.slow
def test_txt_lines_in_order_with_counts(tiny_model, tmp_path):
    path = tmp_path / "r.txt"
    path.write_text(f"{POS}\n\n{NEG}\n")
    result = score(path, "--model", tiny_model, "--precision", "float32")
    assert result.returncode == 0, result.stderr
    rows = _csv_rows(result.stdout)
    assert [r["row"] for r in rows] == ["1", "2", "3"]
    assert [r["prediction"] for r in rows] == ["positive", "", "negative"]
    # The empty line is kept, marked as having nothing to judge rather than given a verdict.
    assert (rows[1]["p_positive"], rows[1]["known_words"], rows[1]["error"]) == ("", "0", "")
    assert [int(r["known_words"]) for r in rows[::2]] == [4, 4]
    expected = load_bundle(tiny_model).predict_proba([POS, NEG])[:, 1]
    assert [float(r["p_positive"]) for r in rows[::2]] == pytest.approx(expected, abs=1e-6)
    assert "rows read: 3, rows written: 3, rows with no known words (no prediction): 1" in result.stderr
    # The default precision (bfloat16 where the CPU has it) gives the same labels.
    default = _csv_rows(score(path, "--model", tiny_model).stdout)
    assert [r["prediction"] for r in default] == [r["prediction"] for r in rows]
    assert [float(r["p_positive"]) for r in default[::2]] == pytest.approx(expected, abs=0.02)


@pytest.mark.slow
def test_stdin_and_several_inputs(tiny_model, tmp_path):
    path = tmp_path / "r.txt"
    path.write_text(f"{NEG}\n")
    result = score("-", path, "--model", tiny_model, "--format", "jsonl", input=f"{POS}\n{NEG}\n")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(l) for l in result.stdout.splitlines()]
    assert [(r["source"], r["row"], r["prediction"]) for r in rows] == [
        ("<stdin>", "1", "positive"), ("<stdin>", "2", "negative"), (str(path), "1", "negative")]


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_table_inputs_keep_their_columns(tiny_model, tmp_path, suffix):
    rows = [{"id": "a", "review": POS, "stars": "9"}, {"id": "b", "review": NEG, "stars": "1"}]
    path = write_table(tmp_path / f"r{suffix}", rows)
    out = tmp_path / "out.jsonl"
    result = score(path, "--model", tiny_model, "--out", out)
    assert result.returncode == 0, result.stderr
    got = [json.loads(l) for l in out.read_text().splitlines()]
    assert [g["id"] for g in got] == ["a", "b"] and [g["stars"] for g in got] == ["9", "1"]
    assert [g["prediction"] for g in got] == ["positive", "negative"]
    assert [g["review"] for g in got] == [POS, NEG]


@pytest.mark.slow
def test_folder_of_txt_files(tiny_model, tmp_path):
    folder = tmp_path / "pos"
    folder.mkdir()
    (folder / "2_9.txt").write_text(POS)
    (folder / "1_1.txt").write_text(NEG)
    (folder / "urls.csv").write_text("ignored")
    result = score(folder, "--model", tiny_model)
    rows = _csv_rows(result.stdout)
    assert [(r["row"], r["prediction"]) for r in rows] == [("1_1.txt", "negative"), ("2_9.txt", "positive")]


@pytest.mark.slow
def test_parquet_output(tiny_model, tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "r.txt"
    path.write_text(f"{POS}\n{NEG}\n")
    out = tmp_path / "o.parquet"
    assert score(path, "--model", tiny_model, "--out", out).returncode == 0
    table = pq.read_table(out).to_pylist()
    assert [r["prediction"] for r in table] == ["positive", "negative"]


@pytest.mark.slow
def test_every_row_survives_empty_long_and_undecodable_lines(tiny_model, tmp_path):
    path = tmp_path / "r.txt"
    lines = [POS.encode(), b"", b"x " * 50_000, b"bad \xff\xfe bytes " + NEG.encode(), b"\r", NEG.encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = score(path, "--model", tiny_model, "--chunk-size", "2")
    assert result.returncode == 0, result.stderr
    rows = _csv_rows(result.stdout)
    assert [r["row"] for r in rows] == [str(i) for i in range(1, 7)]
    # "x" is not in the tiny model's vocabulary: rows 2, 3 and 5 have nothing to judge.
    assert [r["prediction"] for r in rows] == ["positive", "", "", "negative", "", "negative"]
    assert [r["known_words"] for r in rows] == ["4", "0", "0", "4", "0", "4"]
    assert ("rows read: 6, rows written: 6, rows with no known words (no prediction): 3; "
            "2 undecodable bytes in 1 rows were replaced with U+FFFD") in result.stderr


@pytest.mark.slow
def test_malformed_rows_stop_by_default_and_become_error_rows_with_skip(tiny_model, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"text": POS}) + "\n{broken\n" + json.dumps({"text": NEG}) + "\n")
    result = score(path, "--model", tiny_model)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {path}:2: malformed json line (Expecting property name enclosed in double quotes) "
        "(use --on-error skip to write it as an error row and go on)"]
    result = score(path, "--model", tiny_model, "--on-error", "skip")
    assert result.returncode == 0, result.stderr
    rows = _csv_rows(result.stdout)
    assert [r["row"] for r in rows] == ["1", "2", "3"]
    assert rows[1]["prediction"] == "" and rows[1]["error"].startswith(f"{path}:2: malformed json line")
    assert rows[2]["prediction"] == "negative"
    assert "rows read: 3, rows written: 3, error rows: 1" in result.stderr


@pytest.mark.slow
def test_bad_invocations_are_one_line(tiny_model, tmp_path):
    for args, message in [
        ((tmp_path / "missing.txt",), "missing.txt: no such file or directory"),
        ((tmp_path / "r.txt", "--out", tmp_path / "o.xlsx"), "cannot tell the format from the suffix"),
        ((tmp_path / "r.txt", "--format", "parquet"), "--format parquet needs --out FILE"),
        ((tmp_path / "r.txt", "--model", tmp_path), "config.json: missing"),
    ]:
        (tmp_path / "r.txt").write_text("x\n")
        model = () if "--model" in args else ("--model", tiny_model)
        result = score(*args, *model)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    path = write_table(tmp_path / "r.csv", [{"body": "x"}])
    result = score(path, "--model", tiny_model)
    assert result.returncode == 2 and "no text column (looked for text or review; columns: body)" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_an_output_that_is_an_input_is_refused_before_reading(tiny_model, tmp_path, suffix):
    path = write_table(tmp_path / f"same{suffix}", [{"text": POS}, {"text": NEG}])
    before = path.read_bytes()
    alias = tmp_path / "sub" / ".." / path.name  # the same file under another spelling
    (tmp_path / "sub").mkdir()
    for out in (path, alias):
        result = score(path, "--model", tiny_model, "--out", out)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == (f"error: --out {out} is the input {path}: scoring would replace it; "
                                         "write the scores to another file")
        assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same" + suffix, "sub"]  # no temporary file left


@pytest.mark.slow
def test_killed_run_leaves_no_partial_output(tiny_model, tmp_path):
    path = tmp_path / "big.txt"
    path.write_text((POS + "\n") * 300_000)
    out = tmp_path / "scores.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sentiment", "score", str(path), "--model", str(tiny_model),
                             "--out", str(out), "--chunk-size", "1000"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".scores.csv.") and p.stat().st_size > 0]:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()


def _peak_mb_of_score(path, model, out) -> tuple[int, str]:
    """Peak memory (MB) of ``sentiment score PATH``, measured around the command, and its stderr."""
    code = ("import resource, subprocess, sys; "
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.returncode); "
            "sys.stderr.write(r.stderr)")
    result = run_cli("-c", code, sys.executable, "-m", "sentiment", "score", path, "--model", model, "--out", out,
                     timeout=1200)
    peak_kb, returncode = map(int, result.stdout.split())
    assert returncode == 0, result.stderr
    return peak_kb // 1024, result.stderr


@pytest.mark.slow
def test_200_000_lines_in_the_memory_of_one(tiny_model, tmp_path):
    one, many = tmp_path / "one.txt", tmp_path / "many.txt"
    one.write_text(f"{POS}\n")
    with open(many, "w") as fh:
        for i in range(200_000):
            fh.write((POS if i % 2 else NEG) + f" {i}\n")
    base, _ = _peak_mb_of_score(one, tiny_model, tmp_path / "one.csv")
    out = tmp_path / "scores.csv"
    peak, stderr = _peak_mb_of_score(many, tiny_model, out)
    assert "rows read: 200000, rows written: 200000" in stderr
    # Measured: 13 MB over one line's peak (the buffers of a chunk of rows), and the same at
    # 1,000,000 lines; a scorer that held the rows read (about 400 bytes each) was 81 MB over.
    assert peak - base < 50, f"peak {peak} MB, {peak - base} MB over one line's"
    with open(out) as fh:
        assert sum(1 for _ in fh) == 200_001
