"""Where `sentiment score` writes, as a user meets it: only a regular file or a new path is
replaced, never an input under any name, a second scorer of the same output leaves the
first alone, and a broken standard stream or Ctrl-C is one line, never a traceback."""
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli, write_table

POS, NEG = "wonderful superb loved it", "awful boring hated it"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def score(*args, **kw):
    return run_cli("-m", "sentiment", "score", *args, **kw)


def one_error_line(result, status: int = 2) -> str:
    assert result.returncode == status, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def _special_files(folder: Path) -> dict[str, Path]:
    """A named pipe, a socket, a symbolic link and, where this user may make one, a copy of /dev/null."""
    made = {"fifo": folder / "pipe.csv", "socket": folder / "sock.csv", "link": folder / "link.csv"}
    os.mkfifo(made["fifo"])
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(made["socket"]))
    (folder / "target.csv").write_text("kept\n")
    made["link"].symlink_to(folder / "target.csv")
    try:
        os.mknod(folder / "null.csv", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        made["device"] = folder / "null.csv"
    except PermissionError:
        pass
    return made


@pytest.mark.slow
def test_an_output_that_is_not_a_regular_file_is_refused_before_any_work(tiny_model, tmp_path):
    reviews = tmp_path / "r.txt"
    reviews.write_text(f"{POS}\n")
    messages = {"fifo": "is a named pipe (FIFO); name a regular file or a new path",
                "socket": "is a socket; name a regular file or a new path",
                "link": f"is a symbolic link (to {tmp_path / 'target.csv'}); name the file itself or a new path",
                "device": "is a character device; name a regular file or a new path"}
    made = _special_files(tmp_path)
    before = {name: os.lstat(path) for name, path in made.items()}
    for kind, path in made.items():
        line = one_error_line(score(reviews, "--model", tiny_model, "--out", path))
        assert line == f"error: --out {path} {messages[kind]}", line
    # The same rule where evaluate writes a file the user named.
    labelled = write_table(tmp_path / "l.csv", [{"text": POS, "label": 1}, {"text": NEG, "label": 0}])
    line = one_error_line(run_cli("-m", "sentiment", "evaluate", "--model", tiny_model, "--data", labelled,
                                  "--json", made["fifo"]))
    assert line == f"error: --json {made['fifo']} {messages['fifo']}"
    for name, path in made.items():
        after = os.lstat(path)
        assert (after.st_ino, stat.S_IFMT(after.st_mode)) == (before[name].st_ino, stat.S_IFMT(before[name].st_mode))
    assert (tmp_path / "target.csv").read_text() == "kept\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_an_input_is_never_replaced_under_another_name(tiny_model, tmp_path):
    folder = tmp_path / "reviews"
    folder.mkdir()
    (folder / "a.txt").write_text(POS)
    (folder / "b.txt").write_text(NEG)
    os.link(folder / "a.txt", tmp_path / "a-again.txt")
    table = write_table(tmp_path / "in.csv", [{"text": POS}, {"text": NEG}])
    refuse = "scoring would replace it; write the scores to another file"
    for args, message, stdin in [
        ((folder, "--out", folder / "b.txt"), f"--out {folder / 'b.txt'} is b.txt of the input folder {folder}", None),
        ((folder, "--out", tmp_path / "a-again.txt"), f"--out {tmp_path / 'a-again.txt'} is a.txt of the input "
                                                     f"folder {folder}", None),
        (("-", "--out", table), f"--out {table} is the file on standard input", table),
    ]:
        with open(stdin or os.devnull, "rb") as fh:
            result = subprocess.run([sys.executable, "-m", "sentiment", "score", *map(str, args), "--format", "csv",
                                     "--model", str(tiny_model)], cwd=ROOT, env=ENV, stdin=fh, capture_output=True,
                                    text=True, timeout=600)
        assert one_error_line(result) == f"error: {message}: {refuse}"
    assert (folder / "a.txt").read_text() == POS and (folder / "b.txt").read_text() == NEG
    assert table.read_text().splitlines() == ["text", POS, NEG]


@pytest.mark.slow
def test_two_scorers_of_one_output_both_finish(tiny_model, tmp_path):
    out = tmp_path / "out.csv"
    first = subprocess.Popen([sys.executable, "-m", "sentiment", "score", "-", "--model", str(tiny_model),
                              "--out", str(out), "--chunk-size", "1"], cwd=ROOT, env=ENV, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first.stdin.write(POS + "\n")
        first.stdin.flush()
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob(".out.csv.*.tmp")):  # the first is writing, and waits for more input
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first scorer never started writing"
            time.sleep(0.05)
        (tmp_path / "second.txt").write_text(NEG + "\n")
        second = score(tmp_path / "second.txt", "--model", tiny_model, "--out", out, timeout=300)
        assert second.returncode == 0, second.stderr
        assert list(tmp_path.glob(".out.csv.*.tmp")), "the second scorer removed the first one's file"
        stdout, stderr = first.communicate(NEG + "\n", timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    assert "rows read: 2, rows written: 2" in stderr
    assert [line.split(",")[2] for line in out.read_text().splitlines()[1:]] == ["positive", "negative"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "second.txt"]


def _shell(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_broken_standard_streams_are_one_line(tiny_model, tmp_path):
    reviews = tmp_path / "r.txt"
    reviews.write_text(f"{POS}\n" * 5000)  # more than a buffer's worth
    run = f"{sys.executable} -m sentiment score {reviews} --model {tiny_model}"
    assert one_error_line(_shell(f"{run} > /dev/full")) == \
        "error: standard output: writing failed (No space left on device)"
    assert one_error_line(_shell(f"{run} >&-")) == "error: standard output is closed: name a file with --out"
    assert one_error_line(_shell(f"{sys.executable} -m sentiment score - --model {tiny_model} <&-")) == \
        "error: -: standard input is closed; name a file to score"
    # A closed stdout takes nothing from --out, and a closed stderr puts nothing into it.
    assert _shell(f"{run} --out {tmp_path / 'o.csv'} >&- 2>&-").returncode == 0
    assert len((tmp_path / "o.csv").read_text().splitlines()) == 5001
    # evaluate prints its table: the same one line when standard output cannot take it.
    labelled = write_table(tmp_path / "l.csv", [{"text": POS, "label": 1}, {"text": NEG, "label": 0}])
    result = _shell(f"{sys.executable} -m sentiment evaluate --model {tiny_model} --data {labelled} > /dev/full")
    assert one_error_line(result) == "error: standard output: writing failed (No space left on device)"


# Runs a command, but Ctrl-C arrives at a chosen moment of its start-up: when torch is first
# imported, or when the model's weights are read.
CTRL_C_AT = """
import importlib.abc, runpy, signal, sys
when, entry = sys.argv[1], sys.argv[2]

class CtrlCOnTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            signal.raise_signal(signal.SIGINT)
        return None

if when == "import":
    sys.meta_path.insert(0, CtrlCOnTorch())
else:
    import safetensors.torch
    load = safetensors.torch.load_file
    def load_file(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return load(*args, **kwargs)
    safetensors.torch.load_file = load_file
sys.argv = [entry, *sys.argv[3:]]
if entry == "train.py":
    runpy.run_path("train.py", run_name="__main__")
else:
    runpy.run_module("sentiment", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("when, entry", [("import", "sentiment"), ("load", "sentiment"), ("import", "train.py")])
def test_ctrl_c_during_start_up_is_one_line_and_130(tiny_model, tmp_path, when, entry):
    reviews = tmp_path / "r.txt"
    reviews.write_text(f"{POS}\n")
    args = ["score", reviews, "--model", tiny_model] if entry == "sentiment" else ["--data", reviews,
                                                                                     "--out", tmp_path / "run"]
    result = run_cli("-c", CTRL_C_AT, when, entry, *args)
    said = one_error_line(result, status=130)
    if entry == "train.py":  # train.py says more: that nothing was written and how to start again
        assert said == "interrupted while train.py started: nothing was written; the same command runs it again"
    else:
        assert said == "interrupted"
    assert result.stdout == "" and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_skip_goes_on_when_the_first_chunk_is_only_error_rows(tiny_model, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": 1}\n{"text": 2}\n' + f'{{"text": "{POS}"}}\n{{"text": "{NEG}"}}\n')
    for suffix in (".csv", ".parquet"):
        out = tmp_path / f"o{suffix}"
        result = score(path, "--model", tiny_model, "--on-error", "skip", "--chunk-size", "2", "--out", out)
        assert result.returncode == 0, result.stderr
        assert "rows read: 4, rows written: 4, error rows: 2" in result.stderr
        if suffix == ".csv":
            import csv

            rows = list(csv.DictReader(out.open()))
        else:
            import pyarrow.parquet as pq

            rows = pq.read_table(out).to_pylist()
        assert [r["row"] for r in rows] == ["1", "2", "3", "4"]
        assert [r["prediction"] or None for r in rows] == [None, None, "positive", "negative"]
        assert [r["text"] or None for r in rows] == [None, None, POS, NEG]
        assert rows[0]["error"] == f"{path}:1: field 'text' is a number (1), not text"
