"""The options of ``train.py`` and the recipe of each model: what a run is asked to do."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import data as data_module
from ..errors import SentimentError
from ..models import MODEL_KINDS, ModelConfig
from ..options import check_whole
from ..predict import PRECISIONS
from ..text import TRUNCATE_SIDES


def _opt(help: str, **extra) -> dict:
    return {"help": help, **extra}


# Where the best recipe differs by encoder, the option's default comes from here, chosen
# on validation accuracy (the runs and their figures: docs/experiments.md, "Why the recipes").
# An option given on the command line wins. A tanh RNN is unstable at the LSTM's peak
# learning rate, so it gets a gentler peak over more epochs.
_TANH_RNN = {"epochs": 12, "lr": 1e-3, "word_dropout": 0.1, "ema": 0.999, "adversarial": 3.0}
_LSTM = {"epochs": 10, "lr": 2e-3, "word_dropout": 0.1, "ema": 0.999, "adversarial": 3.0}
_ONE_LAYER = {"embedding_dim": 128, "num_layers": 1}
_BILSTM = {**_LSTM, "embedding_dim": 256, "num_layers": 2}
RECIPES = {"rnncell": {**_TANH_RNN, **_ONE_LAYER}, "rnn": {**_TANH_RNN, **_ONE_LAYER},
           "lstm": {**_LSTM, **_ONE_LAYER}, "bilstm": _BILSTM}
# With --pretrain lm or --init-from, where the recipe differs: a bilstm language model has one
# layer (above it each direction would see the word it predicts), so its sizes are lstm's.
PRETRAINED_RECIPES = {"bilstm": _ONE_LAYER}
PER_MODEL = " (default: per --model, see docs/training.md)"
HEAD_CHOICES = ("auto", "keep", "new")
# With --finetune-from, where the recipe differs from training the same kind afresh. None does
# yet: on 5,330 labelled snippets, a lower body learning rate, a grown vocabulary and no
# adversarial steps each did no better on validation than the kind's own recipe (the runs and
# their figures: docs/experiments.md, "Fine-tuning on your own data").
FINETUNE_RECIPE: dict = {}


@dataclass
class TrainConfig:
    """Options of ``python train.py``; saved in the bundle's config.json."""

    model: str = field(default="lstm", metadata=_opt("encoder kind", choices=MODEL_KINDS))
    data: str = field(default=data_module.DEFAULT_DATASET, metadata=_opt(
        "Hugging Face dataset id, the Stanford aclImdb .tar.gz or its folder, or a csv/tsv/jsonl/parquet file",
        metavar="SRC"))
    test_data: str | None = field(default=None, metadata=_opt(
        "a labelled file to use as the test split (for --data files, which hold only training rows)",
        metavar="SRC"))
    text_column: str = field(default="text", metadata=_opt("text column of table sources", metavar="NAME"))
    label_column: str = field(default="label", metadata=_opt(
        "label column: of a table source (any 2 or more distinct values), or of the Stanford archive, `label` "
        "(negative/positive) or `rating` (its 1-4 and 7-10 stars; the Hugging Face hub copy has no ratings)",
        metavar="NAME"))
    labels: str | None = field(default=None, metadata=_opt(
        "the classes, in the order the model gives them (default: from the data: 0/1 and neg/pos are "
        "negative,positive; numbers go ascending; the usual sentiment names from negative to positive; "
        "others alphabetically)", metavar="A,B,..."))
    head: str = field(default="auto", metadata=_opt(
        "with --finetune-from: keep the bundle's output layer (its classes), learn a new one for the data's "
        "classes, or auto: keep it when the data's classes are the bundle's", choices=HEAD_CHOICES))
    out: str | None = field(default=None, metadata=_opt(
        "run folder for the bundle, checkpoint and curves (default: runs/<model>-<time>)", metavar="DIR"))
    vocab_size: int = field(default=10_000, metadata=_opt("most frequent training words kept"))
    max_len: int = field(default=200, metadata=_opt("tokens the model reads per review"))
    truncate: str = field(default="tail", metadata=_opt(
        "which tokens of a long review to keep; the end holds the verdict", choices=TRUNCATE_SIDES))
    embedding_dim: int | None = field(default=None, metadata=_opt("embedding size" + PER_MODEL, metavar="N"))
    hidden_size: int = field(default=256, metadata=_opt("recurrent state size (per direction)", metavar="N"))
    num_layers: int | None = field(default=None, metadata=_opt("stacked recurrent layers" + PER_MODEL, metavar="N"))
    dropout: float = field(default=0.4, metadata=_opt("dropout on embeddings, between layers and before the head",
                                                      metavar="P"))
    word_dropout: float | None = field(default=None, metadata=_opt(
        "share of word positions blanked in each training review" + PER_MODEL, metavar="P"))
    ema: float | None = field(default=None, metadata=_opt(
        "keep, validate and save an exponential moving average of the weights with this decay per step (0: off)"
        + PER_MODEL, metavar="DECAY"))
    crop: float = field(default=0.0, metadata=_opt(
        "share of training reviews replaced, each step, by a random contiguous crop of --crop-words words "
        "with the review's label, so the classifier also learns from short text; 0: off", metavar="P"))
    crop_words: str = field(default="5-40", metadata=_opt("the crops' length range in words, MIN-MAX",
                                                          metavar="MIN-MAX"))
    excerpts: int = field(default=0, metadata=_opt(
        "add this many excerpts of each training review (1-3 consecutive sentences, with the review's label) "
        "to the training rows, so the classifier also learns from sentences; 0: off", metavar="N"))
    adversarial: float | None = field(default=None, metadata=_opt(
        "adversarial training (Miyato et al. 2017): each step also learns from its reviews with the embedded "
        "words pushed this far (L2 norm per review) in the direction that raises the loss most; 0: off"
        + PER_MODEL, metavar="EPS"))
    epochs: int | None = field(default=None, metadata=_opt("maximum epochs" + PER_MODEL, metavar="N"))
    batch_size: int = field(default=64, metadata=_opt("reviews per step (per process under torchrun)", metavar="N"))
    lr: float | None = field(default=None, metadata=_opt("peak learning rate of the one-cycle schedule" + PER_MODEL,
                                                         metavar="LR"))
    weight_decay: float = field(default=0.01, metadata=_opt("AdamW weight decay", metavar="W"))
    grad_clip: float = field(default=1.0, metadata=_opt("clip the gradient norm to this (0: off)", metavar="NORM"))
    patience: int = field(default=3, metadata=_opt(
        "stop after this many epochs without a better validation accuracy", metavar="N"))
    pretrain: str | None = field(default=None, metadata=_opt(
        "first train the embedding and encoder as a language model on train + unlabelled reviews",
        choices=("lm",)))
    # A language model of a few epochs did not move test accuracy; 10 did (docs/experiments.md).
    pretrain_epochs: int = field(default=10, metadata=_opt("language-model epochs with --pretrain lm", metavar="N"))
    finetune_from: str | None = field(default=None, metadata=_opt(
        "go on training a finished bundle (its weights, tokenizer, kind and sizes) with this run's recipe",
        metavar="BUNDLE"))
    grow_vocab: int | None = field(default=None, metadata=_opt(
        "with --finetune-from: add up to N words of the training rows that the bundle's vocabulary lacks (those "
        "seen at least twice, most frequent first); each starts as the bundle's <unk> (default: see "
        "docs/training.md; 0: off)", metavar="N"))
    body_lr: float | None = field(default=None, metadata=_opt(
        "peak learning rate of the embedding and encoder, the head keeping --lr: lower keeps a fine-tuned "
        "model closer to what it learned (default: --lr, or per docs/training.md with --finetune-from)",
        metavar="LR"))
    init_from: str | None = field(default=None, metadata=_opt(
        "start from the language model (and tokenizer) of an earlier --pretrain lm run folder", metavar="RUN_DIR"))
    balanced: bool = field(default=False, metadata=_opt(
        "decide as if every class were equally common, for labels some of which are rare (ratings): each "
        "class's probability is weighed by its share of the training rows to a power chosen on the "
        "validation split for macro-F1 (recorded with the calibration; raises macro-F1, may cost accuracy)"))
    validation_fraction: float = field(default=0.1, metadata=_opt(
        "share of train held out for validation (test is never used for choices)", metavar="F"))
    train_subset: int | None = field(default=None, metadata=_opt(
        "train on a seeded subset of this many training reviews (quick runs)", metavar="N"))
    test_subset: int | None = field(default=None, metadata=_opt(
        "evaluate on a seeded subset of this many test reviews (0: skip the test split)", metavar="N"))
    seed: int = field(default=0, metadata=_opt("random seed: the same seed on CPU gives the same metrics"))
    device: str = field(default="auto", metadata=_opt("where to train", choices=("auto", "cpu", "cuda")))
    precision: str = field(default="auto", metadata=_opt(
        "arithmetic of the training steps (weights stay float32; validation and test run in float32): auto is "
        "bfloat16 on CPUs that compute it natively, float32 elsewhere", choices=PRECISIONS))
    weights_dtype: str = field(default="float32", metadata=_opt(
        "dtype of the saved weights", choices=("float32", "float16")))
    cache_dir: str | None = field(default=None, metadata=_opt(
        "datasets cache folder (default: the Hugging Face cache)", metavar="DIR"))

    def __post_init__(self):
        if self.finetune_from:
            self._take_sizes_from(self.finetune_from)
        if self.model not in MODEL_KINDS:
            raise SentimentError(f"--model must be one of {', '.join(MODEL_KINDS)} (got {self.model!r})")
        recipe = {**RECIPES[self.model],
                  **(PRETRAINED_RECIPES.get(self.model, {}) if self.pretrain or self.init_from else {}),
                  "grow_vocab": 0, **(FINETUNE_RECIPE if self.finetune_from else {})}
        for name, value in recipe.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        positive = ("vocab_size", "max_len", "embedding_dim", "hidden_size", "num_layers", "epochs",
                    "batch_size", "patience", "pretrain_epochs")
        check_whole(self, positive)
        check_whole(self, ("max_len",), minimum=2)
        check_whole(self, ("excerpts", "grow_vocab"), minimum=0)
        if self.grow_vocab and not self.finetune_from:
            raise SentimentError("--grow-vocab adds words to the vocabulary of --finetune-from's bundle; "
                                 "a model trained afresh learns its own (--vocab-size)")
        if self.body_lr is not None and not self.body_lr > 0:
            raise SentimentError(f"--body-lr must be positive (got {self.body_lr})")
        for name in ("lr", "weight_decay", "grad_clip", "adversarial"):
            if getattr(self, name) < 0 or (name == "lr" and self.lr == 0):
                raise SentimentError(f"--{name.replace('_', '-')} must be {'positive' if name == 'lr' else 'at least 0'}"
                                     f" (got {getattr(self, name)})")
        self.crop_range()
        for name in ("dropout", "word_dropout", "ema", "crop"):
            if not 0 <= getattr(self, name) < 1:
                raise SentimentError(f"--{name.replace('_', '-')} must be in [0, 1) (got {getattr(self, name)})")
        if self.head not in HEAD_CHOICES:
            raise SentimentError(f"--head must be one of {', '.join(HEAD_CHOICES)} (got {self.head!r})")
        if self.labels is not None:
            data_module.order_labels([], self.label_list())
        if not 0 < self.validation_fraction < 1:
            raise SentimentError(f"--validation-fraction must be between 0 and 1 (got {self.validation_fraction})")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and value < (2 if name == "train_subset" else 0):
                raise SentimentError(f"--{name.replace('_', '-')} is too small (got {value})")
        if self.pretrain and self.init_from:
            raise SentimentError("--pretrain and --init-from exclude each other: pretrain here, or start from "
                                 "an earlier run's language model")
        if self.pretrain:
            from .pretrain import check_sizes

            check_sizes(self.model, self.num_layers)

    def label_list(self) -> list[str] | None:
        """``--labels`` as a list of classes (None: from the data)."""
        return None if self.labels is None else [name.strip() for name in self.labels.split(",")]

    def _take_sizes_from(self, bundle: str) -> None:
        """A fine-tuned model keeps the kind, sizes and text pipeline of the bundle it starts from."""
        from ..bundle import read_config

        config = read_config(bundle)
        model, text = config["model"], config["text"]
        self.model = model["kind"]
        self.embedding_dim, self.hidden_size, self.num_layers = (model["embedding_dim"], model["hidden_size"],
                                                                 model["num_layers"])
        self.vocab_size = text["vocab_size"] - 2
        self.max_len, self.truncate = text["max_len"], text["truncate"]
        if self.pretrain or self.init_from:
            raise SentimentError("--finetune-from starts from a finished model: it excludes --pretrain and --init-from")

    def crop_range(self) -> tuple[int, int]:
        """``--crop-words`` as (shortest, longest)."""
        try:
            low, high = (int(part) for part in str(self.crop_words).split("-"))
        except ValueError:
            raise SentimentError(f"--crop-words must be MIN-MAX, such as 5-40 (got {self.crop_words!r})") from None
        if not 1 <= low <= high:
            raise SentimentError(f"--crop-words needs 1 <= MIN <= MAX (got {self.crop_words!r})")
        return low, high

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(kind=self.model, vocab_size=vocab_size, embedding_dim=self.embedding_dim,
                           hidden_size=self.hidden_size, num_layers=self.num_layers, dropout=self.dropout,
                           word_dropout=self.word_dropout)


