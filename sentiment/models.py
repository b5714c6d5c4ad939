"""The classifiers: embedding, a recurrent encoder chosen by name, a pooled summary, a head.

One class serves every kind, after pytorch/examples ``word_language_model``:
``rnn``, ``lstm`` and ``bilstm`` are ``getattr(nn, ...)`` layers, and ``rnncell`` loops
``nn.RNNCell`` over time by hand. The loop is the teaching model of the set and gives
the same outputs as ``rnn`` with the same weights.

Padding never reaches the head. Reviews are padded at the end, so a forward layer's
outputs at real tokens are exact; the backward direction of ``bilstm`` reads each
review reversed in place (padding stays at the end), which gives what packing gives.
Packed sequences are avoided on purpose: their backward pass on CPU allocates a
full-size zero gradient per time step, which makes it several times slower.
The summary concatenates the last real state, and the max and the mean over real
tokens: a tanh RNN's last state alone forgets the start of a long review
(docs/experiments.md has the figures).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .errors import SentimentError
from .options import check_whole
from .text import PAD_ID

MODEL_KINDS = ("rnncell", "rnn", "lstm", "bilstm")
# The largest sizes a model may have: far above the shipped models (10,002 words, 128-256
# wide, 1-2 layers), low enough that a config.json asking for more is refused before any
# memory is taken for it.
SIZE_LIMITS = {"vocab_size": 1_000_000, "embedding_dim": 4096, "hidden_size": 4096, "num_layers": 16,
               "num_classes": 100_000}


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network's shapes; saved in ``config.json``."""

    kind: str = "lstm"
    vocab_size: int = 10_002
    embedding_dim: int = 128
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.4
    word_dropout: float = 0.0
    # The head's outputs, one per class; bundles written before label lists had 2.
    num_classes: int = 2

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise SentimentError(f"model kind must be one of {', '.join(MODEL_KINDS)} (got {self.kind!r})")
        for name, limit in SIZE_LIMITS.items():
            check_whole(self, (name,), options=False, maximum=limit)
        for name in ("dropout", "word_dropout"):
            if not isinstance(getattr(self, name), (int, float)) or not 0 <= getattr(self, name) < 1:
                raise SentimentError(f"{name} must be in [0, 1) (got {getattr(self, name)})")
        if self.num_classes < 2:
            raise SentimentError(f"num_classes must be at least 2 (got {self.num_classes})")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def directions(self) -> int:
        return 2 if self.kind == "bilstm" else 1

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """The name and shape of every tensor of ``SentimentRNN(self).state_dict()``, computed
        without building the model: a bundle's weights file is checked against it before any
        memory is taken for the model."""
        gates = 4 if self.kind in ("lstm", "bilstm") else 1
        rows, h = gates * self.hidden_size, self.hidden_size
        shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (self.vocab_size, self.embedding_dim)}
        for layer in range(self.num_layers):
            width = self.embedding_dim if layer == 0 else h * self.directions
            if self.kind == "rnncell":
                prefixes, suffix = [f"encoder.cells.{layer}."], ""
            else:
                prefixes, suffix = [f"encoder.layers.{layer}.{d}." for d in range(self.directions)], "_l0"
            for prefix in prefixes:
                shapes.update({f"{prefix}weight_ih{suffix}": (rows, width), f"{prefix}weight_hh{suffix}": (rows, h),
                               f"{prefix}bias_ih{suffix}": (rows,), f"{prefix}bias_hh{suffix}": (rows,)})
        k = self.num_classes
        shapes.update({"head.weight": (k, 3 * h * self.directions), "head.bias": (k,)})
        return shapes


class RNNCellLoop(nn.Module):
    """``nn.RNN`` written as a Python loop over ``nn.RNNCell``, one cell per layer."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.cells = nn.ModuleList(
            nn.RNNCell(input_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [batch, time, input] -> outputs [batch, time, hidden] (0 past each length), last state."""
        batch, steps, _ = x.shape
        real = (torch.arange(steps, device=x.device)[None, :] < lengths.to(x.device)[:, None])  # [batch, time]
        layer_input = x
        for i, cell in enumerate(self.cells):
            if i:
                layer_input = self.dropout(layer_input)
            h = x.new_zeros(batch, cell.hidden_size)
            outputs = []
            for t in range(steps):
                # Past its length a review keeps its state, as packing would.
                keep = real[:, t, None]
                h = torch.where(keep, cell(layer_input[:, t], h), h)
                outputs.append(h * keep)
            layer_input = torch.stack(outputs, dim=1)
        return layer_input, h


