"""A bundle is checked against fixed limits before anything is allocated for it, and every
number it gives is a number: what a doctored or foreign bundle gets is one line, not a machine
out of memory, a traceback or a verdict made of NaN."""
import json
import os
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT, write_table
from sentiment import load_bundle
from sentiment.bundle import _sha256, save_bundle, shipped_bundles
from sentiment.errors import SentimentError
from sentiment.models import MODEL_KINDS, ModelConfig, SentimentRNN
from sentiment.text import TextEncoder, train_tokenizer

MEMORY_LIMIT = 3 << 30  # a bundle that asks for more than this is refused long before it


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_limited(*args, input=None):
    """``python *args`` as a user runs it, in at most MEMORY_LIMIT of memory: a bundle that takes
    all memory fails there, not on the machine."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, input=input, preexec_fn=_limit_memory)


@pytest.fixture
def small(tmp_path):
    encoder = TextEncoder(train_tokenizer(["a great film", "an awful film"], 50), max_len=10, truncate="tail")
    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(kind="lstm", vocab_size=encoder.vocab_size, embedding_dim=4, hidden_size=8))
    return save_bundle(tmp_path / "small", model, encoder, {})


def doctored(bundle, folder, **sections):
    """A copy of ``bundle`` in ``folder`` whose config.json has ``sections`` merged into its own."""
    shutil.copytree(bundle, folder)
    config = json.loads((folder / "config.json").read_text())
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_weight_shapes_are_exactly_those_of_the_built_model(kind):
    for layers in (1, 3):
        config = ModelConfig(kind=kind, vocab_size=20, embedding_dim=3, hidden_size=5, num_layers=layers)
        built = {name: tuple(t.shape) for name, t in SentimentRNN(config).state_dict().items()}
        assert config.weight_shapes() == built


@pytest.mark.slow
def test_a_million_layers_are_refused_in_one_line_before_any_memory_is_taken(small, tmp_path):
    bundle = doctored(small, tmp_path / "deep", model={"num_layers": 1_000_000})
    line = one_error_line(run_limited("-m", "sentiment", "score", "-", "--model", bundle, input="a great film\n"))
    assert line == (f"error: {bundle / 'config.json'}: bad 'model' section "
                    "(num_layers must be at most 16 (got 1,000,000))")


@pytest.mark.slow
def test_every_size_and_file_is_checked_against_its_limit_first(small, tmp_path):
    cases = {
        "hidden": (doctored(small, tmp_path / "hidden", model={"hidden_size": 10**9}),
                   "config.json: bad 'model' section (hidden_size must be at most 4,096 (got 1,000,000,000))"),
        "embedding": (doctored(small, tmp_path / "embedding", model={"embedding_dim": 10**7}),
                      "config.json: bad 'model' section (embedding_dim must be at most 4,096"),
        "vocab": (doctored(small, tmp_path / "vocab", model={"vocab_size": 10**10}),
                  "config.json: bad 'model' section (vocab_size must be at most 1,000,000"),
        "max_len": (doctored(small, tmp_path / "max_len", text={"max_len": 10**12}),
                    "config.json: bad 'text' section (max_len must be at most 5,000 (got 1,000,000,000,000))"),
    }
    # Files padded past their limits (JSON allows trailing spaces; a sparse file costs no disk).
    for name, size in (("config.json", (1 << 20) + 1), ("tokenizer.json", (32 << 20) + 1)):
        folder = tmp_path / name.split(".")[0]
        shutil.copytree(small, folder)
        with open(folder / name, "a") as fh:
            fh.write(" " * (size - (folder / name).stat().st_size))
        cases[name] = (folder, f"{name}: {size:,} bytes, above the {size - 1:,} a bundle's {name} may have")
    folder = doctored(small, tmp_path / "weights", weights={"sha256": None})
    os.truncate(folder / "model.safetensors", (1 << 30) + 1)
    cases["weights"] = (folder, f"model.safetensors: {(1 << 30) + 1:,} bytes, above the {1 << 30:,}")
    script = ("import sys\nfrom sentiment import load_bundle\nfrom sentiment.errors import SentimentError\n"
              "for path in sys.argv[1:]:\n"
              "    try:\n        load_bundle(path)\n        print('loaded')\n"
              "    except SentimentError as exc:\n        print(str(exc).replace(chr(10), ' '))\n")
    result = run_limited("-c", script, *(folder for folder, _ in cases.values()))
    assert result.returncode == 0, result.stderr[-2000:]
    said = result.stdout.splitlines()
    assert len(said) == len(cases)
    for (name, (folder, expected)), line in zip(cases.items(), said):
        assert line.startswith(str(folder)) and expected in line, (name, line)


def test_layers_the_weights_do_not_hold_are_named_from_the_header_in_one_short_line(small, tmp_path):
    bundle = doctored(small, tmp_path / "deeper", model={"num_layers": 16})
    with pytest.raises(SentimentError) as caught:
        load_bundle(bundle)
    message = str(caught.value)
    assert message.startswith(f"{bundle / 'model.safetensors'}: tensors do not match a lstm model (missing: "
                              "encoder.layers.1.0.weight_ih_l0, encoder.layers.1.0.weight_hh_l0")
    assert message.endswith("and 56 more; unexpected: none)")


@pytest.mark.slow
def test_a_tokenizer_of_another_shipped_model_is_refused(tmp_path):
    for bundle in shipped_bundles():
        recorded = json.loads((bundle / "config.json").read_text())["tokenizer"]["sha256"]
        assert recorded == _sha256(bundle / "tokenizer.json")
    rnn = tmp_path / "rnn"
    shutil.copytree(ROOT / "models" / "rnn", rnn)
    shutil.copy(ROOT / "models" / "lstm" / "tokenizer.json", rnn / "tokenizer.json")
    result = run_limited("-m", "sentiment", "score", "-", "--model", rnn, input="bad film\n")
    assert one_error_line(result) == (f"error: {rnn / 'tokenizer.json'}: content does not match the sha256 "
                                      "recorded in config.json (from another run, or replaced)")


def _with_weights(bundle, folder, change):
    """A copy of ``bundle`` whose weights ``change`` edits, their new hash recorded: only the values are wrong."""
    shutil.copytree(bundle, folder)
    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    config["weights"]["sha256"] = _sha256(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.slow
def test_nan_weights_are_refused_by_evaluate_in_one_line(small, tmp_path):
    bundle = _with_weights(small, tmp_path / "nan", lambda state: state["head.weight"].fill_(float("nan")))
    data = write_table(tmp_path / "l.csv", [{"text": "a great film", "label": 1},
                                            {"text": "an awful film", "label": 0}])
    result = run_limited("-m", "sentiment", "evaluate", "--model", bundle, "--data", data)
    assert one_error_line(result) == (f"error: {bundle / 'model.safetensors'}: tensor head.weight holds NaN or "
                                      "infinite values; every weight must be a finite number")


def test_weights_too_large_to_compute_with_are_refused(small, tmp_path):
    def overflow(state):
        state["head.weight"].fill_(3e38)
        state["head.bias"].fill_(3e38)

    bundle = _with_weights(small, tmp_path / "huge", overflow)
    with pytest.raises(SentimentError, match=r"model.safetensors: tensor head.bias holds values beyond 65,504; "
                                             r"every weight must be within that \(the largest float16\)$"):
        load_bundle(bundle)


@pytest.mark.parametrize("calibration, at", [
    ({"method": "temperature", "temperature": 1e-300}, "at 1 words"),
    ({"method": "length_temperature", "log_t": 1e308, "slope": 0.0}, "at 1 words"),
    ({"method": "length_temperature", "log_t": 0.0, "slope": -1e308}, "at 10 words"),
    ({"method": "length_temperature", "log_t": 0.0, "slope": 7.0}, "at 10 words"),  # T = 10**7 at max_len 10
])
def test_calibrations_that_leave_the_temperature_range_are_refused(small, tmp_path, calibration, at):
    bundle = tmp_path / "hot"
    shutil.copytree(small, bundle)
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps({**config, "calibration": calibration}))
    with pytest.raises(SentimentError, match=rf"config.json: bad 'calibration' section \(T = exp\(log_t \+ slope "
                                             rf"\* ln n\) must stay within \[1e-06, 1e\+06\] for every length up "
                                             rf"to max_len 10, .*{at}\)"):
        load_bundle(bundle)


def test_lone_surrogates_are_read_as_replacement_characters(small):
    classifier = load_bundle(small)
    found = classifier(["\ud800 great", "awful \udcff film \ud83d\ude00"])
    assert found == classifier(["\ufffd great", "awful \ufffd film \ufffd\ufffd"])
    assert found[0]["label"] is not None and found[0]["known_words"] == 1
    assert np.array_equal(classifier.predict_proba(["\ud800 great"]), classifier.predict_proba(["great"]))
    explained = classifier.explain("\ud800 great")
    assert explained.text == "\ufffd great" and explained.words == ["great"] and explained.spans == [(2, 7)]


@pytest.mark.slow
def test_calibrate_refuses_data_other_than_the_bundles_own(tiny_model, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_model, bundle)
    before = (bundle / "config.json").read_text()
    recorded = json.loads(before)["data_fingerprint"]
    rows = [{"text": f"review {i} {'great' if i % 2 else 'awful'}", "label": i % 2} for i in range(20)]
    other = write_table(tmp_path / "other.csv", rows)
    from sentiment.data import fingerprint

    result = run_limited("-m", "sentiment", "calibrate", "--model", bundle, "--data", other)
    line = one_error_line(result)
    assert f"(fingerprint {recorded})" in line and f"but {other} has fingerprint {fingerprint(other)}" in line
    assert "--allow-other-data" in line
    assert (bundle / "config.json").read_text() == before
    forced = run_limited("-m", "sentiment", "calibrate", "--model", bundle, "--data", other, "--allow-other-data")
    assert forced.returncode == 0, forced.stderr[-2000:]
    calibration = json.loads((bundle / "config.json").read_text())["calibration"]
    assert calibration["other_data"] == {"data": str(other), "data_fingerprint": fingerprint(other)}
