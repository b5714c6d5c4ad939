"""The steps and epochs both training stages run: batches, the step (autocast, adversarial
words, gradient clipping, weight average), Ctrl-C, validation, and a stage's optimizer."""
from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .distributed import Processes, restore_rng, wrap
from ..calibration import Calibration
from ..metrics import classification_metrics
from ..predict import class_probabilities, resolve_precision
from ..text import PAD_ID


def evaluate(model: nn.Module, encoded, labels: np.ndarray, batch_size: int, device, classes=None,
             calibration: Calibration | None = None) -> dict:
    """Metrics of the model on encoded reviews, with ``calibration`` when given (its temperature
    by length and class weights; None: the network as trained); their ``nll`` is the validation loss."""
    calibration = calibration or Calibration()
    probabilities = class_probabilities(model, encoded, batch_size, device, calibration.temperatures(encoded.lengths))
    return classification_metrics(labels, calibration.reweigh(probabilities), classes)


def evaluate_state(model, state, encoded, labels, device, classes=None) -> dict:
    model.load_state_dict(state)
    return evaluate(model, encoded, labels, 256, device, classes=classes)


def training_dtype(precision: str, device_kind: str) -> torch.dtype:
    """The autocast dtype of training steps. ``auto`` picks bfloat16 only on CPUs that compute it
    natively (faster there; docs/experiments.md has the training benchmark); GPU runs stay
    float32, the arithmetic the shipped recipes were chosen with."""
    if precision == "auto" and device_kind == "cuda":
        return torch.float32
    return getattr(torch, resolve_precision(precision, device_kind))


def epoch_order(n: int, batch_size: int, seed: int, epoch: int, lengths: np.ndarray | None = None,
                window: int = 50) -> np.ndarray:
    """The review order of one epoch, from the seed and epoch alone (a resumed run sees the same batches).

    With ``lengths``, each window of ``window`` shuffled batches is sorted by length before it
    is cut into batches, and the batches are then shuffled: a batch runs only as many steps as
    its longest review, so similar lengths save the steps spent on padding (a third of
    an IMDB epoch at 200 tokens), while each batch still draws from a random slice of the data.
    """
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=generator).numpy()
    if lengths is None:
        return order
    span = batch_size * window
    chunks = [order[i:i + span] for i in range(0, n, span)]
    chunks = [chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in chunks]
    batches = [b for chunk in chunks for b in np.array_split(chunk, range(batch_size, len(chunk), batch_size))]
    shuffled = torch.randperm(len(batches), generator=generator).numpy()
    return np.concatenate([batches[i] for i in shuffled])


class WeightAverage:
    """An exponential moving average of a model's weights, updated after every step.

    The decay warms up as (1 + t) / (10 + t), so the random initial weights are forgotten
    within the first epoch instead of lingering for thousands of steps.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.model, self.decay, self.steps = model, decay, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        weight = 1 - min(self.decay, (1 + self.steps) / (10 + self.steps))
        for name, value in self.model.state_dict().items():
            if value.is_floating_point():
                self.state[name].lerp_(value, weight)
            else:
                self.state[name].copy_(value)

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the averaged weights (on the CPU) and the step count."""
        return {"weights": cpu_copy(self.state), "steps": self.steps}

    def load_state_dict(self, saved: dict) -> None:
        for name, value in saved["weights"].items():
            self.state[name].copy_(value)
        self.steps = saved["steps"]


def cpu_copy(state: dict) -> dict:
    return {k: v.detach().to("cpu").clone() for k, v in state.items()}


def state_copy(model: nn.Module) -> dict:
    """The model's weights copied to the CPU, safe from the training that goes on."""
    return cpu_copy(model.state_dict())


