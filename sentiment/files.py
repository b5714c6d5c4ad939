"""Files that appear whole or not at all, with the permissions any file of the user gets."""
from __future__ import annotations

import errno
import glob
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import SentimentError

# What a path that is not a regular file is, for messages that say why it is refused.
_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))


def umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def exchange(a: str | Path, b: str | Path) -> None:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE): a reader sees
    one or the other under each name, never neither. OSError where the system cannot."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available here")
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a))


def _probe(folder: Path, option: str, shown: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SentimentError(f"{option} {shown}: cannot write in {folder} ({exc.strerror})") from None


def check_replaceable(path: str | Path, option: str | None = None) -> None:
    """Fail unless ``path`` is a new name or a regular file, the only things a finished file
    may be renamed over. Renaming over a device (a copy of /dev/null, or /dev/null itself
    for root), a named pipe or a socket would replace it with a plain file; renaming over a
    symbolic link would replace the link, not the file it points to, so a link is refused
    too: name the file itself."""
    shown = f"{option} {path}" if option else str(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SentimentError(f"{shown}: cannot look at it ({exc.strerror})") from None
    if stat.S_ISREG(mode):
        return
    if stat.S_ISLNK(mode):
        raise SentimentError(f"{shown} is a symbolic link (to {os.readlink(path)}); name the file itself "
                             "or a new path")
    if stat.S_ISDIR(mode):
        raise SentimentError(f"{shown} is a folder; name a file")
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise SentimentError(f"{shown} is {kind}; name a regular file or a new path")


def check_file_target(path: str | Path, option: str) -> Path:
    """Fail before any work when ``path`` cannot be written as a file (``option`` names it)."""
    path = Path(path)
    check_replaceable(path, option)
    if not path.parent.is_dir():
        raise SentimentError(f"{option} {path}: folder {path.parent} does not exist")
    _probe(path.parent, option, path)
    return path


def check_folder_target(path: str | Path, option: str) -> Path:
    """Create the folder ``path`` if needed and fail before any work when it cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SentimentError(f"{option} {path} is a file; name a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SentimentError(f"{option} {path}: cannot create it ({exc.strerror})") from None
    _probe(path, option, path)
    return path


def _locked_tmp(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path``, open and locked (flock) for as long as its writer
    lives: :func:`clear_tmp_files` of another process leaves a locked one alone. The lock is
    taken after the file is made; should a clearer have removed it in between, make another."""
    import fcntl

    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            return fd, tmp  # a filesystem without locks: a clearer cannot lock it either, and leaves it
        try:
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Make ``path`` by ``write(tmp)`` into a temporary file beside it, then one rename: a
    reader sees the old file or the new one, never half of one. A writer killed mid-way
    leaves ``.NAME.*.tmp``, which :func:`clear_tmp_files` removes once its writer is gone.
    Only a new name or a regular file is replaced (see :func:`check_replaceable`)."""
    path = Path(path)
    check_replaceable(path)
    fd, tmp = _locked_tmp(path)
    try:
        write(tmp)
        # mkstemp makes a private file; the result is as readable as any file the user writes.
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        os.close(fd)
    return path


def _clear_if_unlocked(leftover: Path) -> None:
    import fcntl

    try:
        fd = os.open(leftover, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return  # its writer is still at work (or locks cannot tell here): leave it
    try:
        if os.stat(leftover).st_ino == os.fstat(fd).st_ino:
            leftover.unlink()
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def clear_tmp_files(path: str | Path) -> None:
    """Remove the temporary files that writers of ``path`` killed mid-way left beside it; a
    writer that is still at work holds a lock on its file, and that file stays."""
    path = Path(path)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        _clear_if_unlocked(leftover)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
