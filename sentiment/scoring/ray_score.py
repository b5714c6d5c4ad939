"""``sentiment score --engine ray``: the batch scorer spread over a Ray cluster.

The work is the single-machine scorer's, cut along its own seams: each input file is
read by one Ray task with this package's readers (so the rows, line numbers and error
rows are exactly those of ``sentiment score``), in blocks of ``--chunk-size`` rows; a
pool of ``--workers`` actors, each loading the model once, scores the blocks with
:func:`sentiment.batch.score_rows`; Ray writes the blocks as parts of one output
folder. Ray Data keeps the input order, so the parts sorted by name are the input
rows in order. A worker that dies has its block scored again by another: every row
comes out exactly once.

Ray is an optional extra (``pip install -e ".[ray]"``); nothing else in this package
imports this module, and this module imports ray only when it runs.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

from ..errors import SentimentError, ray_join_failure
from ..readers import is_uri

RAY_MISSING = 'the Ray engine needs Ray Data, an optional extra: pip install -e ".[ray]"'
PREDICTION_COLUMNS = ("prediction", "p_positive", "known_words")


def require_ray():
    """The ``ray`` module, or one line that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SentimentError(RAY_MISSING) from None
    return ray


def _encode_columns(records) -> list[dict[str, Any]]:
    """Records as block rows; the input's own columns travel as one JSON text, so blocks
    of any file have one schema and values keep their types (jsonl numbers stay numbers)."""
    return [{"source": r.source, "row": r.row, "text": r.text, "columns": json.dumps(r.columns, default=str),
             "undecodable": r.undecodable, "error": r.error} for r in records]


def _read_file(name: str, text_column: str | None, chunk_size: int) -> Iterator:
    import pyarrow as pa

    from ..batch import read_inputs

    chunk = []
    for record in read_inputs([name], text_column):
        chunk.append(record)
        if len(chunk) == chunk_size:
            yield pa.Table.from_pylist(_encode_columns(chunk))
            chunk = []
    if chunk:
        yield pa.Table.from_pylist(_encode_columns(chunk))


def check_ray_inputs(inputs: list[str]) -> None:
    """Ray reads files and folders (a folder of .txt files is one input, as on one machine), not stdin."""
    from .score import check_inputs

    if "-" in inputs:
        raise SentimentError("--engine ray reads files, not standard input: name files or folders")
    check_inputs(inputs)


def _datasource(files: list[str], text_column: str | None, chunk_size: int):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class InputFiles(Datasource):
        """One read task per input file, streaming blocks of ``chunk_size`` rows."""

        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [ReadTask(lambda name=name: _read_file(name, text_column, chunk_size),
                             BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(name,)))
                    for name in files]

    return InputFiles()


class Scorer:
    """A Ray actor: holds one model, scores blocks of records the way ``sentiment score`` does."""

    def __init__(self, model: str, precision: str, device: str, batch_size: int, on_error: str,
                 threads: int | None = None):
        import torch

        from ..bundle import load_bundle

        if threads:
            torch.set_num_threads(threads)
        self.classifier = load_bundle(model, device=device, precision=precision)
        self.batch_size, self.on_error = batch_size, on_error

    def __call__(self, batch):
        import pyarrow as pa

        from ..batch import Record, score_rows

        records = [Record(r["source"], r["row"], r["text"], json.loads(r["columns"]), r["undecodable"], r["error"])
                   for r in batch.to_pylist()]
        rows = [row for chunk in score_rows(self.classifier, records, len(records) or 1, self.batch_size,
                                            self.on_error) for row in chunk]
        return pa.Table.from_pylist(rows)


def score_dataset(dataset, model: str, text_column: str = "text", workers: int = 1, batch_size: int = 256,
                  precision: str = "auto", device: str = "cpu"):
    """A Ray Dataset with ``prediction``, the probability columns (``p_positive`` for a
    negative/positive model, else ``p_<class>`` per class) and ``known_words`` added to each row.

    For a user who already holds a Dataset with a text column: one model per worker
    (``workers`` actors), rows in their order. A row whose text is not a string, or is
    missing, gets empty predictions and ``known_words`` 0 rather than failing the job.
    """
    require_ray()
    if text_column not in (dataset.columns() or []):
        raise SentimentError(f"the dataset has no column {text_column!r} (columns: {', '.join(dataset.columns())})")

    class Predict:
        def __init__(self):
            from ..bundle import load_bundle

            self.classifier = load_bundle(model, device=device, precision=precision)

        def __call__(self, batch):
            from ..batch import probability_columns, shown_probabilities

            texts = [t if isinstance(t, str) else "" for t in batch[text_column]]
            scores = self.classifier.scores(texts, batch_size)
            labels = scores.labels()
            batch["prediction"] = labels
            shown = shown_probabilities(scores)
            for i, column in enumerate(probability_columns(self.classifier.labels)):
                batch[column] = [None if label is None else row[i] for label, row in zip(labels, shown)]
            batch["known_words"] = scores.known_words.tolist()
            return batch

    import ray.data

    return dataset.map_batches(Predict, batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=workers),
                               batch_size=batch_size,
                               num_gpus=1 if device.startswith("cuda") else 0)


