"""Reading text files: decoding, and the rows of csv/tsv/jsonl/parquet files.

Training data (``data.load_source``) and the batch scorer read files through these
functions, so both decode and split them the same way. Every row keeps its location
(file and line), and a record that cannot be read keeps its place as a row with an
error: a caller decides whether to stop or carry on, and no row is ever skipped unseen.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import SentimentError

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")

# --- decoding ------------------------------------------------------------------

# Byte order marks: a file that starts with one is decoded as it says (Windows tools
# often write UTF-16 with a BOM, and UTF-8 with one); any other file is read as UTF-8.
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# How much of a file is looked at to tell whether it is text at all.
FIRST_BLOCK = 8192
NUL_IN_LINE = "holds a NUL byte: binary data, not text"
# A JSON escape can name half of a surrogate pair alone ("\ud800"), and so can a JSON request
# to the page or the API; such a string can be neither tokenized nor written as UTF-8, so the
# half is replaced like an undecodable byte.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def bom_encoding(start: bytes) -> str | None:
    """The encoding a byte order mark at the start of a file names, or None without one."""
    return next((encoding for bom, encoding in BOMS if start.startswith(bom)), None)


def decode(raw: bytes) -> tuple[str, int]:
    """Text (UTF-8, or as a leading BOM says) with undecodable bytes replaced by U+FFFD,
    and how many were replaced."""
    encoding = bom_encoding(raw[:4])
    if encoding is not None:
        text = raw.decode(encoding, errors="replace")
        return text, text.count("\ufffd")
    return decode_utf8(raw)


def decode_utf8(raw: bytes) -> tuple[str, int]:
    """UTF-8 text with undecodable bytes replaced by U+FFFD, and how many were replaced."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        # U+FFFD already in the input is not counted as a replacement.
        return text, text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")


def replace_lone_surrogates(text: str) -> tuple[str, int]:
    """``text`` with each lone surrogate (half of a UTF-16 pair, which no UTF-8 text can
    hold) replaced by U+FFFD, one character for one (word offsets stay those of ``text``),
    and how many were replaced. Checked in C first: nearly every text has none."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.subn("\ufffd", text)
    return text, 0


def encodable(text: str) -> str:
    """``text`` as the tokenizer can take it: each lone surrogate replaced by U+FFFD."""
    return replace_lone_surrogates(text)[0]


def looks_binary(start: bytes) -> bool:
    """Whether the first bytes of a file without a BOM are clearly not UTF-8 text: a NUL
    in its first line, or NULs throughout (UTF-16 or UTF-32 without a BOM, a binary file)."""
    return b"\0" in start.split(b"\n", 1)[0] or start.count(b"\0") * 8 >= len(start) > 0


# --- row readers -----------------------------------------------------------------

@dataclass
class Row:
    """One input record: where it came from, its fields, and characters replaced while decoding."""

    where: str                 # "reviews.csv:12" or "aclImdb/train/pos/3_9.txt"
    fields: dict[str, Any]
    undecodable: int = 0
    error: str | None = None


def is_uri(name: str | Path) -> bool:
    """``s3://bucket/key`` and the like: a file on a filesystem pyarrow knows, not a local path."""
    return "://" in str(name)


def open_binary(path: str | Path) -> io.BufferedReader:
    """A local file, or a URI on any filesystem pyarrow knows (s3://, gs://, hdfs://, file://), for reading."""
    if not is_uri(path):
        return open(path, "rb")
    import pyarrow.fs

    try:
        filesystem, inner = pyarrow.fs.FileSystem.from_uri(str(path))
        return io.BufferedReader(filesystem.open_input_stream(inner))
    except (OSError, ValueError) as exc:
        raise SentimentError(f"{path}: cannot open ({str(exc).splitlines()[0]})") from None