# --- resuming ----------------------------------------------------------------------

# What may differ when a run continues: where it computes and where the datasets cache lives
# change nothing a run learns (a CPU run continued on a GPU is close, not bit-identical).
CHANGEABLE_ON_RESUME = ("device", "cache_dir")


def typed_options(argv: list[str]) -> dict:
    """The options of ``TrainConfig`` typed in ``argv``, with their values; defaults left out.

    A parsed ``TrainConfig`` cannot tell ``--seed 0`` typed from the default seed 0, so the
    command line is read again with no defaults."""
    import argparse

    from ..options import add_options

    parser = argparse.ArgumentParser(add_help=False)
    add_options(parser, TrainConfig)
    parser.add_argument("--resume")
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    known, _ = parser.parse_known_args(argv)
    return {name: value for name, value in vars(known).items() if name != "resume"}


def resumed_config(recorded: dict, typed: dict, run_dir: Path) -> TrainConfig:
    """The recorded options of the run in ``run_dir``, with the typed ones that may change;
    any other typed option that differs is refused, naming it, rather than ignored."""
    from ..options import option_name

    changed = {}
    for name, value in typed.items():
        was = recorded.get(name)
        if name == "out" and value is not None and Path(value).resolve() == run_dir.resolve():
            continue
        if name not in CHANGEABLE_ON_RESUME and value != was:
            changed[name] = (was, value)
    if changed:
        shown = "; ".join(f"{option_name(name)} was {'unset' if was is None else was}, now {value}"
                          for name, (was, value) in changed.items())
        raise SentimentError(f"--resume {run_dir} continues the run as it was started, with its recorded options: "
                             f"{shown} (only {' and '.join(map(option_name, CHANGEABLE_ON_RESUME))} may change; "
                             "to train differently, start a new run with another --out)")
    return TrainConfig(**{**recorded, **{name: typed[name] for name in CHANGEABLE_ON_RESUME if name in typed}})

