"""QMP events: the event bus of one emulated QEMU (emulator layer).

Anything that changes observable state (run state, migration status) emits an event here,
with the host's wall-clock timestamp taken at emission, as QEMU does. Monitors subscribe and
deliver events to negotiated QMP clients; the bus itself knows nothing about sockets or
threads (subscribers that live on an event loop do their own thread hop).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]
Subscriber = Callable[[Event], None]


def make_event(name: str, data: dict[str, Any] | None, now_s: float) -> Event:
    """An event object, members in QEMU's insertion order (event, timestamp, data)."""
    seconds = int(now_s)
    event: Event = {
        "event": name,
        "timestamp": {"seconds": seconds, "microseconds": int((now_s - seconds) * 1_000_000)},
    }
    if data is not None:
        event["data"] = data
    return event


class EventBus:
    """Fan-out of events to subscribers, in emission order."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    def emit(self, name: str, data: dict[str, Any] | None = None) -> Event:
        """Emit ``name`` now; returns the event object as delivered."""
        # The lock also serialises emission, so that events from several threads reach
        # every subscriber in one global order with non-decreasing timestamps.
        with self._lock:
            event = make_event(name, data, self._clock())
            subscribers = list(self._subscribers)
            for subscriber in subscribers:
                subscriber(event)
        return event