def decoded_lines(binary: io.BufferedReader, source: str) -> Iterator[tuple[str, int]]:
    """The lines of a binary stream (line ends kept) as text, each with its count of
    undecodable bytes; a BOM at the start decides the encoding of the whole stream.

    A stream whose start is clearly not text is refused as a whole: split at its
    newline bytes, UTF-16 would give rows of garbage, and a garbage row still gets a verdict.
    """
    start = binary.peek(FIRST_BLOCK)[:FIRST_BLOCK]
    encoding = bom_encoding(start[:4])
    if encoding is None:
        if looks_binary(start):
            raise SentimentError(f"{source}: not UTF-8 text: it holds NUL bytes (UTF-16 without a byte order "
                                 "mark, or a binary file?); save it as UTF-8, or as UTF-16 with a byte order mark")
        for raw in binary:
            yield decode_utf8(raw)
        return
    # newline="": a "\r\n" inside a quoted csv field stays as it is.
    for line in io.TextIOWrapper(binary, encoding=encoding, errors="replace", newline=""):
        yield line, line.count("\ufffd")


# A field may be as long as a review on a .txt or .jsonl line (20 MB ones are read whole),
# but not unbounded: an unclosed quote would otherwise read the rest of the file into one field.
CSV_FIELD_LIMIT = 1 << 25


class _CsvLines:
    """The decoded lines fed to ``csv.reader``, remembering those of the record being read."""

    def __init__(self, binary: io.BufferedReader, source: str):
        self.lines = decoded_lines(binary, source)
        self.record: list[tuple[str, int]] = []   # the lines of the current record, with undecodable bytes

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.record.append(line)
        return line[0]

    def take(self) -> list[tuple[str, int]]:
        record, self.record = self.record, []
        return record


def _csv_header(reader, path) -> list[str]:
    try:
        header = next(reader)
    except StopIteration:
        raise SentimentError(f"{path}: empty file, expected a header line") from None
    except csv.Error as exc:
        raise SentimentError(f"{path}:1: malformed header ({exc})") from None
    seen: set[str] = set()
    twice = sorted({name for name in header if name in seen or seen.add(name)})
    if twice:
        raise SentimentError(f"{path}:1: the header names the column{'s' if len(twice) > 1 else ''} "
                             f"{', '.join(map(repr, twice))} more than once; column names must be unique")
    return header


def _csv_error(fields: list[str] | None, width: int, lines: list[tuple[str, int]]) -> str | None:
    if any("\0" in line for line, _ in lines):
        return f"malformed csv row: {NUL_IN_LINE}"
    if fields is not None and len(fields) != width:
        return f"malformed csv row: {len(fields)} fields, the header has {width}"
    return None


def _csv_records(path: Path, delimiter: str) -> Iterator[Row]:
    """Every record after the header, blank lines included (as rows with no fields)."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    with open_binary(path) as fh:
        lines = _CsvLines(fh, str(path))
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        header = _csv_header(reader, path)
        lines.take()
        while True:
            start = reader.line_num + 1
            try:
                fields, error = next(reader), None
            except StopIteration:
                return
            except csv.Error as exc:
                fields, error = None, f"malformed csv row ({exc})"
            taken = lines.take()
            error = error or (None if fields == [] else _csv_error(fields, len(header), taken))
            if error and delimiter == "\t":
                # tsv: a field that starts with a quote but is no quoted field ("Great" movie)
                # is text as it stands; each line the quote took in is then a record of its own.
                for offset, (line, bad) in enumerate(taken):
                    literal = line.rstrip("\n").rstrip("\r").split("\t")
                    error = _csv_error(literal, len(header), [(line, bad)])
                    yield Row(f"{path}:{start + offset}", {} if error else dict(zip(header, literal)), bad, error)
                continue
            # A broken quote can swallow the lines after it: name them all.
            end = start + len(taken) - 1
            where = f"{path}:{start}" if not error or end <= start else f"{path}:{start}-{end}"
            yield Row(where, {} if error or fields == [] else dict(zip(header, fields)),
                      sum(bad for _, bad in taken), error)


def _iter_csv(path: Path, delimiter: str) -> Iterator[Row]:
    held: list[Row] = []  # blank lines wait for a record after them: at the end of the file they are none
    for row in _csv_records(path, delimiter):
        if not row.fields and row.error is None:
            held.append(row)
            continue
        for blank in held:
            yield Row(blank.where, {}, blank.undecodable, "malformed csv row: a blank line")
        held = []
        yield row


# Deeper nesting than this is no review file's: past it, even writing the row out would fail.
MAX_JSON_DEPTH = 100


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A json object, refused where a key appears twice (json.loads would keep the last silently)."""
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return record


