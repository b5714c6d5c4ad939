"""Where reviews come from: one function turns any source into a ``DatasetDict``.

A source is a Hugging Face dataset id, the Stanford ``aclImdb`` archive or its
extracted folder, or a csv/tsv/jsonl/parquet file with a text and a label column.
Local sources are read once and cached by ``datasets`` under a fingerprint of their
content, so the second run on the same archive reads no review files.

Table files are read row by row with ``readers.iter_rows``, the batch scorer's readers:
every row keeps its location (file and line) so errors can say exactly where they are.
"""
from __future__ import annotations

import hashlib
import json
import re
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from .errors import SentimentError
from .readers import TABLE_SUFFIXES, Row, decode, iter_rows, not_text, replace_lone_surrogates

if TYPE_CHECKING:
    import datasets

DEFAULT_DATASET = "stanfordnlp/imdb"
# The classes of IMDB, and of every bundle written before bundles named their labels.
LABELS = ("negative", "positive")


def is_negative_positive(classes) -> bool:
    """Whether a model's classes are IMDB's negative/positive: the ones ``p_positive`` and the
    words positive and negative speak of."""
    return tuple(classes) == LABELS

_LABEL_WORDS = {"0": 0, "neg": 0, "negative": 0, "1": 1, "pos": 1, "positive": 1}
# The default order of the usual sentiment names, most negative first: a model's classes
# then read as a scale (``neutral`` between ``negative`` and ``positive``).
SENTIMENT_ORDER = ("very negative", "strongly negative", "negative", "neg", "somewhat negative", "mixed",
                   "neutral", "somewhat positive", "pos", "positive", "strongly positive", "very positive")
# The Stanford archive's label columns: the folder (neg/pos) and the star rating in the file name.
STANFORD_COLUMNS = ("label", "rating")
_STANFORD_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt$")
# Bump when the rows a source turns into change, so old caches are not reused.
_CACHE_VERSION = "2"


def label_value(value: Any) -> str | None:
    """A label as the text it is compared by: ``3``, ``3.0`` and ``" 3"`` are all ``"3"``;
    None for a missing one (no value, an empty string, NaN)."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value).lower()
    if isinstance(value, float):
        if value != value:
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    return text or None


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def order_labels(values: Iterable[str], given: Sequence[str] | None = None) -> tuple[str, ...]:
    """The classes, in the order a model's outputs take them.

    ``given`` (``--labels a,b,c``) wins. Otherwise: values that all spell negative/positive
    (0/1, neg/pos, negative/positive, any case) are ``LABELS``, as they always were; numbers
    go ascending (ratings); the usual sentiment names go from negative to positive
    (``SENTIMENT_ORDER``); anything else goes alphabetically.
    """
    if given is not None:
        names = tuple(given)
        if len(names) < 2 or len(set(names)) != len(names) or not all(names):
            raise SentimentError(f"--labels must name 2 or more distinct classes (got {','.join(names)!r})")
        return names
    distinct = sorted(set(values))
    if all(parse_label(v) is not None for v in distinct):
        return LABELS
    if all(_as_number(v) is not None for v in distinct):
        return tuple(sorted(distinct, key=lambda v: (_as_number(v), v)))
    rank = {name: i for i, name in enumerate(SENTIMENT_ORDER)}
    if all(v.lower() in rank for v in distinct):
        return tuple(sorted(distinct, key=lambda v: (rank[v.lower()], v)))
    return tuple(distinct)


def class_of(value: str, names: Sequence[str]) -> str | None:
    """The class of ``names`` a label value stands for: itself, or, for negative/positive
    classes, any spelling ``parse_label`` reads; None if none."""
    if value in names:
        return value
    if tuple(names) == LABELS and parse_label(value) is not None:
        return LABELS[parse_label(value)]
    return None


def parse_label(value: Any) -> int | None:
    """0/1 from 0/1, neg/pos or negative/positive (any case); None if it is none of them."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value in (0, 1) else None
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str):
        return _LABEL_WORDS.get(value.strip().lower())
    return None


def require_column(row: Row, column: str, path: Path, role: str) -> Any:
    if column not in row.fields:
        have = ", ".join(map(str, row.fields)) or "none"
        raise SentimentError(f"{path}: no {role} column {column!r} (columns: {have}); "
                             f"choose one with --{role}-column")
    return row.fields[column]


