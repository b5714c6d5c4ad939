"""Giving memory the server no longer uses back to the system, once the model is idle.

Each batch allocates activations whose size follows the batch, and the page's calls
allocate on many threads. glibc's allocator keeps what is freed, in one pool per thread
(up to 8 per core), for the next allocation; after a busy minute the process holds its
peak for good. ``malloc_trim`` hands the free pages of every pool back to the system.
The batcher calls :func:`release_soon` when the model goes idle: a thread of its own
trims, at most once a second, so the server's memory follows its load back down and no
request waits for it. The server also starts with :func:`limit_pools` (two pools, not
sixteen on two cores; ``MALLOC_ARENA_MAX`` in the environment wins), so the memory its
dozens of request threads free is shared instead of kept apart. Elsewhere than glibc
both do nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time

MIN_INTERVAL_S = 1.0

_lock = threading.Lock()
_last = 0.0
_libc_loaded = None


def _glibc():
    """The C library when it is glibc (it has ``malloc_trim``), else False (macOS, musl)."""
    global _libc_loaded
    if _libc_loaded is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
            _libc_loaded = libc
        except (OSError, AttributeError):
            _libc_loaded = False
    return _libc_loaded


# mallopt's parameter for the most pools (arenas) glibc keeps.
M_ARENA_MAX = -8
SERVER_POOLS = 2


def limit_pools(pools: int = SERVER_POOLS) -> bool:
    """Let glibc keep at most ``pools`` allocation pools, unless MALLOC_ARENA_MAX says otherwise;
    call it before threads start. False where nothing was set."""
    libc = _glibc()
    if "MALLOC_ARENA_MAX" in os.environ or not libc:
        return False
    return bool(libc.mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(pools)))


def release_free_memory() -> bool:
    """Return freed memory to the system now; False where the allocator offers no way to."""
    global _last
    libc = _glibc()
    if not libc:
        return False
    libc.malloc_trim(0)
    _last = time.monotonic()
    return True


_wanted = threading.Event()
_thread: threading.Thread | None = None


def _release_when_wanted() -> None:
    while True:
        _wanted.wait()
        time.sleep(max(0.0, _last + MIN_INTERVAL_S - time.monotonic()))
        _wanted.clear()
        release_free_memory()


def release_soon() -> None:
    """Ask for :func:`release_free_memory` on a thread of its own (nobody waits for it), at most once a second."""
    global _thread
    if not _glibc():
        return
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_release_when_wanted, name="release-free-memory", daemon=True)
            _thread.start()
    _wanted.set()
