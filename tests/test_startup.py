"""Each command imports only what it runs (start-up time is mostly imports: torch alone is
about 1.5 s here, and training, scikit-learn, datasets and matplotlib add over a second)."""
import json

import pytest

from conftest import run_cli, write_table

HEAVY = ("sentiment.train.training", "sentiment.train.pretrain", "sklearn", "datasets", "matplotlib", "ray")

# Runs a command in this process and prints, at exit, the top-level modules it imported.
WRAP = """import json, runpy, sys
def report():
    print("MODULES " + json.dumps(sorted({m if m.startswith("sentiment.") else m.split(".")[0] for m in sys.modules})),
          file=sys.stderr)
import atexit; atexit.register(report)
sys.argv = ["sentiment", *sys.argv[1:]]
runpy.run_module("sentiment", run_name="__main__")
"""


def imported(result) -> set[str]:
    line = next(l for l in result.stderr.splitlines() if l.startswith("MODULES "))
    return set(json.loads(line[len("MODULES "):]))


@pytest.mark.slow
def test_score_imports_no_training_code(tiny_model, tmp_path):
    (tmp_path / "one.txt").write_text("a wonderful film\n")
    result = run_cli("-c", WRAP, "score", tmp_path / "one.txt", "--model", tiny_model)
    assert result.returncode == 0, result.stderr
    modules = imported(result)
    assert "sentiment.scoring.score" in modules and "torch" in modules
    assert not modules & set(HEAVY), modules & set(HEAVY)


@pytest.mark.slow
def test_serve_imports_no_training_code(tiny_model):
    script = ("import sys, json; from sentiment.serve.server import build_server, load_models; "
              f"build_server(load_models([{str(tiny_model)!r}])); "
              "print(json.dumps(sorted({m if m.startswith('sentiment.') else m.split('.')[0] for m in sys.modules})))")
    result = run_cli("-c", script)
    assert result.returncode == 0, result.stderr
    modules = set(json.loads(result.stdout.splitlines()[-1]))
    assert "gradio" in modules and "fastapi" in modules
    assert not modules & set(HEAVY), modules & set(HEAVY)


@pytest.mark.slow
def test_evaluate_without_plots_imports_no_training_or_plotting(tiny_model, tmp_path):
    data = write_table(tmp_path / "l.csv", [{"text": "wonderful superb", "label": 1},
                                            {"text": "awful boring", "label": 0}])
    result = run_cli("-c", WRAP, "evaluate", "--model", tiny_model, "--data", data)
    assert result.returncode == 0, result.stderr
    modules = imported(result)
    # evaluate reads labelled data through the datasets cache and computes scikit-learn's metrics.
    assert not modules & {"sentiment.train.training", "sentiment.train.pretrain", "matplotlib", "ray"}