def _labelled_records(path: Path, text_column: str, label_column: str,
                      labels: Sequence[str] | None = None) -> Iterator[dict]:
    """Rows with their label as written (``label_value``); a missing label, or one that is none
    of ``labels`` where they are fixed, stops at its row."""
    for row in iter_rows(path):
        if row.error:
            raise SentimentError(f"{row.where}: {row.error}")
        text = require_column(row, text_column, path, "text")
        if text is not None and not_text(text):
            raise SentimentError(f"{row.where}: field {text_column!r} is {not_text(text)}, not text")
        raw = require_column(row, label_column, path, "label")
        label = label_value(raw)
        if label is None:
            raise SentimentError(f"{row.where}: no label in column {label_column!r} (got {raw!r}); "
                                 "every training or evaluation row needs one")
        if labels is not None and class_of(label, labels) is None:
            raise SentimentError(f"{row.where}: label {raw!r} in column {label_column!r} is not one of the "
                                 f"classes {', '.join(labels)}")
        # No datasets cache (UTF-8) can hold half of a UTF-16 pair that a json escape spelled.
        text, surrogates = replace_lone_surrogates("" if text is None else str(text))
        yield {"text": text, "label": label, "undecodable": row.undecodable + surrogates}


# --- the Stanford layout ------------------------------------------------------

def _stanford_records(members: Iterable[tuple[str, bytes]]) -> list[dict]:
    records = []
    for name, raw in members:
        match = _STANFORD_MEMBER.search(name)
        if not match:
            continue
        split, polarity, review_id, rating = match.groups()
        text, bad = decode(raw)
        label = {"neg": 0, "pos": 1, "unsup": -1}[polarity]
        # The file name's rating (train/pos/3_9.txt: 9 stars); unlabelled reviews have 0, kept as -1.
        records.append({"split": split if polarity != "unsup" else "unsup", "text": text, "label": label,
                        "rating": int(rating) if polarity != "unsup" else -1,
                        "undecodable": bad, "_key": (int(review_id), polarity)})
    # Archive order is not folder order; sort so both give the same rows.
    order = {"train": 0, "test": 1, "unsup": 2}
    records.sort(key=lambda r: (order[r["split"]], r["label"], r["_key"]))
    for r in records:
        del r["_key"]
    return records


def _archive_members(path: Path) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and _STANFORD_MEMBER.search(member.name):
                    yield member.name, tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SentimentError(f"{path}: not a readable tar archive ({exc})") from None


def _folder_members(root: Path) -> Iterator[tuple[str, bytes]]:
    for split in ("train", "test"):
        for polarity in ("pos", "neg", "unsup"):
            folder = root / split / polarity
            if folder.is_dir():
                for file in folder.iterdir():
                    yield f"{split}/{polarity}/{file.name}", file.read_bytes()


def _stanford_root(folder: Path) -> Path | None:
    for candidate in (folder, folder / "aclImdb"):
        if (candidate / "train").is_dir() or (candidate / "test").is_dir():
            return candidate
    return None


# --- fingerprints and caching -------------------------------------------------

def fingerprint(src: str | Path) -> str:
    """A short hash that changes whenever the source's content changes."""
    path = Path(src)
    h = hashlib.sha256(_CACHE_VERSION.encode())
    if path.is_file():
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    elif path.is_dir():
        # Hashing 100,000 review files would cost as much as reading them; names,
        # sizes and modification times change whenever a file does.
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            st = file.stat()
            h.update(f"{file.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        h.update(f"hub:{src}".encode())
    return h.hexdigest()[:16]


def _generate(records_fn, **kwargs) -> Iterator[dict]:
    yield from records_fn(**kwargs)


def _cached(records_fn, kwargs: dict, key: str, cache_dir: str | None, stanford: bool = False):
    datasets = _quiet_datasets()
    # Table labels are kept as written (text) until every row is read and their classes are known.
    label = {"label": datasets.Value("int64"), "rating": datasets.Value("int64")} if stanford else \
        {"label": datasets.Value("string")}
    features = datasets.Features({"split": datasets.Value("string"), "text": datasets.Value("string"),
                                  **label, "undecodable": datasets.Value("int64")})
    try:
        return datasets.Dataset.from_generator(_generate, features=features, cache_dir=cache_dir,
                                               gen_kwargs={"records_fn": records_fn, **kwargs}, fingerprint=key)
    except datasets.exceptions.DatasetGenerationError as exc:
        # datasets wraps what the generator raised; the user needs our message, not its wrapper.
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, SentimentError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise
    except ValueError as exc:
        if "corresponds to no data" not in str(exc):
            raise
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features)


