"""The output side of batch scoring: rows written chunk by chunk as csv, jsonl or parquet.

A failed write (a full disk, a file size limit, standard output on /dev/full) is one
:class:`SentimentError` that names where the rows were going.
"""
from __future__ import annotations

import csv
import json
import sys
from contextlib import contextmanager
from typing import IO, Any, Iterator

from .errors import SentimentError


class _CsvWriter:
    def __init__(self, stream: IO[str]):
        self.stream, self.writer = stream, None

    def write(self, rows: list[dict]) -> None:
        if self.writer is None:
            self.writer = csv.DictWriter(self.stream, fieldnames=list(rows[0]), lineterminator="\n")
            self.writer.writeheader()
        self.writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)

    def close(self, empty_columns: list[str] | None) -> None:
        if empty_columns is not None:
            self.stream.write(",".join(empty_columns) + "\n")
        self.stream.flush()


class _JsonlWriter:
    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, rows: list[dict]) -> None:
        self.stream.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))

    def close(self, empty_columns: list[str] | None) -> None:
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

    def close(self, empty_columns: list[str] | None) -> None:
        if self.writer is not None:
            self.writer.close()
        elif empty_columns is not None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            types = {"p_positive": pa.float64(), "known_words": pa.int64()}
            pq.write_table(pa.table({c: pa.array([], types.get(c, pa.float64() if c.startswith("p_") else pa.string()))
                                     for c in empty_columns}), self.path)


@contextmanager
def _failing(shown: str, lost: str) -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise SentimentError(f"{shown}: writing failed ({exc.strerror or exc}){lost}") from None


class Output:
    """Where scored rows go: the file ``path`` in format ``fmt``, or standard output when None.

    ``shown`` names it in messages (``--out FILE``). A write that fails for lack of room or
    the like is a :class:`SentimentError`; a closed pipe (output piped into ``head``) stays a
    BrokenPipeError, which the command ends quietly on. An output that gets no rows still
    gets ``empty_columns`` (a csv header, a parquet schema)."""

    def __init__(self, fmt: str, path: str | None, shown: str, empty_columns: list[str]):
        self.path, self.empty_columns, self.wrote_any = path, empty_columns, False
        self.failing = lambda: _failing(shown, "; nothing was written" if path else "")
        self.stream = None
        with self.failing():
            if fmt == "parquet":
                self.writer = _ParquetWriter(path)
            else:
                self.stream = open(path, "w", newline="", encoding="utf-8") if path else sys.stdout
                self.writer = (_CsvWriter if fmt == "csv" else _JsonlWriter)(self.stream)

    def write(self, rows: list[dict[str, Any]]) -> None:
        with self.failing():
            self.writer.write(rows)
        self.wrote_any = True

    def close(self) -> None:
        with self.failing():
            self.writer.close(None if self.wrote_any else self.empty_columns)
            self.release()

    def release(self) -> None:
        """Close the file, finished or not (standard output stays open)."""
        if self.stream is not None and self.stream is not sys.stdout:
            self.stream.close()
