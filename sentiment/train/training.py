"""Training: one readable program from data to a saved bundle, after karpathy/nanoGPT.

Every epoch ends with an atomic ``checkpoint.pt`` holding all that ``--resume`` needs
(weights, optimizer, schedule, RNG state, history, the best weights so far), so a run
killed at any moment continues to the same result. The best model on validation is
written as a bundle whenever it improves; Ctrl-C stops cleanly and keeps it.
Under ``torchrun`` each process trains on its shard with DDP and only rank 0 writes.

The pieces it uses live in modules that do not import it: ``recipes`` (the options),
``loop`` (steps, epochs, validation, a stage's optimizer), ``runs`` (the run folder),
``distributed`` (ranks) and ``pretrain`` (the language-model stage).
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .. import calibration
from .. import data as data_module
from ..bundle import save_bundle
from .distributed import Processes, deal_out, device_kind, gather_rng
from ..errors import Interrupted, SentimentError
from ..files import write_atomic, write_text_atomic
from .loop import (CTRL_C, WeightAverage, adversarial_perturbation, cpu_copy, epoch_order,  # noqa: F401 (re-exported)
                   evaluate, parameter_groups, evaluate_state, resume_stage, run_epoch, start_stage, state_copy, training_dtype)
from ..metrics import classification_metrics, format_table, load_scikit_learn
from ..models import SentimentRNN
from ..predict import class_probabilities, uncalibrated
from .pretrain import LM_WEIGHTS, load_lm_into, pretrain, save_lm
from .classes import bundle_labels, check_classes, class_counts, load_splits, start_from_bundle
from .recipes import TrainConfig, resumed_config
from .runs import (CHECKPOINT, TOKENIZER, check_run_folder, clear_run_leftovers, default_out, load_checkpoint,
                   plot_history, save_checkpoint, versions, writing)
from ..text import (MOST_SENTENCES, TextEncoder, excerpts, grow_vocabulary, train_tokenizer,
                    unknown_words)

# The loop's pieces are imported from here by older code and tests too.
__all__ = ["TrainConfig", "train", "prepare_data", "run_epoch", "epoch_order", "training_dtype", "WeightAverage",
           "adversarial_perturbation", "CHECKPOINT"]


def _subset(ds, n: int | None, seed: int):
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def prepare_data(config: TrainConfig, procs: Processes):
    """Train/validation/test rows; rank 0 builds the cache first so others only read it.
    The rows' ``label`` feature (a ``ClassLabel``) names the run's classes."""
    splits = names = None
    for turn in (0, 1):
        if procs.main == (turn == 0):
            splits, names, _ = load_splits(config)
        procs.barrier()
    train = splits["train"]
    if "label" in train.column_names and -1 in set(train.unique("label")):
        raise SentimentError(f"{config.data}: the train split has unlabelled rows (label -1)")
    train = _subset(train, config.train_subset, config.seed)
    check_classes(config, train, names)
    train, validation = data_module.split_validation(train, config.validation_fraction, config.seed)
    test = splits.get("test")
    if test is not None:
        test = None if config.test_subset == 0 else _subset(test, config.test_subset, config.seed)
    report = data_module.undecodable_report(splits)
    if report and procs.main:
        print(report, file=sys.stderr)
    return train, validation, test, splits.get("unsup")


def train(config: TrainConfig, resume: str | None = None, typed: dict | None = None) -> Path:
    """Train per ``config`` (or continue the run in ``resume``) and return the bundle's folder.

    ``typed``: the options typed on the command line with ``resume`` (the command line's own reading);
    only those that may change on resume are taken, any other that differs is refused."""
    checkpoint = None
    main_process = int(os.environ.get("RANK", "0")) == 0
    try:
        if resume:
            run_dir = Path(resume)
            checkpoint = load_checkpoint(run_dir)
            config = resumed_config(checkpoint["config"], typed or {}, run_dir)
            if main_process:
                clear_run_leftovers(run_dir)
        elif config.out and main_process:
            check_run_folder(config.out)
        kind = device_kind(config.device)
        procs = Processes.start(kind)
    except KeyboardInterrupt:
        _interrupted_at_start(main_process, resume)
    try:
        with CTRL_C.watching():
            return _train(config, procs, kind, checkpoint, resume)
    finally:
        procs.close()


def _interrupted_at_start(main_process: bool, resume: str | None):
    if main_process and resume:
        print(f"\ninterrupted before training went on: {resume} is as it was; the same command continues it",
              file=sys.stderr)
    elif main_process:
        print("\ninterrupted before training began: nothing to resume; the same command starts the run again",
              file=sys.stderr)
    raise Interrupted from None


@dataclass
class Run:
    """The facts of one run that its stages share."""

    config: TrainConfig
    procs: Processes
    device: torch.device
    dtype: torch.dtype
    folder: Path
    checkpoint: dict | None
    record: dict                    # what config.json and every checkpoint keep of the run
    started: float = field(default_factory=time.time)

    @property
    def say(self) -> Callable:
        return print if self.procs.main else (lambda *a, **k: None)

    def wall_time(self) -> float:
        """Seconds of every attempt of a resumed run, not just the last."""
        return time.time() - self.started + (self.checkpoint or {}).get("wall_time_s", 0.0)

    def save_checkpoint(self, state: dict) -> None:
        """Rank 0 writes ``state`` with the run's record; every rank takes part in gathering RNG states."""
        rng = gather_rng(self.procs)
        if self.procs.main:
            save_checkpoint({"config": asdict(self.config), **state, "rng": rng, "command": self.record["command"],
                             "resumed_with": self.record.get("resumed_with", []), "wall_time_s": self.wall_time()},
                            self.folder / CHECKPOINT)


def _start(config: TrainConfig, procs: Processes, kind: str, checkpoint: dict | None, resume: str | None) -> Run:
    device = torch.device(f"cuda:{procs.local_rank}" if kind == "cuda" else "cpu")
    # A resumed run records the command that started it (what reproduces it) and the
    # resume commands after it.
    this_command = shlex.join([Path(sys.executable).name, *sys.argv])
    command = checkpoint.get("command", this_command) if checkpoint else this_command
    resumed_with = [*checkpoint.get("resumed_with", []), this_command] if checkpoint else []
    record = {
        "command": command,
        **({"resumed_with": resumed_with} if resumed_with else {}),
        "training": asdict(config),
        "data_fingerprint": data_module.fingerprint(config.data),
        "device": f"{kind}{'' if procs.world == 1 else f' x {procs.world}'}"
                  + (f" ({torch.cuda.get_device_name(device)})" if kind == "cuda" else ""),
        "versions": versions(),
    }
    folder = Path(resume or procs.share(config.out or default_out(config.model)))
    return Run(config, procs, device, training_dtype(config.precision, kind), folder, checkpoint, record)


def _encoder(run: Run, train_rows) -> TextEncoder:
    """The run's tokenizer: its own on resume, the one its pretrained weights learned with, or a new one."""
    config = run.config
    if run.checkpoint is not None:
        return TextEncoder.load(run.folder / TOKENIZER, config.max_len, config.truncate)
    if config.init_from or config.finetune_from:
        # The pretrained embedding rows only mean something with the vocabulary they learned.
        encoder = TextEncoder.load(Path(config.init_from or config.finetune_from) / TOKENIZER, config.max_len,
                                   config.truncate)
        if config.finetune_from:
            encoder = _grown(run, encoder, train_rows["text"])
        return encoder
    # Every rank learns the same vocabulary from the same rows; no file exchange needed.
    tokenizer = train_tokenizer(iter(train_rows["text"]), config.vocab_size, length=len(train_rows))
    return TextEncoder(tokenizer, config.max_len, config.truncate)


def _grown(run: Run, encoder: TextEncoder, texts) -> TextEncoder:
    """The fine-tuned bundle's vocabulary, with ``--grow-vocab`` of the training rows' words it lacks."""
    config = run.config
    total, missing, counts = unknown_words(encoder, texts)
    grown, added = grow_vocabulary(encoder, texts, config.grow_vocab) if config.grow_vocab else (encoder, [])
    run.say(f"vocabulary: {missing} of the {total} words of the training rows ({missing / max(total, 1):.1%}, "
            f"{len(counts)} distinct) are unknown to {config.finetune_from}"
            + (f"; {len(added)} of them, each seen at least twice, added" if config.grow_vocab else ""))
    return grown


def _train(config: TrainConfig, procs: Processes, kind: str, checkpoint: dict | None,
           resume: str | None) -> Path:
    # A run cut during --pretrain lm left a checkpoint of the language-model stage; any
    # other checkpoint is the classifier's (which then starts from it, not afresh).
    lm_checkpoint = checkpoint if checkpoint is not None and checkpoint.get("stage") == "lm" else None
    classifier_checkpoint = checkpoint if lm_checkpoint is None else None
    try:
        run = _start(config, procs, kind, checkpoint, resume)
        train_rows, val_rows, test_rows, unlabelled = prepare_data(config, procs)
        names = tuple(train_rows.features["label"].names)
        run.record["labels"] = list(names)
        encoder = _encoder(run, train_rows)
        data = _encode(run, encoder, train_rows, val_rows, names)
        # scikit-learn (the metrics of every validation) loads here: after the checks of the
        # data, so a mistake in it is reported without waiting for it, and before the run
        # folder is written, so a Ctrl-C while it loads leaves nothing behind.
        load_scikit_learn()
        if procs.main and checkpoint is None:
            run.folder.mkdir(parents=True, exist_ok=True)
            with writing(run.folder / TOKENIZER, run.folder):
                write_atomic(run.folder / TOKENIZER, encoder.save)
        run.say(f"data: {len(data.train_labels)} train, {len(data.val_labels)} validation, "
                f"{0 if test_rows is None else len(test_rows)} test reviews; vocabulary {encoder.vocab_size} tokens; "
                f"device {run.device}{f' x {procs.world} processes' if procs.world > 1 else ''}; "
                f"run folder {run.folder}")
        torch.manual_seed(config.seed)
        model = SentimentRNN(replace(config.model_config(encoder.vocab_size), num_classes=len(names))).to(run.device)
        if checkpoint is None and config.finetune_from:
            keep_head = config.head != "new" and names == bundle_labels(config.finetune_from)
            run.say(start_from_bundle(model, config.finetune_from, keep_head))
        elif checkpoint is None and config.init_from:
            load_lm_into(model, Path(config.init_from))
            run.say(f"embedding and encoder initialised from {Path(config.init_from) / LM_WEIGHTS}")
        pretraining = config.pretrain == "lm" and classifier_checkpoint is None
        if pretraining:
            texts = list(train_rows["text"]) + ([] if unlabelled is None else list(unlabelled["text"]))
            lm_encoded = encoder.encode(texts)
    except KeyboardInterrupt:
        _interrupted_at_start(procs.main, resume)
    if pretraining:
        _language_model(run, model, lm_encoded, len(train_rows), lm_checkpoint)
    progress = _classifier(run, model, encoder, data, classifier_checkpoint)
    if procs.main:
        try:
            _finish(run, model, encoder, data, progress, val_rows, test_rows)
        except KeyboardInterrupt:
            print(f"\ninterrupted while measuring the best model (epoch {progress.best['epoch']}): it is in "
                  f"{run.folder} without its final metrics; `python train.py --resume {run.folder}` measures it",
                  file=sys.stderr)
            raise Interrupted from None
    # Every rank ends together: none tears the process group down while rank 0 still
    # computes the final metrics (a rank that left early was seen to abort under load).
    procs.barrier()
    return run.folder


def _encode(run: Run, encoder: TextEncoder, train_rows, val_rows, names: tuple[str, ...]) -> "Data":
    """The training and validation rows as ids, once the training rows are known to hold words."""
    config = run.config
    train_encoded, train_labels = encoder.encode(train_rows["text"]), np.asarray(train_rows["label"], dtype=np.int64)
    val_encoded, val_labels = encoder.encode(val_rows["text"]), np.asarray(val_rows["label"], dtype=np.int64)
    _check_words(run, train_encoded + val_encoded, np.concatenate([train_labels, val_labels]), names)
    if config.excerpts:
        short, short_labels = excerpts(train_rows["text"], train_labels, config.seed, config.excerpts)
        train_encoded = train_encoded + encoder.encode(short)
        train_labels = np.concatenate([train_labels, short_labels])
        run.say(f"excerpts: {len(short)} of 1-{MOST_SENTENCES} sentences added to the training rows")
    return Data(train_encoded, train_labels, val_encoded, val_labels, names)


def _check_words(run: Run, encoded, labels: np.ndarray, names: tuple[str, ...]) -> None:
    """A classifier learns from words: training rows of a class that hold none (empty, or
    punctuation alone) give it nothing to tell that class by, and it would only learn the
    share of each class."""
    wordless = encoded.total == 0
    if not wordless.any():
        return
    counts = class_counts(names, labels, wordless)
    if any(wordless[labels == c].all() for c in range(len(names)) if (labels == c).any()):
        raise SentimentError(f"{run.config.data}: no words to learn: {int(wordless.sum())} of {len(labels)} training "
                             f"rows are empty or hold no words ({counts}); a classifier needs reviews with words "
                             "in every class")
    run.say(f"note: {int(wordless.sum())} of {len(labels)} training rows are empty or hold no words ({counts}); "
            "they are trained on as empty reviews", file=sys.stderr)


@dataclass
class Data:
    train: object
    train_labels: np.ndarray
    val: object
    val_labels: np.ndarray
    classes: tuple[str, ...] = data_module.LABELS


def _language_model(run: Run, model: SentimentRNN, encoded, n_train: int, lm_checkpoint: dict | None) -> None:
    """The ``--pretrain lm`` stage: checkpointed every epoch, saved as ``lm.safetensors``."""
    config = run.config
    n_unlabelled = len(encoded.lengths) - n_train
    run.say(f"language model: {len(encoded.lengths)} reviews ({n_train} train + {n_unlabelled} unlabelled), "
            f"{config.pretrain_epochs} epoch(s)")
    if lm_checkpoint is not None:
        run.say(f"resuming {run.folder}: language model after epoch {len(lm_checkpoint['losses'])}")
    try:
        pretrain(model, encoded, config.pretrain_epochs, config.batch_size, config.lr, config.seed, run.device,
                 run.procs, dtype=run.dtype, resume=lm_checkpoint,
                 after_epoch=lambda state: run.save_checkpoint({"stage": "lm", **state}))
    except KeyboardInterrupt:
        if run.procs.main and (run.folder / CHECKPOINT).is_file():
            print(f"\ninterrupted while pretraining the language model: its last finished epoch is "
                  f"in {run.folder}; continue with --resume {run.folder}", file=sys.stderr)
        elif run.procs.main:
            print("\ninterrupted before the first language-model epoch ended: nothing saved", file=sys.stderr)
        raise Interrupted from None
    if run.procs.main:
        save_lm(model, run.folder / LM_WEIGHTS)


@dataclass
class Progress:
    """Where the classifier stage stands: what a checkpoint keeps of it."""

    best_state: dict
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": 0, "val_accuracy": -1.0, "val_loss": float("inf")})
    bad_epochs: int = 0
    epoch: int = 0
    stopped: bool = False


def _save_best(run: Run, model: SentimentRNN, encoder: TextEncoder, progress: Progress, metrics: dict,
               finished: bool) -> None:
    final_model = SentimentRNN(model.config)
    final_model.load_state_dict(progress.best_state)
    trained = {"best_epoch": progress.best["epoch"], "epochs_run": len(progress.history), "finished": finished,
               "wall_time_s": round(run.wall_time(), 1),
               # CPU wall time depends on these.
               "torch_threads": torch.get_num_threads(),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with writing(run.folder, run.folder, " (the bundle)"):
        save_bundle(run.folder, final_model, encoder, {**run.record, **metrics, "trained": trained},
                    weights_dtype=run.config.weights_dtype)


def _classifier(run: Run, model: SentimentRNN, encoder: TextEncoder, data: Data, saved: dict | None) -> Progress:
    """The classifier stage: epochs until ``--epochs``, early stop or Ctrl-C; returns where it ended."""
    config, procs = run.config, run.procs
    stage = start_stage(model, parameter_groups(model, config.lr, config.body_lr), config.lr, config.weight_decay,
                        config.epochs,
                        len(data.train_labels), config.batch_size, run.device, procs)
    progress = Progress(best_state=state_copy(model))
    average = WeightAverage(model, config.ema) if config.ema else None
    if saved is not None:
        progress = Progress(saved["best_model"], saved["history"], saved["best"], saved["bad_epochs"], saved["epoch"],
                            saved.get("stopped", False))
        if average is not None:
            average.load_state_dict(saved["ema"])
        resume_stage(stage, saved["model"], saved, procs)
        run.say(f"resuming {run.folder} after epoch {progress.epoch}")
    else:
        torch.manual_seed(config.seed + procs.rank)
    try:
        while progress.epoch < config.epochs and not progress.stopped:
            _epoch(run, stage, model, encoder, data, progress, average)
            CTRL_C.check()
    except KeyboardInterrupt:
        if procs.main and progress.history:
            validation = evaluate_state(model, progress.best_state, data.val, data.val_labels, run.device,
                                        data.classes)
            _save_best(run, model, encoder, progress, {"metrics": {"validation": validation}}, finished=False)
            print(f"\ninterrupted: the best model so far (epoch {progress.best['epoch']}, validation accuracy "
                  f"{progress.best['val_accuracy']:.4f}) is in {run.folder}; continue with --resume {run.folder}",
                  file=sys.stderr)
        elif procs.main:
            print("\ninterrupted before the first epoch ended: nothing saved", file=sys.stderr)
        raise Interrupted from None
    return progress


def _epoch(run: Run, stage, model: SentimentRNN, encoder: TextEncoder, data: Data, progress: Progress,
           average: WeightAverage | None) -> None:
    """One epoch of the classifier: train, validate, keep the best, checkpoint."""
    config, procs = run.config, run.procs
    progress.epoch += 1
    epoch = progress.epoch
    # The order of an epoch depends on the seed and epoch alone, so a resumed run sees
    # exactly the batches an uninterrupted one would. Batches are formed over all
    # processes (batch_size x world reviews), then dealt out, so each process's batch
    # holds reviews of similar length too.
    order = epoch_order(len(data.train_labels), config.batch_size * procs.world, config.seed, epoch,
                        data.train.lengths)
    order = deal_out(order, stage.per_rank, procs)
    tick = time.time()
    bar = tqdm(total=stage.steps, desc=f"epoch {epoch}/{config.epochs}", unit="step",
               disable=not procs.main, dynamic_ncols=True, leave=False, file=sys.stderr)
    seen, total_loss, correct = run_epoch(stage.wrapped, stage.optimizer, stage.schedule, data.train,
                                          data.train_labels, order, config.batch_size, config.grad_clip, run.device,
                                          bar, procs.world, dtype=run.dtype, average=average,
                                          adversarial=config.adversarial,
                                          crop=(config.crop, *config.crop_range()))
    bar.close()
    if average is None:
        val = evaluate(model, data.val, data.val_labels, 256, run.device, classes=data.classes)
    else:
        # The averaged weights are the ones validated and saved; training goes on from the raw ones.
        raw = state_copy(model)
        val = evaluate_state(model, average.state, data.val, data.val_labels, run.device, data.classes)
        model.load_state_dict(raw)
    record = {"epoch": epoch, "train_loss": total_loss / seen, "train_accuracy": correct / seen,
              "val_loss": val["nll"], "val_accuracy": val["accuracy"],
              "seconds": round(time.time() - tick, 1), "lr": stage.schedule.get_last_lr()[-1]}
    progress.history.append(record)
    best = progress.best
    improved = (val["accuracy"], -val["nll"]) > (best["val_accuracy"], -best["val_loss"])
    if improved:
        progress.best = {"epoch": epoch, "val_accuracy": val["accuracy"], "val_loss": val["nll"]}
        progress.best_state = state_copy(model) if average is None else cpu_copy(average.state)
        progress.bad_epochs = 0
    else:
        progress.bad_epochs += 1
    progress.stopped = progress.bad_epochs >= config.patience
    run.say(f"epoch {epoch}/{config.epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f} | validation loss {val['nll']:.4f} "
            f"acc {val['accuracy']:.4f}{' *best*' if improved else ''} | {record['seconds']:.0f}s, "
            f"{len(data.train_labels) / max(time.time() - tick, 1e-9):.0f} reviews/s")
    if procs.main and improved:
        _save_best(run, model, encoder, progress, {"metrics": {"validation": val}}, finished=False)
    run.save_checkpoint({"epoch": epoch, "model": state_copy(model), "optimizer": stage.optimizer.state_dict(),
                         "schedule": stage.schedule.state_dict(), "history": progress.history,
                         "best": progress.best, "best_model": progress.best_state,
                         "bad_epochs": progress.bad_epochs, "stopped": progress.stopped,
                         **({"ema": average.state_dict()} if average is not None else {})})
    if procs.main:
        plot_history(progress.history, run.folder / "curves.png")
        with writing(run.folder / "history.json", run.folder):
            write_text_atomic(run.folder / "history.json", json.dumps(progress.history, indent=2) + "\n")
    if progress.stopped:
        run.say(f"early stop: no better validation accuracy for {config.patience} epochs")


def _finish(run: Run, model: SentimentRNN, encoder: TextEncoder, data: Data, progress: Progress, val_rows,
            test_rows) -> None:
    """Final metrics of the best weights as saved, the finished bundle, the table."""
    config = run.config
    # Final metrics are those of the weights as saved (fp16 rounds them), so evaluating
    # the bundle later reproduces them exactly.
    saved_dtype = getattr(torch, config.weights_dtype)
    progress.best_state = {k: v.to(saved_dtype).float() if v.is_floating_point() else v
                           for k, v in progress.best_state.items()}
    model.load_state_dict(progress.best_state)
    # Temperature scaling by length, fitted on validation and excerpts of it; every figure
    # recorded, and every probability the bundle gives later, is calibrated.
    calibrated = calibration.fit(val_rows["text"], data.val_labels, uncalibrated(model, encoder, run.device),
                                 config.seed)
    fitted = calibration.Calibration.of(calibrated)
    p_val = class_probabilities(model, data.val, 256, run.device, fitted.temperatures(data.val.lengths))
    if config.balanced:
        # The class weights are chosen on the calibrated probabilities, as the bundle will give them.
        calibrated["balance"] = calibration.fit_balance(
            data.val_labels, p_val, calibration.class_shares(data.train_labels, len(data.classes)))
        fitted = calibration.Calibration.of(calibrated)
        run.say(calibration.describe_balance(calibrated))
    metrics = {"validation": classification_metrics(data.val_labels, fitted.reweigh(p_val), data.classes)}
    if test_rows is not None:
        test_labels = np.asarray(test_rows["label"], dtype=np.int64)
        metrics["test"] = evaluate(model, encoder.encode(test_rows["text"]), test_labels, 256, run.device,
                                   data.classes, fitted)
    _save_best(run, model, encoder, progress, {"metrics": metrics, "calibration": calibrated}, finished=True)
    print(format_table({config.model: metrics.get("test", metrics["validation"])}, classes=data.classes,
                       title=f"{'test' if 'test' in metrics else 'validation'} metrics of the best epoch "
                             f"({progress.best['epoch']}), {run.wall_time():.0f}s in all:"))
    print(f"model saved to {run.folder}")