def _split_by_column(table) -> "datasets.DatasetDict":
    import datasets
    import numpy as np

    splits = np.asarray(table["split"])
    result = datasets.DatasetDict()
    for name in ("train", "test", "unsup"):
        idx = np.flatnonzero(splits == name)
        if len(idx):
            result[name] = table.select(idx).remove_columns("split")
    return result


def _archive_records(path: str) -> list[dict]:
    return _stanford_records(_archive_members(Path(path)))


def _folder_records(path: str) -> list[dict]:
    return _stanford_records(_folder_members(Path(path)))


def _table_records(path: str, split: str, text_column: str, label_column: str,
                   labels: str | None = None) -> Iterator[dict]:
    # ``labels`` comes as JSON text: datasets would deal a list out to shards, one class each.
    fixed = None if labels is None else json.loads(labels)
    for record in _labelled_records(Path(path), text_column, label_column, fixed):
        yield {"split": split, **record}


def _quiet_datasets():
    """``datasets``, imported (a second or more: only once a source is known to need it) and quietened."""
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    return datasets


def _from_hub(name: str, text_column: str, label_column: str, cache_dir: str | None):
    datasets = _quiet_datasets()
    try:
        loaded = datasets.load_dataset(name, cache_dir=cache_dir)
    except Exception as exc:  # offline, unknown id, or hub errors: all mean "use a local copy"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SentimentError(
            f"could not load the Hugging Face dataset {name!r} ({type(exc).__name__}: {first[:200]}). "
            "Working offline? Pass a local copy instead: --data path/to/aclImdb_v1.tar.gz "
            "(or its extracted folder, or a csv/tsv/jsonl/parquet file)") from None
    result = datasets.DatasetDict()
    for split, ds in loaded.items():
        name_out = "unsup" if split.startswith("unsup") else split
        for column, role in ((text_column, "text"), (label_column, "label")):
            if column not in ds.column_names:
                hint = ("; the hub copy of IMDB has no star ratings: the Stanford archive has them "
                        "(--data aclImdb_v1.tar.gz --label-column rating)") if column == "rating" else ""
                raise SentimentError(f"{name} split {split!r}: no {role} column {column!r} "
                                     f"(columns: {', '.join(ds.column_names)}){hint}")
        feature = ds.features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            values = [feature.names[i] if i is not None and i >= 0 else None for i in ds[label_column]]
        else:
            values = [label_value(v) for v in ds[label_column]]
        ds = ds.select_columns([text_column]).add_column("label", values)
        if text_column != "text":
            ds = ds.rename_column(text_column, "text")
        result[name_out] = ds
    return result


def _stanford_labels(loaded: "datasets.DatasetDict", label_column: str, path: Path) -> "datasets.DatasetDict":
    """The archive's rows with the chosen label column (folder or rating) as text, None where unlabelled."""
    if label_column not in STANFORD_COLUMNS:
        raise SentimentError(f"{path}: the Stanford archive has no label column {label_column!r} "
                             f"(its label columns: {', '.join(STANFORD_COLUMNS)})")
    for split, ds in loaded.items():
        ids = ds[label_column]
        values = [None if i < 0 else (LABELS[i] if label_column == "label" else str(i)) for i in ids]
        loaded[split] = ds.remove_columns(["label", "rating"]).add_column("label", values)
    return loaded


def _raw_source(src: str | Path, text_column: str, label_column: str, cache_dir: str | None,
                labels: Sequence[str] | None) -> "datasets.DatasetDict":
    """A source's splits with each row's label as written (text; None: unlabelled)."""
    path = Path(src)
    if path.exists():
        key = f"{fingerprint(path)}-{text_column}-{label_column}".replace("/", "_")
        if path.is_dir():
            root = _stanford_root(path)
            if root is None:
                raise SentimentError(f"{path}: a folder source must hold the Stanford layout "
                                     "(aclImdb/train/pos/*.txt ...), found no train/ or test/ folder")
            return _stanford_labels(_split_by_column(_cached(_folder_records, {"path": str(root)}, "imdbdir-" + key,
                                                             cache_dir, stanford=True)), label_column, path)
        if path.suffix.lower() in TABLE_SUFFIXES:
            fixed = None if labels is None else json.dumps(list(labels))
            key += "" if fixed is None else "-" + hashlib.sha256(fixed.encode()).hexdigest()[:8]
            return _split_by_column(_cached(_table_records, {"path": str(path), "split": "train",
                                                             "text_column": text_column, "label_column": label_column,
                                                             "labels": fixed}, "table-" + key, cache_dir))
        if tarfile.is_tarfile(path):
            return _stanford_labels(_split_by_column(_cached(_archive_records, {"path": str(path)}, "imdbtar-" + key,
                                                             cache_dir, stanford=True)), label_column, path)
        raise SentimentError(f"{path}: unsupported data source; expected the Stanford archive (.tar.gz), "
                             f"its folder, or a {'/'.join(s[1:] for s in TABLE_SUFFIXES)} file")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(src)) and not str(src).startswith((".", "/")):
        return _from_hub(str(src), text_column, label_column, cache_dir)
    raise SentimentError(f"{src}: no such file or directory (and not a Hugging Face dataset id)")


