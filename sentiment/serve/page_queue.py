"""What the page's Gradio queue keeps for its callers, bounded whoever the callers are.

Gradio keeps each session's undelivered messages (queue estimates, and the result
itself) until the caller fetches them, in a cache of 2,000 sessions that drops the oldest
arrival first, whether its event is still waiting or not; every ``/gradio_api/call/...``
post is a session of its own. A caller that posts and never fetches fills that cache:
memory grows by the results held, and once a session whose event is still queued or
running is dropped, the queue's next message to it raises ``KeyError`` in the loop that
runs the queue, which then answers every call "Queue is stopped" until a restart.

Here the page's queue (1) takes at most a bounded number of waiting events, refusing
more with "Queue is full" until it drains; (2) never drops a session while one of its
events waits or runs; (3) keeps the results of at most ``HELD_SESSIONS`` finished
sessions, dropping the oldest first; (4) drops a message to a session that is gone, as
it already does for a caller who left, instead of stopping.
"""
from __future__ import annotations

from collections import OrderedDict

# Events waiting per computation slot (--concurrency) before new calls are refused.
WAITING_PER_SLOT = 16
# Finished sessions whose results are kept for their caller to fetch. A caller fetches
# at once (the page and gradio_client do); a result goes only once this many newer
# sessions have finished before its caller came for it.
HELD_SESSIONS = 200


def queue_bounded(demo, slots: int) -> None:
    """Turn on ``demo``'s queue with the bounds above; ``slots`` events are computed at once."""
    from gradio.utils import LRUCache

    demo.queue(max_size=WAITING_PER_SLOT * slots, default_concurrency_limit=slots)
    queue = demo._queue

    class HeldResults(LRUCache):
        """Gradio's per-session message cache, dropping only sessions with no event left."""

        def __setitem__(self, session, messages):
            if session in self:
                self.move_to_end(session)
            else:
                self.drop_finished(len(self) + 1 - self.max_size)
            OrderedDict.__setitem__(self, session, messages)

        def drop_finished(self, count: int) -> None:
            if count <= 0:
                return
            live = {event.session_hash for event in list(queue.event_ids_to_events.values())}
            for session in [s for s in self if s not in live][:count]:
                OrderedDict.pop(self, session)
                queue.pending_event_ids_session.pop(session, None)

    queue.pending_messages_per_session = HeldResults(HELD_SESSIONS)
    send = queue.send_message

    def send_message(event, message):
        if event.session_hash in queue.pending_messages_per_session:
            send(event, message)

    queue.send_message = send_message
