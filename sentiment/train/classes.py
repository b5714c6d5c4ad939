"""The classes a run learns: read from its data, checked, and matched with a bundle it fine-tunes.

A run fine-tuned from a bundle keeps the bundle's output layer (its head) when the data's
classes are the bundle's (``--head auto``, the default, or ``keep``), in the bundle's order;
other classes get a new head, while the embedding, encoder and tokenizer still come from the
bundle.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import data as data_module
from ..errors import SentimentError
from ..text import UNK_ID
from .recipes import TrainConfig


def bundle_labels(bundle: str) -> tuple[str, ...]:
    from ..bundle import read_config

    return tuple(read_config(bundle).get("labels") or data_module.LABELS)


def load_splits(config: TrainConfig):
    """The source's splits, their classes in the order the run uses, and whether the fine-tuned
    bundle's head is kept."""
    given = config.label_list()
    load = dict(text_column=config.text_column, label_column=config.label_column, test_src=config.test_data,
                cache_dir=config.cache_dir)
    splits = data_module.load_source(config.data, labels=given, **load)
    if not config.finetune_from or config.head == "new":
        return splits, data_module.classes(splits), False
    theirs = bundle_labels(config.finetune_from)
    ours = data_module.classes(splits)
    if set(ours) == set(theirs):
        if ours != theirs:
            splits = data_module.load_source(config.data, labels=theirs, **load)
        return splits, theirs, True
    if config.head == "auto":
        return splits, ours, False
    # --head keep with other classes: the row that has one the bundle lacks, else what is missing.
    data_module.load_source(config.data, labels=theirs, **load)
    missing = ", ".join(c for c in theirs if c not in ours)
    raise SentimentError(f"{config.data}: its classes ({', '.join(ours)}) are not those of {config.finetune_from} "
                         f"({', '.join(theirs)}; none of the data is {missing}); --head keep needs the same "
                         "classes, --head new learns a new head")


def check_classes(config: TrainConfig, train, names: tuple[str, ...]) -> None:
    """Refuse training rows that cannot teach ``names``: one class only, or fewer rows than classes."""
    counts = np.bincount(np.asarray(train["label"], dtype=np.int64), minlength=len(names))
    present = [name for name, n in zip(names, counts) if n]
    if len(present) < 2:
        only = f"{present[0]!r}" if present else "missing"
        raise SentimentError(f"{config.data}: every training row's label is {only} (all {len(train)} rows, "
                             f"column {config.label_column!r}); a classifier needs 2 or more classes")
    if len(names) > len(train):
        raise SentimentError(f"{config.data}: {len(names)} classes ({', '.join(names)}) but {len(train)} training "
                             "rows; a classifier needs at least one row of each class, and more to learn from")


def class_counts(names: tuple[str, ...], labels: np.ndarray, selected: np.ndarray) -> str:
    """``"negative: 3 of 40, positive: 0 of 41"``: ``selected`` rows of each class."""
    return ", ".join(f"{name}: {int(selected[labels == c].sum())} of {int((labels == c).sum())}"
                     for c, name in enumerate(names))


def start_from_bundle(model: torch.nn.Module, bundle: str, keep_head: bool) -> str:
    """Load a bundle's weights into ``model``: all of them, or all but the head; says which."""
    from ..bundle import load_bundle

    state = load_bundle(bundle).model.float().state_dict()
    # Words --grow-vocab added start as the bundle's <unk>, so the model first reads them as
    # it did before they had a row of their own.
    embedding = state["embedding.weight"]
    extra = model.embedding.weight.shape[0] - len(embedding)
    if extra > 0:
        state["embedding.weight"] = torch.cat([embedding, embedding[UNK_ID].expand(extra, -1)])
    if keep_head:
        model.load_state_dict(state)
        return f"weights from {bundle}"
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")}, strict=False)
    return (f"embedding, encoder and tokenizer from {bundle}; a new head for the data's classes "
            f"({model.config.num_classes}), the bundle's were {', '.join(bundle_labels(bundle))}")
