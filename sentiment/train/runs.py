"""The run folder: checkpoints, the history plot, and which folders a run may use."""
from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import torch

from ..bundle import clear_leftovers
from ..errors import SentimentError
from ..files import check_folder_target, write_atomic

CHECKPOINT = "checkpoint.pt"
TOKENIZER = "tokenizer.json"


# How torch.save (its C++ writer: "basic_ios::clear", "file write failed", "[enforce fail at
# inline_container.cc] unexpected pos"), safetensors ("IoError(Os { code: 28 ...") and
# tokenizers ("No space left on device (os error 28)") say that a write failed.
_FAILED_WRITE = re.compile(r"basic_ios|write|inline_container|os error \d+|code: \d+", re.IGNORECASE)


@contextmanager
def writing(path: Path, run_dir: Path, what: str = ""):
    """A file of the run that cannot be written (a full disk, mostly) ends the run with one line
    naming it; every file is written atomically, so the last whole checkpoint stays."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, SentimentError) or not (isinstance(exc, OSError) or _FAILED_WRITE.search(str(exc))):
            raise
        code = re.search(r"os error (\d+)|code: (\d+)", str(exc))
        why = (exc.strerror if isinstance(exc, OSError) and exc.strerror
               else os.strerror(int(code.group(1) or code.group(2))) if code else "the write failed")
        if (run_dir / CHECKPOINT).is_file():
            then = ("the last whole checkpoint is kept: free space, then continue with "
                    f"`python train.py --resume {run_dir}`")
        elif not run_dir.is_dir() or _entries(run_dir) <= {TOKENIZER}:
            then = "no checkpoint was written yet: free space, then run the same command again"
        else:
            then = "no checkpoint was written yet: free space, then start the run again with an empty --out"
        raise SentimentError(f"{path}{what}: could not be written ({why}): the disk is full (or the file too "
                             f"large for the file system); {then}") from None


def save_checkpoint(obj, path: Path) -> None:
    with writing(path, path.parent):
        write_atomic(path, lambda tmp: torch.save(obj, tmp))


def before_first_checkpoint(run_dir: Path) -> bool:
    """Whether the folder holds only what a run leaves before its first checkpoint: the
    tokenizer, written at the start, and temporary files of writes cut short."""
    return _entries(run_dir) == {TOKENIZER}


def _entries(run_dir: Path) -> set[str]:
    """The names in a run folder, less temporary files of writes cut short."""
    return {p.name for p in run_dir.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))}


def load_checkpoint(run_dir: Path) -> dict:
    path = run_dir / CHECKPOINT
    if not path.is_file() and run_dir.is_dir() and before_first_checkpoint(run_dir):
        raise SentimentError(f"{path}: missing; the run in {run_dir} stopped before its first epoch ended (it left "
                             f"only {TOKENIZER}), so there is nothing to resume: run the command that started it "
                             f"again (its --out {run_dir} is accepted)")
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
    try:
        with writing(path, path.parent):
            write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


# --- data ----------------------------------------------------------------------


def default_out(model: str) -> str:
    return str(Path("runs") / f"{model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


def check_run_folder(out: str) -> None:
    """A new run gets a new or empty folder: never one holding another run or other files,
    except what a run stopped before its first checkpoint left (the same command again
    must be able to start over)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise SentimentError(f"--out {path} is a file; name a folder for the run")
    if path.is_dir() and before_first_checkpoint(path):
        print(f"note: --out {path} holds only the {TOKENIZER} of a run stopped before its first epoch ended; "
              "this run starts there afresh", file=sys.stderr)
        (path / TOKENIZER).unlink()
        clear_run_leftovers(path)
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

    from .. import __version__

    return {"sentiment": __version__, "torch": torch.__version__, "tokenizers": tokenizers.__version__,
            "python": sys.version.split()[0]}
