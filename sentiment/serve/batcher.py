"""One batcher per loaded model: texts of many requests scored together, in one forward pass.

The JSON API and the page hand their texts to :meth:`Batcher.scores`, which waits for
the answer. Worker threads (``--concurrency`` of them, sharing the server's gate with
every other model computation) take what is waiting, up to ``max_batch_size`` texts,
and score it as one batch; each caller gets back its own texts' scores, in its order.

- A worker that finds the model idle and one request waiting scores it at once: the
  wait for company (``batch_wait_ms``) applies only while other work is under way, when
  more requests are bound to arrive, so a lone user never pays for it.
- A request of more than ``max_batch_size`` texts is cut into pieces that may run in
  different batches; its answer is put back together.
- A batch that fails is scored again one request at a time, so only the request at
  fault gets the error.
- Past ``max_queue`` waiting texts a request is refused with :class:`Busy` at once,
  and a request not answered within ``timeout_s`` is withdrawn with :class:`Busy`.
- When the model goes idle, the memory its batches freed goes back to the system
  (:mod:`.memory`), so the server does not keep its busiest minute's peak.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..predict import Classifier, Scores
from .memory import release_soon


class Busy(Exception):
    """The model cannot take this request now: its queue is full, or the answer came too late."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.message, self.retry_after_s = message, retry_after_s


@dataclass
class _Piece:
    """Up to ``max_batch_size`` texts of one request, waiting or being scored."""

    texts: list[str]
    queued_at: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    scores: Scores | None = None
    error: BaseException | None = None


@dataclass
class BatchOptions:
    max_batch_size: int = 64
    wait_s: float = 0.002
    max_queue: int = 1024
    timeout_s: float = 30.0
    workers: int = 1


# (texts in the batch, seconds each of its pieces waited) after every batch.
BatchObserver = Callable[[int, list[float]], None]


class Batcher:
    """Scores texts of concurrent callers in shared batches; see the module's description."""

    def __init__(self, classifier: Classifier, options: BatchOptions, gate=None,
                 observe: BatchObserver | None = None):
        self.classifier, self.options = classifier, options
        self.gate = gate or nullcontext()
        self.observe = observe
        self._cond = threading.Condition()
        self._pieces: deque[_Piece] = deque()
        self._waiting = 0  # texts in _pieces
        self._computing = 0  # workers scoring a batch
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"batcher-{i}", daemon=True)
                         for i in range(options.workers)]
        for thread in self._threads:
            thread.start()

    @property
    def waiting(self) -> int:
        """Texts waiting for a worker."""
        return self._waiting

    def scores(self, texts: Sequence[str]) -> Scores:
        """The scores of ``texts``, as ``Classifier.scores`` gives them; raises :class:`Busy`."""
        texts = list(texts)
        if not texts:
            return self.classifier.scores([])
        size = self.options.max_batch_size
        pieces = [_Piece(texts[i:i + size]) for i in range(0, len(texts), size)]
        with self._cond:
            if self._closed:
                raise Busy("the server is stopping; try again on its next start")
            if self._waiting + len(texts) > self.options.max_queue:
                raise Busy(f"the server is busy: {self._waiting:,} texts are waiting and the queue takes "
                           f"{self.options.max_queue:,} (--max-queue); try again in a moment")
            # Only the workers run the model, never the callers' threads (the page's and the
            # API's, dozens of them): each thread that runs it keeps memory of its own.
            self._pieces.extend(pieces)
            self._waiting += len(texts)
            self._cond.notify(len(pieces))
        deadline = time.monotonic() + self.options.timeout_s
        for piece in pieces:
            if not piece.done.wait(max(0.0, deadline - time.monotonic())):
                self._withdraw(pieces)
                raise Busy(f"the server is busy: no answer within {self.options.timeout_s:g} s "
                           "(--request-timeout-s); try again in a moment")
            if piece.error is not None:
                raise piece.error
        if len(pieces) == 1:
            return pieces[0].scores
        return Scores.joined([p.scores for p in pieces])

    def close(self) -> None:
        """Refuse new requests; the workers finish what waits, then end."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=self.options.timeout_s)

    def _withdraw(self, pieces: list[_Piece]) -> None:
        # A caller who gave up takes its waiting pieces out: nobody would read their scores.
        with self._cond:
            for piece in pieces:
                if not piece.done.is_set() and piece in self._pieces:
                    self._pieces.remove(piece)
                    self._waiting -= len(piece.texts)

    def _take(self, room: int) -> list[_Piece]:
        """Waiting pieces, oldest first, of at most ``room`` texts together (the first whatever its size)."""
        taken: list[_Piece] = []
        while self._pieces and (not taken or len(self._pieces[0].texts) <= room):
            piece = self._pieces.popleft()
            self._waiting -= len(piece.texts)
            room -= len(piece.texts)
            taken.append(piece)
        return taken

    def _gather(self) -> list[_Piece] | None:
        """The next batch, once there is one; None when closed and drained."""
        size = self.options.max_batch_size
        with self._cond:
            while not self._pieces:
                if self._closed:
                    return None
                self._cond.wait()
            batch = self._take(size)
            # Company is waited for only while the model is already at work (or several
            # requests came together): then more are on their way.
            if self.options.wait_s > 0 and (self._computing or len(batch) > 1):
                end = time.monotonic() + self.options.wait_s
                while not self._closed:
                    room = size - sum(len(p.texts) for p in batch)
                    left = end - time.monotonic()
                    if room <= 0 or left <= 0:
                        break
                    if not self._pieces:
                        self._cond.wait(left)
                    elif len(self._pieces[0].texts) > room:
                        break  # the next piece starts the next batch
                    else:
                        batch += self._take(room)
            self._computing += 1
            return batch

    def _work(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            try:
                self._score(batch)
            finally:
                self._done_computing()

    def _done_computing(self) -> None:
        """A batch ended; when nothing else waits or runs, the model is idle: freed memory goes back."""
        with self._cond:
            self._computing -= 1
            idle = not self._pieces and not self._computing
        if idle:
            release_soon()

    def _score(self, batch: list[_Piece]) -> None:
        started = time.monotonic()
        texts = [t for piece in batch for t in piece.texts]
        try:
            with self.gate:
                scores = self.classifier.scores(texts, batch_size=len(texts))
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                batch[0].done.set()
                return
            for piece in batch:  # one at a time: only the piece at fault fails
                self._score([piece])
            return
        if self.observe is not None:
            self.observe(len(texts), [started - piece.queued_at for piece in batch])
        at = 0
        for piece in batch:
            n = len(piece.texts)
            piece.scores = scores.part(at, at + n)
            at += n
            piece.done.set()