def check_out_folder(out: str | None) -> str:
    """The output folder of a Ray run: new, or empty (its parts would mix with others')."""
    if not out:
        raise SentimentError("--engine ray writes a folder of parts: pass --out DIR")
    if is_uri(out):
        return out
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise SentimentError(f"--out {out} is a file; --engine ray writes a folder of parts: name a folder")
    if path.is_dir() and any(path.iterdir()):
        raise SentimentError(f"--out {out} is not empty; --engine ray writes its parts into a new or empty folder")
    from ..files import check_folder_target

    check_folder_target(path, "--out")
    return str(path.resolve())


def connect(address: str | None, workers: int):
    """Join the cluster at ``address`` ("auto": the one running here), or start a local one."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False, "include_dashboard": False}
    try:
        if address:
            kwargs.pop("include_dashboard")
            ray.init(address=address, **kwargs)
        else:
            # "local": a new cluster of this process, never one that `ray start` left running here.
            ray.init(address="local", num_cpus=max(workers, os.cpu_count() or 1), **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ray_join_failure(address, exc) from None
    return ray


def score_on_ray(config) -> dict:
    """Run ``sentiment score --engine ray`` per ``config`` (a ScoreConfig); returns counts."""
    from ..bundle import default_model_dir, read_config

    ray = require_ray()
    fmt = config.format or "parquet"
    files = config.inputs
    check_ray_inputs(files)
    out = check_out_folder(config.out)
    model = str(Path(config.model or default_model_dir()).resolve())
    read_config(model)  # a bad model fails here, before the cluster starts
    connect(config.address, config.workers)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = bool(config.progress)
    if not config.progress:
        # Ray Data logs each stage, and a worker's exception with its stack; the one line
        # that matters is printed by the CLI.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    # Reading asks for no CPU of its own (scoring, a CPU per worker, is the work), so the two
    # stay separate stages and cannot starve each other:
    # the blocks of one big file are spread over every worker instead of one.
    dataset = ray.data.read_datasource(_datasource([_absolute(f) for f in files], config.text_column,
                                                   config.chunk_size), override_num_blocks=len(files), num_cpus=0)
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
    threads = max(1, (os.cpu_count() or 1) // config.workers) if not config.address else None
    scored = dataset.map_batches(
        Scorer, batch_format="pyarrow", batch_size=None, compute=ray.data.ActorPoolStrategy(size=config.workers),
        fn_constructor_kwargs={"model": model, "precision": config.precision, "device": config.device,
                               "batch_size": config.batch_size, "on_error": config.on_error, "threads": threads},
        num_gpus=1 if config.device.startswith("cuda") else 0, num_cpus=0 if config.device.startswith("cuda") else 1)
    try:
        if fmt == "parquet":
            scored.write_parquet(out)
        elif fmt == "csv":
            scored.write_csv(out)
        else:
            scored.write_json(out)
    except Exception as exc:  # a row error under --on-error stop, raised in a worker
        message = _sentiment_error(exc)
        if message is not None:
            raise SentimentError(message) from None
        raise
    return count_parts(out, fmt)


def _absolute(name: str) -> str:
    return name if is_uri(name) else str(Path(name).resolve())


def _sentiment_error(exc: BaseException) -> str | None:
    """The message of a SentimentError a Ray worker raised, from inside Ray's wrapping.

    Ray passes a worker's exception back as its traceback text (the original object does
    not always survive the trip), so the message is read from that text.
    """
    marker = f"{SentimentError.__module__}.{SentimentError.__qualname__}: "
    for line in reversed(str(exc).splitlines()):
        if line.startswith(marker):
            return line[len(marker):]
    return None


def part_files(out: str, fmt: str) -> list[str]:
    """The output's parts in input order (Ray names them by the order of their blocks)."""
    suffix = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".json"}[fmt]
    return sorted(str(p) for p in Path(out).iterdir() if p.name.endswith(suffix))


def count_parts(out: str, fmt: str) -> dict:
    """Rows written, from the parts themselves (a local output only)."""
    if is_uri(out):
        return {"parts": None, "rows": None}
    parts = part_files(out, fmt)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    else:
        rows = 0
        for p in parts:
            with open(p, "rb") as fh:
                rows += sum(1 for _ in fh)
        if fmt == "csv":
            rows -= len(parts)  # a header line each
    return {"parts": len(parts), "rows": rows}
