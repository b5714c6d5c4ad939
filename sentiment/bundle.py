"""The model bundle: a directory with ``config.json``, ``tokenizer.json``, ``model.safetensors``.

No pickle: weights are safetensors, everything else is JSON, so loading a bundle
cannot run code. Writing is atomic, and loading says exactly what does not match.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .calibration import Calibration
from .data import LABELS
from .card import CARD, card_markdown, write_card
from .errors import SentimentError
from .files import exchange, umask, write_text_atomic
from .models import MODEL_KINDS, ModelConfig, SentimentRNN
from .predict import Classifier
from .text import TextEncoder

FORMAT_VERSION = 1
CONFIG, TOKENIZER, WEIGHTS = "config.json", "tokenizer.json", "model.safetensors"
BUNDLE_FILES = (WEIGHTS, TOKENIZER, CONFIG)  # config last: it names the weights' hash
# The largest bundle files read, checked before a byte is: far above the shipped ones
# (config.json 5 KB; tokenizer.json 226 KB for 10,002 words, where 1,000,000 words take about
# 22 MB and 300 MB of memory to load; model.safetensors 2.8-8.3 MB).
FILE_LIMITS = {CONFIG: 1 << 20, TOKENIZER: 32 << 20, WEIGHTS: 1 << 30}
# A safetensors header names each tensor once: a 16-layer bilstm's takes about 15 KB.
MAX_WEIGHTS_HEADER = 1 << 20
WEIGHT_DTYPES = ("F32", "F16", "BF16")
# Weights within float16's range keep every logit finite (the recurrent states are within
# [-1, 1]), so no review's probability comes out NaN; trained weights are far smaller.
LARGEST_WEIGHT = 65504.0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_bundle(path: str | Path, model: SentimentRNN, encoder: TextEncoder, config: dict,
                weights_dtype: str = "float32") -> Path:
    """Write a bundle to ``path`` atomically; ``config`` is merged with what loading needs.

    A new directory appears whole by one rename. An existing one (a run folder that also
    holds checkpoints) is rebuilt beside itself, its other files hard-linked in, and the
    two folders are swapped in one step: a process killed at any moment leaves the old
    bundle or the new one. Where the system cannot swap, each file is replaced by rename,
    ``config.json`` last; it records the sha256 of the weights and the tokenizer, so a
    bundle caught between two renames is refused when loaded, never read as a mix.
    """
    path = Path(path)
    labels = [str(label) for label in (config.get("labels") or LABELS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(path)
    dtype = {"float32": torch.float32, "float16": torch.float16}[weights_dtype]
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format_version": str(FORMAT_VERSION)})
        encoder.save(tmp / TOKENIZER)
        full = {
            "format_version": FORMAT_VERSION,
            **config,
            "model": model.config.to_dict(),
            "text": {"max_len": encoder.max_len, "truncate": encoder.truncate,
                     "vocab_size": encoder.vocab_size},
            # The classes in the order of the head's outputs, and the maps Hugging Face configs hold.
            "labels": labels,
            "id2label": {str(i): label for i, label in enumerate(labels)},
            "label2id": {label: i for i, label in enumerate(labels)},
            "weights": {"dtype": weights_dtype, "sha256": _sha256(tmp / WEIGHTS)},
            "tokenizer": {"sha256": _sha256(tmp / TOKENIZER)},
        }
        (tmp / CONFIG).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
        (tmp / CARD).write_text(card_markdown(full))
        # mkdtemp makes a private folder; a bundle is as readable as any file the user writes.
        mask = umask()
        os.chmod(tmp, 0o777 & ~mask)
        for name in (*BUNDLE_FILES, CARD):
            os.chmod(tmp / name, 0o666 & ~mask)
        if not path.exists():
            os.rename(tmp, path)
            return path
        try:
            for entry in path.iterdir():
                if entry.name not in (*BUNDLE_FILES, CARD):
                    os.link(entry, tmp / entry.name, follow_symlinks=False)  # a folder inside: OSError
            exchange(tmp, path)  # tmp now holds the old bundle, removed below
        except OSError:
            for name in (*BUNDLE_FILES, CARD):
                os.replace(tmp / name, path / name)
        return path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clear_leftovers(path: Path) -> None:
    """Remove what a writer of the bundle ``path`` killed mid-way left beside it."""
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)


SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "models"
DEFAULT_KINDS = tuple(reversed(MODEL_KINDS))  # the order among equals: the most capable kind first


def shipped_bundles(root: Path = SHIPPED_MODELS) -> list[Path]:
    """The bundles in ``root`` (models/): one folder per kind with a config.json, in ``DEFAULT_KINDS`` order."""
    return [root / kind for kind in DEFAULT_KINDS if (root / kind / CONFIG).is_file()]


def default_model_dir(root: Path = SHIPPED_MODELS) -> Path:
    """The shipped model that surfaces load when no ``--model`` is given: the one with the
    best validation accuracy (test accuracy never makes a choice), ``DEFAULT_KINDS`` order among equals."""
    shipped = shipped_bundles(root)
    if not shipped:
        raise SentimentError(f"no --model given and no shipped model in {root}; "
                             "train one with `python train.py` and pass --model DIR")

    def validation_accuracy(folder: Path) -> float:
        try:
            return float(read_config(folder)["metrics"]["validation"]["accuracy"])
        except (SentimentError, ValueError, KeyError, TypeError):
            return -1.0

    # max keeps the first of equals, and ``shipped`` is in DEFAULT_KINDS order.
    return max(shipped, key=validation_accuracy)


def model_names(paths: list[str]) -> list[str]:
    """Display names for model folders: folder names, made unique (full paths, then #2, #3 ...)."""
    short = [Path(p).name or str(p) for p in paths]
    names = [s if short.count(s) == 1 else str(p) for s, p in zip(short, paths)]
    return [n if names[:i].count(n) == 0 else f"{n}#{names[:i].count(n) + 1}" for i, n in enumerate(names)]


def read_config(path: str | Path) -> dict:
    """The bundle's ``config.json``, checked for its format version."""
    path = Path(path)
    if not path.is_dir():
        raise SentimentError(f"{path}: no such model directory")
    file = path / CONFIG
    if not file.is_file():
        raise SentimentError(f"{file}: missing (not a model bundle; expected {', '.join(BUNDLE_FILES)})")
    check_file_size(file)
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SentimentError(f"{file}: not valid JSON ({exc})") from None
    version = config.get("format_version") if isinstance(config, dict) else None
    if version != FORMAT_VERSION:
        raise SentimentError(f"{file}: format_version {version!r} is not supported "
                             f"(this version of sentiment reads format_version {FORMAT_VERSION})")
    for key in ("model", "text", "weights"):
        if not isinstance(config.get(key), dict):
            raise SentimentError(f"{file}: missing the {key!r} section")
    return config


def rewrite_config(path: str | Path, config: dict) -> None:
    """Replace a finished bundle's ``config.json`` (new metrics or calibration; weights and
    tokenizer untouched, so their hashes still hold) and refresh its model card to match."""
    write_text_atomic(Path(path) / CONFIG, json.dumps(config, indent=2) + "\n")
    write_card(path, config)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or one clear error naming the file."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SentimentError(f"{path}: not a valid safetensors file ({exc})") from None


def shape_mismatch(state: dict, expected: dict) -> tuple[str, tuple, tuple] | None:
    """The first tensor of ``expected`` whose shape ``state`` does not match: (name, found, wanted)."""
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            return name, tuple(state[name].shape), tuple(tensor.shape)
    return None


def check_file_size(path: Path) -> None:
    """Refuse a bundle file larger than ``FILE_LIMITS`` allows, before reading it."""
    limit = FILE_LIMITS[path.name]
    size = path.stat().st_size if path.is_file() else 0
    if size > limit:
        raise SentimentError(f"{path}: {size:,} bytes, above the {limit:,} a bundle's {path.name} may have")


def declared_tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each tensor's dtype and shape as the safetensors header declares them, read without the tensors."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    length = int.from_bytes(head, "little")
    if len(head) < 8 or length > MAX_WEIGHTS_HEADER:
        raise SentimentError(f"{path}: not a valid safetensors file (a header of {length:,} bytes; "
                             f"a bundle's may have {MAX_WEIGHTS_HEADER:,})")
    try:
        with safe_open(str(path), framework="pt") as fh:
            slices = {name: fh.get_slice(name) for name in fh.keys()}
            return {name: (s.get_dtype(), tuple(s.get_shape())) for name, s in slices.items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise SentimentError(f"{path}: not a valid safetensors file ({exc})") from None


def _listed(names: list[str], most: int = 4) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "") or "none"


def read_weights(path: Path, config: dict, model_config: ModelConfig) -> dict[str, torch.Tensor]:
    """The bundle's weights, read only once their file's header declares exactly the tensors
    ``model_config`` implies (names, shapes, a float dtype), and refused unless all are finite."""
    weights = path / WEIGHTS
    if not weights.is_file():
        raise SentimentError(f"{weights}: missing")
    check_file_size(weights)
    expected_hash = config["weights"].get("sha256")
    if expected_hash and _sha256(weights) != expected_hash:
        raise SentimentError(f"{weights}: content does not match the sha256 recorded in {CONFIG} "
                             "(truncated, or replaced by another model's weights)")
    declared = declared_tensors(weights)
    expected = model_config.weight_shapes()
    missing = [name for name in expected if name not in declared]
    unexpected = [name for name in declared if name not in expected]
    if missing or unexpected:
        raise SentimentError(f"{weights}: tensors do not match a {model_config.kind} model "
                             f"(missing: {_listed(missing)}; unexpected: {_listed(unexpected)})")
    for name, shape in expected.items():
        dtype, found = declared[name]
        if found != shape:
            raise SentimentError(f"{weights}: tensor {name} has shape {found}, {CONFIG} implies {shape}")
        if dtype not in WEIGHT_DTYPES:
            raise SentimentError(f"{weights}: tensor {name} is {dtype}; weights are one of {', '.join(WEIGHT_DTYPES)}")
    state = read_tensors(weights)
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise SentimentError(f"{weights}: tensor {name} holds NaN or infinite values; every weight must be "
                                 "a finite number")
        if tensor.abs().max() > LARGEST_WEIGHT:
            raise SentimentError(f"{weights}: tensor {name} holds values beyond {LARGEST_WEIGHT:,.0f}; every weight "
                                 "must be within that (the largest float16)")
    return state


def _text_encoder(path: Path, config: dict) -> TextEncoder:
    """The bundle's tokenizer, checked against the hash ``config.json`` records (where it does)."""
    text, tokenizer = config["text"], path / TOKENIZER
    check_file_size(tokenizer)
    recorded = config.get("tokenizer")
    tokenizer_hash = recorded.get("sha256") if isinstance(recorded, dict) else None
    if tokenizer_hash and tokenizer.is_file() and _sha256(tokenizer) != tokenizer_hash:
        raise SentimentError(f"{tokenizer}: content does not match the sha256 recorded in {CONFIG} "
                             "(from another run, or replaced)")
    try:
        return TextEncoder.load(tokenizer, text.get("max_len", 200), text.get("truncate", "tail"))
    except SentimentError as exc:
        if str(exc).startswith(str(tokenizer)):
            raise
        raise SentimentError(f"{path / CONFIG}: bad 'text' section ({exc})") from None


def load_bundle(path: str | Path, device: str = "cpu", precision: str = "float32") -> Classifier:
    """Load a bundle directory as a ready-to-use :class:`Classifier`.

    ``precision="auto"`` computes in bfloat16 where the hardware has it: about twice as
    fast on such CPUs, with the same label for >= 99.5% of reviews (bench/score.py
    measures it); ``float32`` reproduces the metrics recorded at training exactly.
    """
    path = Path(path)
    config = read_config(path)
    try:
        model_config = ModelConfig(**config["model"])
    except (TypeError, SentimentError) as exc:
        raise SentimentError(f"{path / CONFIG}: bad 'model' section ({exc})") from None
    encoder = _text_encoder(path, config)
    try:
        Calibration.of(config.get("calibration"), encoder.max_len, model_config.num_classes)
    except SentimentError as exc:
        raise SentimentError(f"{path / CONFIG}: bad 'calibration' section ({exc}); without that section the "
                             "bundle gives its network's own probabilities, and `python -m sentiment calibrate "
                             f"--model {path}` fits a new one") from None
    if encoder.vocab_size != model_config.vocab_size:
        raise SentimentError(f"{path / TOKENIZER}: vocabulary of {encoder.vocab_size} tokens, but "
                             f"{CONFIG} says the model has {model_config.vocab_size}")
    labels = config.get("labels", list(LABELS))
    if (not isinstance(labels, list) or len(labels) != model_config.num_classes or len(set(labels)) != len(labels)
            or not all(isinstance(label, str) and label for label in labels)):
        raise SentimentError(f"{path / CONFIG}: 'labels' must list the model's {model_config.num_classes} classes, "
                             f"distinct names (got {labels!r})")
    state = read_weights(path, config, model_config)
    model = SentimentRNN(model_config)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return Classifier(model, encoder, config, str(path), device, precision)
