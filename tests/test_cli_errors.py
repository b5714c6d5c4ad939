"""Bad input ends with one clear line on stderr and exit status 2, never a traceback."""
import pytest

from conftest import run_cli, write_table


def _one_error_line(result):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.slow
def test_missing_data_path(tmp_path):
    line = _one_error_line(run_cli("train.py", "--data", tmp_path / "missing.tar.gz"))
    assert "missing.tar.gz: no such file or directory" in line


@pytest.mark.slow
def test_csv_without_the_named_column(tmp_path):
    path = write_table(tmp_path / "r.csv", [{"review": "good", "label": "1"}])
    line = _one_error_line(run_cli("train.py", "--data", path))
    assert "r.csv: no text column 'text' (columns: review, label); choose one with --text-column" in line


@pytest.mark.slow
def test_a_label_outside_the_given_classes_with_where(tmp_path):
    path = write_table(tmp_path / "r.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "great"}])
    line = _one_error_line(run_cli("train.py", "--data", path, "--labels", "negative,positive"))
    assert line.endswith(f"{path}:2: label 'great' in column 'label' is not one of the classes negative, positive")


@pytest.mark.slow
def test_empty_split(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text,label\n")
    assert "train split is empty" in _one_error_line(run_cli("train.py", "--data", path))


@pytest.mark.slow
def test_resume_of_a_folder_without_checkpoint(tmp_path):
    assert "checkpoint.pt: missing" in _one_error_line(run_cli("train.py", "--resume", tmp_path))


@pytest.mark.parametrize("option, value, message", [
    ("--epochs", "0", "--epochs must be at least 1"),
    ("--dropout", "1.5", "--dropout must be in [0, 1)"),
    ("--validation-fraction", "1", "--validation-fraction must be between 0 and 1"),
])
def test_bad_option_values_name_the_option(tmp_path, option, value, message):
    assert message in _one_error_line(run_cli("train.py", option, value))


@pytest.mark.slow
def test_undecodable_bytes_are_reported_not_fatal(tmp_path):
    path = tmp_path / "r.csv"
    rows = b"".join(b"nice film \xff,1\n" if i % 2 else b"bad film,0\n" for i in range(40))
    path.write_bytes(b"text,label\n" + rows)
    result = run_cli("train.py", "--data", path, "--epochs", "1", "--out", tmp_path / "run", "--hidden-size", "8",
                     "--embedding-dim", "8")
    assert result.returncode == 0, result.stderr
    assert "undecodable bytes were replaced with U+FFFD (train: 20 bytes in 20 reviews)" in result.stderr
    assert "data: 36 train, 4 validation, 0 test reviews" in result.stdout
    assert "validation metrics of the best epoch" in result.stdout
