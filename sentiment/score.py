"""Batch scoring: reviews from files or stdin, streamed in chunks, to csv/jsonl/parquet.

Every input row comes out, in input order, with its location, the predicted label and
``p_positive``; nothing is dropped. Memory stays flat whatever the input size: rows are
read, scored and written one chunk at a time. A file output appears under its final
name only when complete (written to a temporary file, then renamed).

The web page's file tab calls :func:`score_rows` too, so both score files the same way.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

from .errors import SentimentError
from .files import check_file_target, clear_tmp_files, write_atomic
from .options import check_whole
from .outputs import Output
from .predict import PRECISIONS, Classifier
from .readers import NUL_IN_LINE, decode, decoded_lines, is_uri, iter_rows, not_text, open_binary

OUTPUT_FORMATS = ("csv", "jsonl", "parquet")
TEXT_COLUMNS = ("text", "review")
# known_words 0 marks a row the model could not judge (no word of its vocabulary): its
# prediction and p_positive stay empty, but the row is written like every other.
OUR_COLUMNS = ("source", "row", "prediction", "p_positive", "known_words", "error")
INPUT_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".parquet")


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
    names: list[str] | None = field(default=None, metadata={"cli": False})  # see read_inputs
    max_rows: int | None = field(default=None, metadata={"cli": False})    # the page's cap per file

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


# --- reading -------------------------------------------------------------------

@dataclass
class Record:
    """One review to score, with where it came from and the columns to keep."""

    source: str
    row: str                       # line number, row number or file name
    text: str | None
    columns: dict[str, Any]
    undecodable: int = 0
    error: str | None = None


def _lines(stream: IO[bytes], source: str) -> Iterator[Record]:
    for line_no, (text, bad) in enumerate(decoded_lines(stream, source), 1):
        if "\0" in text:
            yield Record(source, str(line_no), None, {}, bad, f"{source}:{line_no}: {NUL_IN_LINE}")
        else:
            yield Record(source, str(line_no), text.rstrip("\n").rstrip("\r"), {}, bad)


def _folder(path: Path, source: str) -> Iterator[Record]:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".txt")
    if not files:
        raise SentimentError(f"{path}: a folder input must hold .txt files (one review each); found none")
    for file in files:
        text, bad = decode(file.read_bytes())
        if "\0" in text:
            yield Record(source, file.name, None, {}, bad, f"{source}:{file.name}: {NUL_IN_LINE} (UTF-16 without "
                         "a byte order mark? save it as UTF-8)")
        else:
            yield Record(source, file.name, text, {}, bad)


TEXT_COLUMN_HINT = "choose one with --text-column"


def _table(path: Path, text_column: str | None, source: str) -> Iterator[Record]:
    column = text_column
    first: set[str] | None = None
    for row in iter_rows(path):
        number = row.where[len(str(path)) + 1:].removeprefix("row ")
        where = f"{source}:{number}"
        error = row.error and f"{where}: {row.error}"
        if error is None and column is None:
            column = next((c for c in TEXT_COLUMNS if c in row.fields), None)
            if column is None:
                raise SentimentError(f"{source}: no text column (looked for {' or '.join(TEXT_COLUMNS)}; columns: "
                                     f"{', '.join(map(str, row.fields))}); {TEXT_COLUMN_HINT}")
        if error is None and first is None:
            if column not in row.fields:
                raise SentimentError(f"{where}: no text column {column!r} (columns: "
                                     f"{', '.join(map(str, row.fields))}); {TEXT_COLUMN_HINT}")
            first = set(row.fields)  # column names are text in every format read
        text = None
        if error is None:
            # Later rows are judged against the first: the output's columns are the first row's.
            added = [] if first.issuperset(row.fields) else [c for c in row.fields if c not in first]
            if added:
                error = (f"{where}: has the field{'s' if len(added) > 1 else ''} {', '.join(map(repr, added))} "
                         f"that the first row does not (the output's columns are the first row's)")
            elif column not in row.fields:
                error = f"{where}: no {column!r} field"
            else:
                text = row.fields[column]
                if not_text(text):
                    error = f"{where}: field {column!r} is {not_text(text)}, not text"
                    text = None
        if error:
            yield Record(source, number, None, {}, row.undecodable, error)
        else:
            yield Record(source, number, text, row.fields, row.undecodable)


def read_inputs(inputs: Sequence[str], text_column: str | None = None,
                names: Sequence[str] | None = None) -> Iterator[Record]:
    """Records of every input in turn: files, folders of .txt files, or ``-`` for stdin.

    ``names`` are what the ``source`` column and messages call the inputs (default: their
    paths); the page passes the uploaded file's own name, not the server's copy.
    """
    for name, shown in zip(inputs, names or inputs):
        if name == "-":
            yield from _lines(sys.stdin.buffer, "<stdin>")
            continue
        if is_uri(name):
            yield from _uri(name, text_column, shown)
            continue
        path = Path(name)
        if path.is_dir():
            yield from _folder(path, shown)
        elif not path.exists():
            raise SentimentError(f"{path}: no such file or directory")
        elif path.suffix.lower() == ".txt":
            with open(path, "rb") as fh:
                yield from _lines(fh, shown)
        elif path.suffix.lower() in INPUT_SUFFIXES:
            yield from _table(path, text_column, shown)
        else:
            raise SentimentError(f"{path}: unsupported input type {path.suffix!r}; expected "
                                 f"{', '.join(INPUT_SUFFIXES)}, a folder of .txt files, or - for stdin")


def _uri(name: str, text_column: str | None, shown: str) -> Iterator[Record]:
    suffix = Path(name).suffix.lower()
    if suffix == ".txt":
        with open_binary(name) as fh:
            yield from _lines(fh, shown)
    elif suffix in INPUT_SUFFIXES:
        yield from _table(name, text_column, shown)
    else:
        raise SentimentError(f"{name}: unsupported input type {suffix!r}; expected {', '.join(INPUT_SUFFIXES)}")


def folder_reviews(path: Path) -> list[Path]:
    """The files a folder input reads: its .txt files, one review each."""
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".txt")


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


# --- scoring -------------------------------------------------------------------

def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _free_name(wanted: str, taken: Iterable[str]) -> str:
    taken = set(taken)
    name = wanted
    while name in taken:
        name = "_" + name
    return name


class OutputRows:
    """Turns scored records into output rows with a fixed set of columns."""

    def __init__(self):
        self.columns: list[str] | None = None
        self.known: set[str] = set()
        self.first_source = ""
        self.names: dict[str, str] = {}

    def start(self, chunk: list[Record]) -> None:
        """Fix the columns from the first parsed record (an error row has no input columns)."""
        if self.columns is not None:
            return
        record = next((r for r in chunk if r.error is None), chunk[0])
        input_columns = [str(c) for c in record.columns]
        # Our columns never overwrite an input column of the same name.
        for ours in OUR_COLUMNS:
            self.names[ours] = _free_name(ours, input_columns)
        n = self.names
        self.columns = [n["source"], n["row"], *input_columns, *(n[c] for c in OUR_COLUMNS[2:])]
        self.known = set(self.columns)  # a set: a row's columns are checked in time linear in their number
        self.first_source = record.source

    def row(self, record: Record, label: str | None, p_positive: float | None,
            known_words: int | None) -> dict[str, Any]:
        if record.error is None:
            extra = [] if self.known.issuperset(record.columns) else [c for c in record.columns if c not in self.known]
            if extra and record.source == self.first_source:
                raise SentimentError(f"{record.source}:{record.row}: has columns {', '.join(map(str, extra))}, but the "
                                     f"{HELD_ERROR_ROWS:,} rows before it were error rows, which have none; "
                                     "fix those rows, or see them with --on-error stop")
            if extra:
                raise SentimentError(f"{record.source}: has columns {', '.join(map(str, extra))} that {self.first_source} "
                                     "does not; score inputs with different columns separately")
        n = self.names
        out = dict.fromkeys(self.columns)
        out.update(record.columns)
        out.update({n["source"]: record.source, n["row"]: record.row, n["prediction"]: label,
                    n["p_positive"]: p_positive, n["known_words"]: known_words, n["error"]: record.error})
        return out


@dataclass
class Counts:
    read: int = 0
    written: int = 0
    errors: int = 0
    unjudged: int = 0
    undecodable_rows: int = 0
    undecodable_bytes: int = 0

    def line(self) -> str:
        text = f"rows read: {self.read}, rows written: {self.written}"
        if self.errors:
            text += f", error rows: {self.errors}"
        if self.unjudged:
            text += f", rows with no known words (no prediction): {self.unjudged}"
        if self.undecodable_bytes:
            text += (f"; {self.undecodable_bytes} undecodable bytes in {self.undecodable_rows} rows "
                     "were replaced with U+FFFD")
        return text


# Error rows hold none of the input's columns, and the output's columns are the first parsed
# row's: leading chunks of nothing but error rows wait for that row (up to this many rows).
HELD_ERROR_ROWS = 100_000


def _until_parsed(chunks: Iterable[list[Record]], on_error: str) -> Iterator[list[Record]]:
    held: list[Record] = []
    for chunk in chunks:
        if on_error == "stop":  # the first error row ends the run: nothing to wait for
            yield chunk
            continue
        held.extend(chunk)
        if any(r.error is None for r in chunk) or len(held) >= HELD_ERROR_ROWS:
            on_error = "stop"  # from here on every chunk passes as it is
            yield held
    if held and on_error != "stop":
        yield held


def score_rows(classifier: Classifier, records: Iterable[Record], chunk_size: int = 4096, batch_size: int = 256,
               on_error: str = "stop", counts: Counts | None = None) -> Iterator[list[dict[str, Any]]]:
    """Score records chunk by chunk; yields lists of output rows in input order."""
    counts = counts if counts is not None else Counts()
    output = OutputRows()
    for chunk in _until_parsed(_chunks(records, chunk_size), on_error):
        counts.read += len(chunk)
        for record in chunk:
            if record.error and on_error == "stop":
                raise SentimentError(f"{record.error} (use --on-error skip to write it as an error row and go on)")
            if record.undecodable:
                counts.undecodable_rows += 1
                counts.undecodable_bytes += record.undecodable
        output.start(chunk)
        good = [r for r in chunk if r.error is None]
        scores = classifier.scores([r.text for r in good], batch_size) if good else None
        scored = zip(scores.labels(), scores.p_positive.tolist(), scores.known_words.tolist()) if good else iter(())
        rows = []
        for record in chunk:
            if record.error is None:
                label, p, known = next(scored)
                counts.unjudged += label is None
                rows.append(output.row(record, label, None if label is None else round(p, 6), known))
            else:
                counts.errors += 1
                rows.append(output.row(record, None, None, None))
        counts.written += len(rows)
        yield rows


# --- writing -------------------------------------------------------------------

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


def _at_most(records: Iterable[Record], limit: int) -> Iterator[Record]:
    for n, record in enumerate(records, 1):
        if n > limit:
            raise SentimentError(f"{record.source}: more than {limit:,} rows; score at most {limit:,} at a time here, "
                                 "or a file of any size with python -m sentiment score")
        yield record


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


def _read(chunks: Iterator[list[dict[str, Any]]]) -> Iterator[list[dict[str, Any]]]:
    """Scored chunks, where an input that cannot be read is named as such, not taken for the output."""
    try:
        yield from chunks
    except OSError as exc:
        raise SentimentError(f"{exc.filename or 'input'}: reading failed ({exc.strerror or exc})") from None


def _write(config: ScoreConfig, classifier: Classifier, counts: Counts, path: str | None) -> None:
    """Score every input row into ``path`` (standard output when None)."""
    output = Output(config.output_format(), path, f"--out {config.out}" if path else "standard output",
                    list(OUR_COLUMNS))
    try:
        bar = None
        if config.progress or (config.progress is None and sys.stderr.isatty()):
            from tqdm import tqdm

            bar = tqdm(unit=" rows", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        records = read_inputs(config.inputs, config.text_column, config.names)
        if config.max_rows:
            records = _at_most(records, config.max_rows)
        for rows in _read(score_rows(classifier, records, config.chunk_size, config.batch_size, config.on_error,
                                     counts)):
            output.write(rows)
            if bar is not None:
                bar.update(len(rows))
        if bar is not None:
            bar.close()
        output.close()
    finally:
        output.release()