def reverse_each(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse the first ``length`` steps of each sequence in x [batch, time, ...]; padding stays put.

    Its own inverse: applying it twice gives x back.
    """
    steps = x.shape[1]
    t = torch.arange(steps, device=x.device)[None, :]
    lengths = lengths.to(x.device)[:, None]
    index = torch.where(t < lengths, lengths - 1 - t, t)
    return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))


class RecurrentLayers(nn.Module):
    """Stacked ``nn.RNN``/``nn.LSTM`` layers over padded input, one or two directions each."""

    def __init__(self, rnn_type: str, input_size: int, hidden_size: int, num_layers: int, dropout: float,
                 bidirectional: bool):
        super().__init__()
        directions = 2 if bidirectional else 1
        self.layers = nn.ModuleList(
            nn.ModuleList(getattr(nn, rnn_type)(input_size if i == 0 else hidden_size * directions, hidden_size,
                                                batch_first=True) for _ in range(directions))
            for i in range(num_layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [batch, time, input] -> outputs [batch, time, H*dirs] (meaningless past each length), last state."""
        rows = torch.arange(x.shape[0], device=x.device)
        last_step = (lengths.to(x.device) - 1).clamp(min=0)
        layer_input = x
        for i, directions in enumerate(self.layers):
            if i:
                layer_input = self.dropout(layer_input)
            forward_out, _ = directions[0](layer_input)
            outputs, lasts = [forward_out], [forward_out[rows, last_step]]
            if len(directions) == 2:
                backward_out, _ = directions[1](reverse_each(layer_input, lengths))
                backward_out = reverse_each(backward_out, lengths)
                # Reading backwards, the whole review has been seen at its first token.
                outputs.append(backward_out)
                lasts.append(backward_out[:, 0])
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        # Outputs past a review's end are left as computed: they never flow back into real
        # positions, and summarize() masks them.
        return layer_input, lasts[0] if len(lasts) == 1 else torch.cat(lasts, dim=-1)


class SentimentRNN(nn.Module):
    """Reads ids [batch, time] with their lengths and returns logits [batch, 2]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_dim, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(c.dropout)
        between = c.dropout if c.num_layers > 1 else 0.0
        if c.kind == "rnncell":
            self.encoder = RNNCellLoop(c.embedding_dim, c.hidden_size, c.num_layers, between)
        else:
            self.encoder = RecurrentLayers("RNN" if c.kind == "rnn" else "LSTM", c.embedding_dim, c.hidden_size,
                                           c.num_layers, between, bidirectional=c.kind == "bilstm")
        self.head = nn.Linear(3 * c.hidden_size * c.directions, c.num_classes)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor,
               perturbation: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token outputs [batch, time, H*dirs] (meaningless at padding) and the last state [batch, H*dirs].

        ``perturbation`` [batch, time, embedding] is added to the embedded words (adversarial training)."""
        embedded = self.embedding(ids)
        p = self.config.word_dropout
        if self.training and p > 0:
            # Whole words vanish (one mask value per token, shared by its features), so the
            # model cannot lean on a few telltale words.
            keep = embedded.new_empty(embedded.shape[:2] + (1,)).bernoulli_(1 - p) / (1 - p)
            embedded = embedded * keep
        if perturbation is not None:
            embedded = embedded + perturbation
        return self.encoder(self.dropout(embedded), lengths)

    def summarize(self, out: torch.Tensor, last: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[last, max, mean] over each review's real tokens; padding positions never count."""
        steps = out.shape[1]
        real = torch.arange(steps, device=out.device)[None, :] < lengths.to(out.device)[:, None]  # [batch, time]
        maxed = out.masked_fill(~real.unsqueeze(-1), float("-inf")).amax(dim=1)
        # A masked sum as one batched matrix-vector product: no masked copy of `out`.
        weights = real.to(out.dtype) / lengths.to(out.device, out.dtype)[:, None]
        mean = torch.bmm(weights.unsqueeze(1), out).squeeze(1)
        return torch.cat([last, maxed, mean], dim=-1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor,
                perturbation: torch.Tensor | None = None) -> torch.Tensor:
        out, last = self.encode(ids, lengths, perturbation)
        return self.head(self.dropout(self.summarize(out, last, lengths)))
