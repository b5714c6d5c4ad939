"""`sentiment score` on hostile and unusual input files: every row comes out, or one line says why not."""
import csv
import io
import json

import pytest

from conftest import run_cli, write_table

POS, NEG = "wonderful superb loved it", "awful boring hated it"


def score(*args, **kw):
    return run_cli("-m", "sentiment", "score", *args, **kw)


def _csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def _one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.slow
def test_a_lone_surrogate_in_jsonl_is_replaced_and_counted(tiny_model, tmp_path):
    # "\ud800" is a valid JSON escape but half of a UTF-16 pair: no text can hold it alone.
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "' + POS + ' \\ud800", "note": "x"}\n'
                    '{"text": "' + NEG + '", "note": "\\udc00\\ud83d\\ude00"}\n')
    result = score(path, "--model", tiny_model, "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == [POS + " \ufffd", NEG]
    assert rows[1]["note"] == "\ufffd\U0001f600"  # a proper pair stays the character it names
    assert [r["prediction"] for r in rows] == ["positive", "negative"]
    assert "2 undecodable bytes in 2 rows were replaced with U+FFFD" in result.stderr


@pytest.mark.slow
def test_deep_nesting_and_huge_integers_in_jsonl_are_error_rows(tiny_model, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join([json.dumps({"text": POS, "n": 1}) + "\n",
                             '{"text": "x", "n": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
                             '{"text": "x", "n": ' + "1" * 4301 + "}\n",
                             json.dumps({"text": NEG, "n": [[1, [2]]]}) + "\n"]))
    result = score(path, "--model", tiny_model, "--on-error", "skip")
    assert result.returncode == 0, result.stderr
    rows = _csv_rows(result.stdout)
    assert [r["row"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["prediction"] for r in rows] == ["positive", "", "", "negative"]
    assert rows[1]["error"] == f"{path}:2: malformed json line: nested more than 100 deep"
    assert rows[2]["error"] == f"{path}:3: malformed json line: an integer of more than 4,300 digits"
    assert "rows read: 4, rows written: 4, error rows: 2" in result.stderr
    # Without --on-error skip, the first of them stops the run in one line.
    line = _one_line_error(score(path, "--model", tiny_model))
    assert line.startswith(f"error: {path}:2: malformed json line: nested more than 100 deep")


@pytest.mark.slow
def test_a_duplicate_json_key_is_refused_with_its_line_and_key(tiny_model, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"text": POS}) + '\n{"text": "' + POS + '", "text": "' + NEG + '"}\n')
    line = _one_line_error(score(path, "--model", tiny_model))
    assert line.startswith(f"error: {path}:2: malformed json line: the key 'text' appears more than once")
    rows = _csv_rows(score(path, "--model", tiny_model, "--on-error", "skip").stdout)
    assert [(r["prediction"], bool(r["error"])) for r in rows] == [("positive", False), ("", True)]


@pytest.mark.slow
def test_utf16_without_a_byte_order_mark_is_refused_not_scored(tiny_model, tmp_path):
    for name in ("r.txt", "r.csv", "r.jsonl"):
        path = tmp_path / name
        body = {"r.txt": f"{POS}\n{NEG}\n{POS}\n", "r.csv": f"text\n{POS}\n{NEG}\n",
                "r.jsonl": json.dumps({"text": POS}) + "\n"}[name]
        path.write_bytes(body.encode("utf-16-le"))
        result = score(path, "--model", tiny_model, "--on-error", "skip")
        assert _one_line_error(result).startswith(f"error: {path}: not UTF-8 text: it holds NUL bytes (UTF-16")
        assert result.stdout == ""
    # A NUL byte in one line of a UTF-8 file makes that line an error row, not a verdict.
    path = tmp_path / "nul.txt"
    path.write_bytes(f"{POS}\n{NEG}\0\n{NEG}\n".encode())
    rows = _csv_rows(score(path, "--model", tiny_model, "--on-error", "skip").stdout)
    assert [r["prediction"] for r in rows] == ["positive", "", "negative"]
    assert rows[1]["error"] == f"{path}:2: holds a NUL byte: binary data, not text"


@pytest.mark.slow
def test_a_long_csv_field_is_read(tiny_model, tmp_path):
    path = write_table(tmp_path / "r.csv", [{"id": "1", "text": " ".join([POS] * 30_000)}, {"id": "2", "text": NEG}])
    assert path.stat().st_size > 500_000
    result = score(path, "--model", tiny_model, "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(len(r["text"]), r["prediction"]) for r in rows] == [(30_000 * (len(POS) + 1) - 1, "positive"),
                                                                  (len(NEG), "negative")]


@pytest.mark.slow
def test_blank_lines_at_the_end_of_a_csv_are_no_rows_but_one_between_rows_is_kept(tiny_model, tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(f"id,text\n1,{POS}\n2,{NEG}\n\n")
    result = score(path, "--model", tiny_model)
    assert result.returncode == 0, result.stderr
    assert [r["row"] for r in _csv_rows(result.stdout)] == ["2", "3"]
    assert "rows read: 2, rows written: 2" in result.stderr
    # A blank line between rows is not dropped: it stops the run, or is an error row.
    path.write_text(f"id,text\n1,{POS}\n\n2,{NEG}\n\n\n")
    assert _one_line_error(score(path, "--model", tiny_model)).startswith(
        f"error: {path}:3: malformed csv row: a blank line")
    rows = _csv_rows(score(path, "--model", tiny_model, "--on-error", "skip").stdout)
    assert [(r["row"], r["prediction"], bool(r["error"])) for r in rows] == [
        ("2", "positive", False), ("3", "", True), ("4", "negative", False)]


@pytest.mark.slow
def test_a_tsv_field_that_starts_with_a_quote_is_text(tiny_model, tmp_path):
    path = tmp_path / "r.tsv"
    path.write_text('id\ttext\n1\t"Wonderful" superb loved it\n'
                    '2\t"quoted\tfield, ""doubled"" quotes"\n3\t"two\nlines"\n')
    result = score(path, "--model", tiny_model, "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    # Quotes that enclose a whole field still quote it (tabs, line breaks, doubled quotes inside).
    assert [(r["row"], r["text"]) for r in rows] == [
        ("2", '"Wonderful" superb loved it'), ("3", 'quoted\tfield, "doubled" quotes'), ("4", "two\nlines")]
    assert rows[0]["prediction"] == "positive"


def _ray_available() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.skipif(not _ray_available(), reason='Ray Data is not installed: pip install -e ".[ray]"')
def test_a_lone_surrogate_is_replaced_on_ray_too(tiny_model, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "' + POS + ' \\ud800"}\n{"text": "' + NEG + '"}\n')
    out = tmp_path / "scores"
    result = score(path, "--engine", "ray", "--workers", "1", "--model", tiny_model, "--format", "jsonl",
                   "--out", out, env_extra={"RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": None})
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for part in sorted(out.glob("*.json")) for line in part.read_text().splitlines()]
    assert [(r["text"], r["prediction"]) for r in rows] == [(POS + " \ufffd", "positive"), (NEG, "negative")]