def _clean_json(record: dict, surrogates: bool) -> int:
    """Check the nesting depth of a parsed json line and, where ``surrogates``, replace lone
    surrogates in its keys and strings in place; how many were replaced."""
    replaced = 0

    def clean(text: str) -> str:
        nonlocal replaced
        text, n = replace_lone_surrogates(text)
        replaced += n
        return text

    stack: list[tuple[Any, int]] = [(record, 1)]
    while stack:  # a loop, not recursion: the depth is what is being checked
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise RecursionError
        if isinstance(node, dict):
            if surrogates and any(_LONE_SURROGATE.search(key) for key in node):
                items = [(clean(key), value) for key, value in node.items()]
                node.clear()
                node.update(items)
            places = node.items()
        else:
            places = enumerate(node)
        for place, value in list(places):
            if isinstance(value, str):
                if surrogates:
                    node[place] = clean(value)
            elif isinstance(value, (dict, list)):
                stack.append((value, depth + 1))
    return replaced


# One decoder for every line: json.loads with a hook would build a new one per call.
_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys)


def parse_json_line(text: str) -> tuple[dict | None, int, str | None]:
    """A jsonl line's object, the lone surrogates replaced in it, and why it is not one (or None)."""
    try:
        record = _JSON.decode(text)
    except json.JSONDecodeError as exc:
        return None, 0, f"malformed json line ({exc.msg})"
    except _DuplicateKey as exc:
        return None, 0, f"malformed json line: the key {exc.args[0]!r} appears more than once in an object"
    except RecursionError:
        return None, 0, f"malformed json line: nested more than {MAX_JSON_DEPTH} deep"
    except ValueError as exc:
        if "integer string conversion" not in str(exc):
            raise
        return None, 0, f"malformed json line: an integer of more than {sys.get_int_max_str_digits():,} digits"
    if not isinstance(record, dict):
        return None, 0, f"expected a json object, got {type(record).__name__}"
    surrogates = _SURROGATE_ESCAPE.search(text) is not None
    if not surrogates and text.count("{") + text.count("[") < 2:
        return record, 0, None  # flat, and nothing to replace: the common line costs no walk
    try:
        return record, _clean_json(record, surrogates), None
    except RecursionError:
        return None, 0, f"malformed json line: nested more than {MAX_JSON_DEPTH} deep"


def _iter_jsonl(path: Path) -> Iterator[Row]:
    with open_binary(path) as fh:
        for line_no, (text, bad) in enumerate(decoded_lines(fh, str(path)), 1):
            if not text.strip():
                continue  # a blank line in jsonl is no record
            record, replaced, error = parse_json_line(text)
            yield Row(f"{path}:{line_no}", record or {}, bad + replaced, error)


def _iter_parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        if is_uri(path):
            import pyarrow.fs

            filesystem, inner = pyarrow.fs.FileSystem.from_uri(str(path))
            table = pq.ParquetFile(filesystem.open_input_file(inner))
        else:
            table = pq.ParquetFile(path)
    except Exception as exc:
        raise SentimentError(f"{path}: not a readable parquet file ({exc})") from None
    row_no = 0
    for batch in table.iter_batches(batch_size=8192):
        for record in batch.to_pylist():
            row_no += 1
            yield Row(f"{path}:row {row_no}", record)


def iter_rows(path: str | Path) -> Iterator[Row]:
    """Rows of a csv, tsv, jsonl or parquet file (a local path or a URI), streamed, each with its location."""
    path = path if is_uri(path) else Path(path)
    suffix = Path(str(path)).suffix.lower()
    if suffix == ".csv":
        return _iter_csv(path, ",")
    if suffix == ".tsv":
        return _iter_csv(path, "\t")
    if suffix == ".jsonl":
        return _iter_jsonl(path)
    if suffix == ".parquet":
        return _iter_parquet(path)
    raise SentimentError(f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(TABLE_SUFFIXES)}")


def not_text(value: Any) -> str | None:
    """Why a field's value is not a review's text ("a number (5)", "null"), or None for a string."""
    if isinstance(value, str):
        return None
    if value is None:
        return "null"
    kind = ("a boolean" if isinstance(value, bool) else "a number" if isinstance(value, (int, float))
            else "an object" if isinstance(value, dict) else "a list" if isinstance(value, (list, tuple))
            else f"a {type(value).__name__}")
    return f"{kind} ({json.dumps(value, default=str)[:40]})"
