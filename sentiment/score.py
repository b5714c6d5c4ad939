"""Batch scoring: reviews from files or stdin, streamed in chunks, to csv/jsonl/parquet.

Every input row comes out, in input order, with its location, the predicted label and
``p_positive``; nothing is dropped. Memory stays flat whatever the input size: rows are
read, scored and written one chunk at a time. A file output appears under its final
name only when complete (written to a temporary file, then renamed).

The web page's file tab calls :func:`score_rows` too, so both score files the same way.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

from .errors import SentimentError
from .files import check_file_target, clear_tmp_files, write_atomic
from .options import check_whole
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


def check_inputs(inputs: Sequence[str], out: str | None = None) -> None:
    """Fail before any work on an input that does not exist, or an output that would replace an input."""
    if not inputs:
        raise SentimentError("no input given: name files, folders, or - for standard input")
    for name in inputs:
        if name != "-" and not is_uri(name) and not Path(name).exists():
            raise SentimentError(f"{name}: no such file or directory")
    if out and Path(out).exists():
        for name in inputs:
            if name != "-" and not is_uri(name) and Path(name).is_file() and os.path.samefile(name, out):
                raise SentimentError(f"--out {out} is the input {name}: scoring would replace it; "
                                     "write the scores to another file")


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
            if extra:
                raise SentimentError(f"{record.source}: has columns {', '.join(extra)} that {self.first_source} "
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


def score_rows(classifier: Classifier, records: Iterable[Record], chunk_size: int = 4096, batch_size: int = 256,
               on_error: str = "stop", counts: Counts | None = None) -> Iterator[list[dict[str, Any]]]:
    """Score records chunk by chunk; yields lists of output rows in input order."""
    counts = counts if counts is not None else Counts()
    output = OutputRows()
    for chunk in _chunks(records, chunk_size):
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

class _CsvWriter:
    def __init__(self, stream: IO[str]):
        self.stream, self.writer = stream, None

    def write(self, rows: list[dict]) -> None:
        if self.writer is None:
            self.writer = csv.DictWriter(self.stream, fieldnames=list(rows[0]), lineterminator="\n")
            self.writer.writeheader()
        self.writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)

    def close(self) -> None:
        self.stream.flush()


class _JsonlWriter:
    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, rows: list[dict]) -> None:
        self.stream.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))

    def close(self) -> None:
        self.stream.flush()


class _ParquetWriter:
    def __init__(self, path: str):
        self.path, self.writer, self.schema = path, None, None

    def write(self, rows: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            if self.writer is None:
                table = pa.Table.from_pylist(rows)
                # Columns that start empty (error, say) must still hold text later.
                self.schema = pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f
                                         for f in table.schema])
                self.writer = pq.ParquetWriter(self.path, self.schema)
            table = pa.Table.from_pylist(rows, schema=self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise SentimentError(f"parquet output: {self._first_misfit(rows) or exc}; a parquet column holds one "
                                 "type: use --format csv or jsonl") from None
        self.writer.write_table(table)

    def _first_misfit(self, rows: list[dict]) -> str | None:
        """Where a value first differs in type from the rows before it: "file:row: field 'x' is str ..."."""
        import pyarrow as pa

        columns = list(rows[0])
        for name in columns:
            wanted = self.schema.field(name).type if self.schema is not None else None
            for row in rows:
                value = row.get(name)
                try:
                    wanted = pa.array([value], type=wanted).type if wanted is not None else pa.array([value]).type
                    if pa.types.is_null(wanted):
                        wanted = None
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    where = ":".join(str(row[c]) for c in columns[:2])
                    return f"{where}: field {name!r} is {type(value).__name__} ({str(value)[:40]!r}), " \
                           f"where earlier rows hold {wanted}"
        return None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def check_output(config: ScoreConfig) -> None:
    """Fail before any work on an output that cannot be written; clear leftovers of a killed run."""
    fmt = config.output_format()
    check_inputs(config.inputs, config.out)
    if fmt == "parquet" and not config.out:
        raise SentimentError("--format parquet needs --out FILE (parquet cannot stream to a terminal)")
    if not config.out:
        return
    check_file_target(config.out, "--out")
    clear_tmp_files(config.out)  # what a run killed while writing left beside the output


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
        # A full disk, a file size limit: nothing appears under the output's name.
        raise SentimentError(f"--out {config.out}: writing failed ({exc.strerror or exc}); "
                             "nothing was written") from None
    return counts


def _write(config: ScoreConfig, classifier: Classifier, counts: Counts, path: str | None) -> None:
    """Score every input row into ``path`` (standard output when None)."""
    fmt = config.output_format()
    stream = None
    try:
        if fmt == "parquet":
            writer = _ParquetWriter(path)
        else:
            stream = open(path, "w", newline="", encoding="utf-8") if path else sys.stdout
            writer = (_CsvWriter if fmt == "csv" else _JsonlWriter)(stream)
        bar = None
        if config.progress or (config.progress is None and sys.stderr.isatty()):
            from tqdm import tqdm

            bar = tqdm(unit=" rows", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        records = read_inputs(config.inputs, config.text_column, config.names)
        if config.max_rows:
            records = _at_most(records, config.max_rows)
        wrote_any = False
        for rows in score_rows(classifier, records, config.chunk_size, config.batch_size, config.on_error, counts):
            writer.write(rows)
            wrote_any = True
            if bar is not None:
                bar.update(len(rows))
        if bar is not None:
            bar.close()
        if not wrote_any and fmt == "csv":
            stream.write(",".join(OUR_COLUMNS) + "\n")
        writer.close()
        if fmt == "parquet" and not wrote_any:
            _empty_parquet(path)
    finally:
        if stream is not None and stream is not sys.stdout:
            stream.close()


def _empty_parquet(path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"p_positive": pa.float64(), "known_words": pa.int64()}
    pq.write_table(pa.table({c: pa.array([], types.get(c, pa.string())) for c in OUR_COLUMNS}), path)
