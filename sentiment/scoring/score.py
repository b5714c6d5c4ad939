"""``sentiment score``: reviews from files or stdin, streamed in chunks, to csv/jsonl/parquet.

The reading and scoring are the core's (:mod:`sentiment.batch`); this is the command around
them: its options, the checks made before any work (inputs exist, the output replaces no
input, device or link), the progress bar, and an output file that appears under its final
name only when complete (written to a temporary file, then renamed).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..batch import Counts, folder_reviews, our_columns, read_inputs, write_scored
from ..errors import SentimentError
from ..files import check_file_target, clear_tmp_files, write_atomic
from ..options import check_whole
from ..outputs import Output
from ..predict import PRECISIONS, Classifier
from ..readers import is_uri


OUTPUT_FORMATS = ("csv", "jsonl", "parquet")


@dataclass
class ScoreConfig:
    """Options of ``sentiment score``."""

    inputs: list[str] = field(default_factory=list, metadata={"cli": False})
    model: str | None = field(default=None, metadata={"help": "model bundle folder (default: the shipped model)",
                                                      "metavar": "DIR"})
    out: str | None = field(default=None, metadata={"help": "output file (default: standard output)",
                                                    "metavar": "FILE"})
    format: str | None = field(default=None, metadata={
        "help": "output format (default: from --out's suffix, else csv)", "choices": OUTPUT_FORMATS})
    text_column: str | None = field(default=None, metadata={
        "help": "text column of csv/tsv/jsonl/parquet inputs (default: text or review)", "metavar": "NAME"})
    on_error: str = field(default="stop", metadata={
        "help": "a malformed row stops the run with its file and line (stop), or becomes an error row (skip)",
        "choices": ("stop", "skip")})
    precision: str = field(default="auto", metadata={
        "help": "auto: bfloat16 where the CPU/GPU has it (about 2x faster), else float32",
        "choices": PRECISIONS})
    chunk_size: int = field(default=4096, metadata={"help": "rows read and scored at a time", "metavar": "N"})
    batch_size: int = field(default=256, metadata={"help": "reviews per forward pass", "metavar": "N"})
    progress: bool | None = field(default=None, metadata={
        "help": "progress bar with rows/s on stderr (default: when stderr is a terminal)"})
    engine: str = field(default="local", metadata={
        "help": "local: this process; ray: a Ray cluster (pip install -e \".[ray]\"; --out is then a folder of parts)",
        "choices": ("local", "ray")})
    address: str | None = field(default=None, metadata={
        "help": "with --engine ray: the cluster to join (auto: the one running here; default: start a local one)",
        "metavar": "ADDR"})
    workers: int = field(default=2, metadata={"help": "with --engine ray: scoring workers, each holding the model",
                                              "metavar": "N"})
    device: str = field(default="cpu", metadata={"help": "with --engine ray: where workers compute",
                                                 "choices": ("cpu", "cuda")})

    def __post_init__(self):
        check_whole(self, ("chunk_size", "batch_size", "workers"))
        if self.engine == "local" and (self.address or self.device != "cpu"):
            raise SentimentError("--address and --device are options of --engine ray")

    def output_format(self) -> str:
        if self.format:
            return self.format
        if self.out:
            suffix = Path(self.out).suffix.lower().lstrip(".")
            if suffix in OUTPUT_FORMATS:
                return suffix
            raise SentimentError(f"--out {self.out}: cannot tell the format from the suffix; "
                                 f"name it .csv, .jsonl or .parquet, or pass --format")
        return "csv"


def check_inputs(inputs: Sequence[str], out: str | None = None) -> None:
    """Fail before any work on an input that does not exist, or an output that would replace an input."""
    if not inputs:
        raise SentimentError("no input given: name files, folders, or - for standard input")
    for name in inputs:
        if name == "-" and sys.stdin is None:
            raise SentimentError("-: standard input is closed; name a file to score")
        if name != "-" and not is_uri(name) and not Path(name).exists():
            raise SentimentError(f"{name}: no such file or directory")
    if out:
        _check_out_spares_inputs(inputs, out)


def _stdin_file() -> os.stat_result | None:
    try:
        return os.fstat(sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):  # closed, or replaced by something without a file
        return None


def _check_out_spares_inputs(inputs: Sequence[str], out: str) -> None:
    """The same file under any name (another spelling, a hard link, a member of an input
    folder, the file on standard input) is the same inode on the same device."""
    try:
        target = os.stat(out)
    except OSError:
        return  # a new file replaces nothing

    def same(found: os.stat_result | None) -> bool:
        return found is not None and (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino)

    refuse = "scoring would replace it; write the scores to another file"
    for name in inputs:
        if name == "-":
            if same(_stdin_file()):
                raise SentimentError(f"--out {out} is the file on standard input: {refuse}")
        elif is_uri(name):
            continue
        elif Path(name).is_dir():
            member = next((p for p in folder_reviews(Path(name)) if same(p.stat())), None)
            if member is not None:
                raise SentimentError(f"--out {out} is {member.name} of the input folder {name}: {refuse}")
        elif same(os.stat(name)):
            raise SentimentError(f"--out {out} is the input {name}: {refuse}")


def check_output(config: ScoreConfig) -> None:
    """Fail before any work on an output that cannot be written; clear leftovers of a killed run."""
    fmt = config.output_format()
    check_inputs(config.inputs, config.out)
    if fmt == "parquet" and not config.out:
        raise SentimentError("--format parquet needs --out FILE (parquet cannot stream to a terminal)")
    if not config.out:
        if sys.stdout is None:
            raise SentimentError("standard output is closed: name a file with --out")
        return
    check_file_target(config.out, "--out")
    clear_tmp_files(config.out)  # what runs killed while writing left beside the output


def score(config: ScoreConfig, classifier: Classifier) -> Counts:
    """Run ``sentiment score``: read, score and write every input row."""
    check_output(config)
    counts = Counts()
    if not config.out:
        _write(config, classifier, counts, None)
        return counts
    try:
        write_atomic(config.out, lambda tmp: _write(config, classifier, counts, tmp))
    except OSError as exc:
        # The temporary file or the rename failed: nothing appears under the output's name.
        raise SentimentError(f"--out {config.out}: writing failed ({exc.strerror or exc}); "
                             "nothing was written") from None
    return counts


def _write(config: ScoreConfig, classifier: Classifier, counts: Counts, path: str | None) -> None:
    """Score every input row into ``path`` (standard output when None)."""
    output = Output(config.output_format(), path, f"--out {config.out}" if path else "standard output",
                    list(our_columns(classifier.labels)))
    bar = None
    try:
        if config.progress or (config.progress is None and sys.stderr.isatty()):
            from tqdm import tqdm

            bar = tqdm(unit=" rows", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        write_scored(classifier, read_inputs(config.inputs, config.text_column), output, counts,
                     config.chunk_size, config.batch_size, config.on_error, bar)
    finally:
        if bar is not None:
            bar.close()