class CtrlC:
    """Ctrl-C during training, remembered as well as raised.

    Python's own handler raises KeyboardInterrupt once, wherever the main thread happens to be.
    Should that be inside code that catches and drops it (a library's callback from C, a
    finalizer), training would go on as if Ctrl-C had never been pressed; it did, twice, in
    tests/test_training.py. While ``watching()``, a Ctrl-C is also recorded, and ``check()``,
    called at every training step and after every epoch, raises it again."""

    def __init__(self):
        self.pressed = False

    def _handle(self, signum, frame):
        self.pressed = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt

    @contextmanager
    def watching(self):
        self.pressed = False
        # Only where Python's default handler is in place: a caller's own handler, or SIGINT
        # ignored (a background job of a script), stays as it is.
        own = (threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        previous = signal.signal(signal.SIGINT, self._handle) if own else None
        try:
            yield self
        finally:
            if own:
                signal.signal(signal.SIGINT, previous)
            self.pressed = False


CTRL_C = CtrlC()


def run_epoch(model: nn.Module, optimizer, schedule, encoded, labels: np.ndarray | None, order: np.ndarray,
              batch_size: int, grad_clip: float, device, bar=None, world: int = 1,
              dtype: torch.dtype = torch.float32, average: WeightAverage | None = None,
              adversarial: float = 0.0, crop: tuple[float, int, int] = (0.0, 1, 1)) -> tuple[int, float, int]:
    """One pass over ``order``'s reviews; returns (reviews seen, summed loss, correct predictions).

    With ``labels`` the model returns logits and is trained on cross-entropy; without, the
    model returns its own loss (the language model of ``--pretrain lm``; correct stays 0).
    ``dtype`` bfloat16 runs the steps under autocast (weights and optimizer stay float32).
    ``adversarial`` > 0 adds, per step, the loss of the same reviews with their embedded words
    moved by that L2 norm along the loss's gradient (two forward/backward passes a step).
    ``crop`` (share, shortest, longest) replaces that share of each labelled batch's reviews
    by random contiguous crops of their words (see :func:`crop_batch`)."""
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    seen, total_loss, correct = 0, 0.0, 0
    autocast = torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)
    tick = time.time()
    for start in range(0, len(order), batch_size):
        CTRL_C.check()
        idx = order[start:start + batch_size]
        batch_ids, batch_lengths = encoded.ids[idx], encoded.lengths[idx]
        if crop[0] and labels is not None:
            batch_ids, batch_lengths = crop_batch(batch_ids, batch_lengths, *crop)
        lengths = torch.from_numpy(batch_lengths)
        # Batches are cut to their longest review: no step runs over padding alone.
        ids = torch.from_numpy(batch_ids[:, :int(lengths.max())]).to(device)
        perturbation = None
        if adversarial and labels is not None:
            # A zero perturbation whose gradient is the loss's gradient at the embedded words.
            perturbation = torch.zeros(*ids.shape, model_config(model).embedding_dim, device=device,
                                       requires_grad=True)
        with autocast:
            output = model(ids, lengths, *([] if perturbation is None else [perturbation])).float()
        if labels is None:
            loss = output
        else:
            targets = torch.from_numpy(labels[idx]).to(device)
            loss = nn.functional.cross_entropy(output, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if perturbation is not None:
            with autocast:
                adversarial_output = model(ids, lengths, adversarial_perturbation(perturbation.grad, adversarial)).float()
            nn.functional.cross_entropy(adversarial_output, targets).backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(parameters, grad_clip)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        if average is not None:
            average.update()
        seen += len(idx)
        total_loss += loss.item() * len(idx)
        if labels is not None:
            correct += int((output.argmax(-1) == targets).sum())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", reviews_s=f"{seen * world / (time.time() - tick):.0f}")
    return seen, total_loss, correct


def crop_batch(ids: np.ndarray, lengths: np.ndarray, share: float, shortest: int,
               longest: int) -> tuple[np.ndarray, np.ndarray]:
    """A copy of a batch with a ``share`` of its reviews cut to a random contiguous run of
    ``shortest``..``longest`` of their words (fewer where a review is shorter), at the start
    of the row, padded after: the short text people type, taken from long reviews. Draws
    from torch's generator, so a seeded or resumed run crops alike."""
    ids, lengths = ids.copy(), lengths.copy()
    chosen = (torch.rand(len(lengths)) < share).numpy()
    for row in np.flatnonzero(chosen):
        n = int(lengths[row])
        size = int(torch.randint(min(shortest, n), min(longest, n) + 1, (1,)))
        begin = int(torch.randint(0, n - size + 1, (1,)))
        kept = ids[row, begin:begin + size].copy()
        ids[row, :] = PAD_ID
        ids[row, :size] = kept
        lengths[row] = size
    return ids, lengths


def adversarial_perturbation(gradient: torch.Tensor, norm: float) -> torch.Tensor:
    """The loss's gradient at the embedded words [batch, time, embedding], scaled to L2 ``norm`` per review:
    to first order, the perturbation of that size that raises each review's loss most."""
    return norm * gradient / gradient.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None]


def model_config(model: nn.Module):
    """The ModelConfig of a SentimentRNN, also when DistributedDataParallel wraps it."""
    return getattr(model, "module", model).config


@dataclass
class Stage:
    """What a training stage steps: the (maybe DDP-wrapped) module, AdamW, the one-cycle schedule."""

    module: nn.Module
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    per_rank: int   # reviews each process runs per epoch
    steps: int      # steps per epoch


def parameter_groups(model: nn.Module, lr: float, body_lr: float | None) -> list[dict]:
    """The model's parameters as optimizer groups: with ``body_lr``, the embedding and encoder
    peak at ``body_lr`` and the head at ``lr`` (a pretrained body is kept close to what it knows
    while the head adapts; ULMFiT's discriminative learning rates, in two groups)."""
    if body_lr is None or body_lr == lr:
        return [{"params": list(model.parameters()), "lr": lr}]
    head = [p for name, p in model.named_parameters() if name.startswith("head.")]
    body = [p for name, p in model.named_parameters() if not name.startswith("head.")]
    return [{"params": body, "lr": body_lr}, {"params": head, "lr": lr}]


def start_stage(module: nn.Module, parameters, lr: float, weight_decay: float, epochs: int, n: int,
                batch_size: int, device: torch.device, procs: Processes) -> Stage:
    """The classifier stage and the language-model stage are set up alike: here. ``parameters``
    may be optimizer groups with their own peak ``lr`` each (see :func:`parameter_groups`)."""
    parameters = list(parameters)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    per_rank = -(-n // procs.world)
    steps = -(-per_rank // batch_size)
    peaks = [group["lr"] for group in optimizer.param_groups]
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=epochs * steps)
    return Stage(module, wrap(module, device, procs), optimizer, schedule, per_rank, steps)


def resume_stage(stage: Stage, weights: dict, saved: dict, procs: Processes) -> None:
    """Put back a stage as a checkpoint saved it (the caller restores its own extra state first)."""
    stage.module.load_state_dict(weights)
    stage.optimizer.load_state_dict(saved["optimizer"])
    stage.schedule.load_state_dict(saved["schedule"])
    restore_rng(saved, procs)
