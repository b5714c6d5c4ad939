"""Files that appear whole or not at all, with the permissions any file of the user gets."""
from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def exchange(a: str | Path, b: str | Path) -> None:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE): a reader sees
    one or the other under each name, never neither. OSError where the system cannot."""
    import ctypes
    import errno

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available here")
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a))


def _probe(folder: Path, option: str, shown: Path) -> None:
    from .errors import SentimentError

    try:
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SentimentError(f"{option} {shown}: cannot write in {folder} ({exc.strerror})") from None


def check_file_target(path: str | Path, option: str) -> Path:
    """Fail before any work when ``path`` cannot be written as a file (``option`` names it)."""
    from .errors import SentimentError

    path = Path(path)
    if path.is_dir():
        raise SentimentError(f"{option} {path} is a folder; name a file")
    if not path.parent.is_dir():
        raise SentimentError(f"{option} {path}: folder {path.parent} does not exist")
    _probe(path.parent, option, path)
    return path


def check_folder_target(path: str | Path, option: str) -> Path:
    """Create the folder ``path`` if needed and fail before any work when it cannot be written."""
    from .errors import SentimentError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SentimentError(f"{option} {path} is a file; name a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SentimentError(f"{option} {path}: cannot create it ({exc.strerror})") from None
    _probe(path, option, path)
    return path


def write_atomic(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Make ``path`` by ``write(tmp)`` into a temporary file beside it, then one rename: a
    reader sees the old file or the new one, never half of one. A writer killed mid-way
    leaves ``.NAME.*.tmp``, which :func:`clear_tmp_files` removes."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes a private file; the result is as readable as any file the user writes.
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def clear_tmp_files(path: str | Path) -> None:
    """Remove the temporary files that writers of ``path`` killed mid-way left beside it."""
    path = Path(path)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        leftover.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
