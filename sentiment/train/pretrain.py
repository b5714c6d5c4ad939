"""Language-model pretraining: the embedding and encoder first learn to predict words.

``train.py --pretrain lm`` trains the classifier's own embedding and encoder as a
next-word model on the training reviews plus the unlabelled ones (the ``unsup`` split:
50,000 reviews in the IMDB archive), then trains the classifier from those weights; the
result is saved as ``lm.safetensors`` in the run folder. ``--init-from RUN`` starts a
new classifier from such a file (and its run's tokenizer, so word ids mean the same).
For ``bilstm`` the forward direction predicts the next word and the backward direction
the previous one.

Words are predicted through an adaptive softmax (Grave et al. 2017): the 1,000 most
frequent words (the vocabulary is in frequency order) and one entry per band of rarer
words form the first softmax; a word in a band is then chosen by a smaller second one.
Against a full softmax over 10,000 words this cuts the cost of a prediction about
tenfold, which is most of what an epoch costs on a CPU.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from ..bundle import read_tensors, shape_mismatch
from .distributed import Processes, deal_out
from ..files import write_atomic
from .loop import epoch_order, resume_stage, run_epoch, start_stage, state_copy
from ..errors import SentimentError
from ..models import SentimentRNN
from ..text import PAD_ID, Encoded

LM_WEIGHTS = "lm.safetensors"
SHARED_PREFIXES = ("embedding.", "encoder.")


def check_sizes(kind: str, num_layers: int) -> None:
    """Refuse the encoders a language model cannot train: a bilstm above one layer."""
    if kind == "bilstm" and num_layers > 1:
        # Above the first layer each direction sees the other's state, which has read
        # the very word it must predict.
        raise SentimentError(f"--pretrain lm supports bilstm with --num-layers 1 only (got {num_layers}): "
                             "above the first layer each direction sees the word the other predicts")


class LanguageModel(nn.Module):
    """The classifier's embedding and encoder with a word-prediction head per direction."""

    def __init__(self, classifier: SentimentRNN):
        super().__init__()
        c = classifier.config
        check_sizes(c.kind, c.num_layers)
        self.classifier = classifier
        cutoffs = [cut for cut in (1000, 4000) if cut < c.vocab_size - 1] or [max(1, c.vocab_size // 2)]
        self.heads = nn.ModuleList(nn.AdaptiveLogSoftmaxWithLoss(c.hidden_size, c.vocab_size, cutoffs, div_value=4.0)
                                   for _ in range(c.directions))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of predicting each real word from the words before (or after) it."""
        out, _ = self.classifier.encode(ids, lengths)
        hidden = self.classifier.config.hidden_size
        steps = ids.shape[1]
        real = torch.arange(steps, device=ids.device)[None, :] < lengths.to(ids.device)[:, None]
        targets = ids.masked_fill(~real, PAD_ID)
        # Forward: the state at t predicts word t+1. Backward: the state at t predicts word t-1.
        pairs = [(out[:, :-1, :hidden], targets[:, 1:])]
        if len(self.heads) == 2:
            # Only states at real positions predict: past the end, the word before is real
            # but the state there has read padding.
            pairs.append((out[:, 1:, hidden:], targets[:, :-1].masked_fill(~real[:, 1:], PAD_ID)))
        losses = []
        # Outside autocast: the adaptive softmax computes log-probabilities, which bfloat16 would round.
        with torch.autocast(ids.device.type, enabled=False):
            for head, (states, goal) in zip(self.heads, pairs):
                predicting = goal != PAD_ID
                losses.append(head(states[predicting].float(), goal[predicting]).loss)
        return sum(losses) / len(losses)


def pretrain(model: SentimentRNN, encoded: Encoded, epochs: int, batch_size: int, lr: float, seed: int,
             device, procs=None, dtype: torch.dtype = torch.float32, resume: dict | None = None,
             after_epoch: Callable[[dict], None] | None = None) -> list[float]:
    """Train ``model``'s embedding and encoder as a language model; returns the loss per epoch.

    Batches, steps and arithmetic as in classifier training (``epoch_order``'s length-sorted
    batches dealt out over ``procs``, ``run_epoch``'s step, autocast to ``dtype``). After each
    epoch ``after_epoch`` gets what resuming needs (``resume`` takes it back): the language
    model, optimizer and schedule states and the losses so far."""
    procs = procs or Processes()
    lm = LanguageModel(model).to(device)
    # The classifier's head takes no part; frozen, DistributedDataParallel expects no gradient for it.
    model.head.requires_grad_(False)
    n = len(encoded.lengths)
    stage = start_stage(lm, [p for p in lm.parameters() if p.requires_grad], lr, 0.01, epochs, n, batch_size,
                        torch.device(device), procs)
    losses: list[float] = []
    if resume is not None:
        losses = list(resume["losses"])
        resume_stage(stage, resume["lm"], resume, procs)  # RNG after the heads, whose initialisation draws from it
    try:
        for epoch in range(len(losses) + 1, epochs + 1):
            order = deal_out(epoch_order(n, batch_size * procs.world, seed, 500 + epoch, encoded.lengths),
                             stage.per_rank, procs)
            tick = time.time()
            bar = tqdm(total=stage.steps, desc=f"language model {epoch}/{epochs}", unit="step",
                       disable=not procs.main, dynamic_ncols=True, leave=False, file=sys.stderr)
            seen, total, _ = run_epoch(stage.wrapped, stage.optimizer, stage.schedule, encoded, None, order,
                                       batch_size, 1.0, device, bar, procs.world, dtype=dtype)
            bar.close()
            losses.append(total / seen)
            if procs.main:
                print(f"language model epoch {epoch}/{epochs}: loss {losses[-1]:.4f} "
                      f"(perplexity {float(np.exp(losses[-1])):.0f}) | {time.time() - tick:.0f}s")
            if after_epoch is not None:
                after_epoch({"lm": state_copy(lm),
                             "optimizer": stage.optimizer.state_dict(), "schedule": stage.schedule.state_dict(),
                             "losses": list(losses)})
    finally:
        model.head.requires_grad_(True)
    return losses


def shared_state(model: SentimentRNN) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(SHARED_PREFIXES)}


def save_lm(model: SentimentRNN, path: Path) -> None:
    write_atomic(path, lambda tmp: save_file(shared_state(model), tmp, metadata={"kind": model.config.kind}))


def load_lm_into(model: SentimentRNN, folder: Path) -> None:
    """Copy a pretrained embedding and encoder from ``folder/lm.safetensors`` into ``model``."""
    path = Path(folder) / LM_WEIGHTS
    if not path.is_file():
        raise SentimentError(f"{path}: missing; --init-from needs a run folder trained with --pretrain lm")
    state = read_tensors(path)
    expected = shared_state(model)
    if set(state) != set(expected):
        raise SentimentError(f"{path}: its tensors are not those of a {model.config.kind} model "
                             f"with {model.config.num_layers} layer(s); use the same --model and sizes")
    mismatch = shape_mismatch(state, expected)
    if mismatch:
        name, got, want = mismatch
        raise SentimentError(f"{path}: tensor {name} has shape {got}, this model's is {want}; "
                             "use the sizes it was pretrained with")
    model.load_state_dict(state, strict=False)
