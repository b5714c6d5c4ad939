"""Reviews from files, scored as rows: the engine of the ``score`` command, its Ray engine
and the web page's file tab, so all three read and score files the same way.

Every input row comes out, in input order, with its location, the predicted label and the
probability of each class (``p_positive`` for a negative/positive model, ``p_<class>`` for
each class of others); nothing is dropped. Rows are read and scored one chunk at a time, so
memory stays flat whatever the input size.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

from .data import LABELS, is_negative_positive
from .errors import SentimentError
from .outputs import Output
from .predict import Classifier
from .readers import NUL_IN_LINE, decode, decoded_lines, is_uri, iter_rows, not_text, open_binary


TEXT_COLUMNS = ("text", "review")


def probability_columns(classes: Sequence[str]) -> tuple[str, ...]:
    """The output's probability columns: ``p_positive`` alone for a negative/positive model, as
    outputs always had, else ``p_<class>`` for each class, in the model's order."""
    return ("p_positive",) if is_negative_positive(classes) else tuple(f"p_{c}" for c in classes)


def our_columns(classes: Sequence[str] = LABELS) -> tuple[str, ...]:
    """The columns the scorer adds to each row, for a model of ``classes``."""
    return ("source", "row", "prediction", *probability_columns(classes), "known_words", "error")


# known_words 0 marks a row the model could not judge (no word of its vocabulary): its
# prediction and probabilities stay empty, but the row is written like every other.
OUR_COLUMNS = our_columns(LABELS)


INPUT_SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl", ".parquet")


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
    files = folder_reviews(path)
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

    def __init__(self, classes: Sequence[str] = LABELS):
        self.ours = our_columns(classes)
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
        for ours in self.ours:
            self.names[ours] = _free_name(ours, input_columns)
        n = self.names
        self.columns = [n["source"], n["row"], *input_columns, *(n[c] for c in self.ours[2:])]
        self.known = set(self.columns)  # a set: a row's columns are checked in time linear in their number
        self.first_source = record.source

    def row(self, record: Record, label: str | None, probabilities: Sequence[float] | None,
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
                    n["known_words"]: known_words, n["error"]: record.error})
        columns = self.ours[3:-2]
        out.update(zip((n[c] for c in columns), probabilities or [None] * len(columns)))
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
    output = OutputRows(classifier.labels)
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
        scored = zip(scores.labels(), shown_probabilities(scores), scores.known_words.tolist()) if good else iter(())
        rows = []
        for record in chunk:
            if record.error is None:
                label, p, known = next(scored)
                counts.unjudged += label is None
                rows.append(output.row(record, label, None if label is None else p, known))
            else:
                counts.errors += 1
                rows.append(output.row(record, None, None, None))
        counts.written += len(rows)
        yield rows


def shown_probabilities(scores) -> list[list[float]]:
    """Each review's values of ``probability_columns``, rounded to 6 decimals as outputs show them."""
    shown = scores.probabilities[:, 1:] if scores.sentiment else scores.probabilities
    return [[round(p, 6) for p in row] for row in shown.tolist()]


def at_most(records: Iterable[Record], limit: int) -> Iterator[Record]:
    for n, record in enumerate(records, 1):
        if n > limit:
            raise SentimentError(f"{record.source}: more than {limit:,} rows; score at most {limit:,} at a time here, "
                                 "or a file of any size with python -m sentiment score")
        yield record



def write_scored(classifier: Classifier, records: Iterable[Record], output: Output, counts: Counts,
                 chunk_size: int = 4096, batch_size: int = 256, on_error: str = "stop", bar=None) -> None:
    """Score ``records`` into ``output`` chunk by chunk, and close it (released, finished or
    not); an input that cannot be read is named as such, not taken for the output."""
    try:
        try:
            for rows in score_rows(classifier, records, chunk_size, batch_size, on_error, counts):
                output.write(rows)
                if bar is not None:
                    bar.update(len(rows))
        except OSError as exc:
            raise SentimentError(f"{exc.filename or 'input'}: reading failed ({exc.strerror or exc})") from None
        output.close()
    finally:
        output.release()
