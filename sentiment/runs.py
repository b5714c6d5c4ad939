"""The run folder: checkpoints, the history plot, and which folders a run may use."""
from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import torch

from .bundle import clear_leftovers
from .errors import SentimentError
from .files import check_folder_target, write_atomic

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(obj, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(run_dir: Path) -> dict:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise SentimentError(f"{path}: missing; --resume needs a run folder written by train.py")
    try:
        # weights_only: a checkpoint is tensors and plain values, never code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SentimentError(f"{path}: unreadable checkpoint ({exc})") from None


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


# --- data ----------------------------------------------------------------------


def default_out(model: str) -> str:
    return str(Path("runs") / f"{model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


def check_run_folder(out: str) -> None:
    """A new run gets a new or empty folder: never one holding another run or other files."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise SentimentError(f"--out {path} is a file; name a folder for the run")
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if CHECKPOINT in entries:
        raise SentimentError(f"--out {path} already holds a run; continue it with `python train.py --resume {path}`, "
                             "or pick another --out")
    if entries:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise SentimentError(f"--out {path} is not empty (holds {shown}); a run is written into a new or "
                             "empty folder: pick another --out")
    check_folder_target(path, "--out")


def clear_run_leftovers(run_dir: Path) -> None:
    """Temporary files of a run killed while writing: its bundle's, checkpoint's and plot's."""
    clear_leftovers(run_dir)
    for leftover in run_dir.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def versions() -> dict:
    import tokenizers

    from . import __version__

    return {"sentiment": __version__, "torch": torch.__version__, "tokenizers": tokenizers.__version__,
            "python": sys.version.split()[0]}