def _with_classes(ds: "datasets.Dataset", names: Sequence[str], where: str) -> "datasets.Dataset":
    """``ds`` with its text labels turned into class ids (-1: unlabelled), named by a ``ClassLabel``."""
    import datasets

    index = {name: i for i, name in enumerate(names)}
    ids = []
    for row, value in enumerate(ds["label"], start=1):
        if value is None:
            ids.append(-1)
            continue
        found = class_of(value, names)
        if found is None:
            raise SentimentError(f"{where} row {row}: label {value!r} is not one of the classes {', '.join(names)}")
        ids.append(index[found])
    return ds.remove_columns("label").add_column("label", ids).cast_column(
        "label", datasets.ClassLabel(names=list(names)))


def classes(splits: "datasets.DatasetDict") -> tuple[str, ...]:
    """The class names of rows ``load_source`` gave, in the order of their ids."""
    first = next(iter(splits.values()))
    return tuple(first.features["label"].names)


def load_source(src: str | Path = DEFAULT_DATASET, *, text_column: str = "text", label_column: str = "label",
                test_src: str | Path | None = None, cache_dir: str | None = None,
                labels: Sequence[str] | None = None) -> "datasets.DatasetDict":
    """Load reviews as ``train``, ``test`` and (where the source has it) ``unsup`` splits.

    Rows have ``text`` and ``label``: a class id (-1 unlabelled) whose names a ``ClassLabel``
    feature holds (``classes(splits)``), in the order ``order_labels`` gives, or ``labels``.
    Local sources also have ``undecodable``, the bytes replaced while decoding that row.
    A csv/tsv/jsonl/parquet file is the ``train`` split; ``test_src`` adds ``test``.
    The Stanford archive has two label columns: ``label`` (its neg/pos folders) and ``rating``
    (the stars in each file's name); the hub copy of IMDB has no ratings.
    """
    loaded = _raw_source(src, text_column, label_column, cache_dir, labels)
    if test_src is not None:
        extra = _raw_source(test_src, text_column, label_column, cache_dir, labels)
        if "train" not in extra or len(extra["train"]) == 0:
            raise SentimentError(f"{test_src}: has no rows to use as the test split")
        loaded["test"] = extra["train"]
    for split, ds in loaded.items():
        if len(ds) == 0:
            raise SentimentError(f"{src}: the {split} split is empty")
    if "train" not in loaded or len(loaded["train"]) == 0:
        raise SentimentError(f"{src}: the train split is empty (no labelled training reviews found)")
    values = {v for ds in loaded.values() for v in set(ds["label"]) if v is not None}
    names = order_labels(values, labels)
    for split, ds in loaded.items():
        where = f"{test_src if split == 'test' and test_src is not None else src}"
        where += "" if Path(where).suffix.lower() in TABLE_SUFFIXES else f" [{split}]"
        loaded[split] = _with_classes(ds, names, where)
    return loaded


def undecodable_report(splits: "datasets.DatasetDict") -> str | None:
    """One line saying how many bytes were replaced while decoding, or None if none were."""
    counts = {}
    for name, ds in splits.items():
        if "undecodable" in ds.column_names:
            total = sum(ds["undecodable"])
            if total:
                rows = sum(1 for n in ds["undecodable"] if n)
                counts[name] = (total, rows)
    if not counts:
        return None
    parts = ", ".join(f"{name}: {t} bytes in {r} reviews" for name, (t, r) in counts.items())
    # A lone surrogate of a json escape counts as one byte here: it is as unreadable.
    return f"note: undecodable bytes were replaced with U+FFFD ({parts})"


def split_validation(train: "datasets.Dataset", fraction: float, seed: int):
    """A seeded (train, validation) split of the training rows; test is never touched."""
    if not 0 < fraction < 1:
        raise SentimentError(f"validation fraction must be between 0 and 1 (got {fraction})")
    if len(train) < 2:
        raise SentimentError(f"need at least 2 training reviews to carve a validation split (got {len(train)})")
    parts = train.train_test_split(test_size=fraction, seed=seed, shuffle=True)
    return parts["train"], parts["test"]
