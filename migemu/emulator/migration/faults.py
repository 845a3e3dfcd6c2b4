"""Fault injection for migrations: a deterministic ``FaultPlan`` the engine consults.

Emulator layer. Management software is tested against migemu for the bad days, so migemu
makes them happen on demand: drop a multifd channel after K packets, close the main channel,
stall a channel, corrupt a packet, make the destination exit mid-stream, delay or reorder an
event. A fault is one spec (``kind,key=value,...``, from ``-migemu-fault`` or
``x-migemu-inject-fault``); it arms when the source reaches its ``at`` phase (or at once),
lets ``after`` matching packets through and then fires ``count`` times. The engine calls the
small hooks below; with no fault injected each is one check. ``track``/``query_links`` count,
per connection, IO issued after the migration's first error ("no IO after an error").
"""

from __future__ import annotations

import collections
import os
import random
import struct
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from migemu.emulator.migration.channels import SendChannel
    from migemu.emulator.migration.link import ErrorLatch, Link

Buffer = bytes | bytearray | memoryview


class Phase(Enum):
    """Moments of the source's migration thread a fault can wait for."""

    SETUP = "setup"  # the RAM setup section (first multifd SYNC)
    ITERATE = "iterate"  # the first ram_save_iterate section
    SWITCHOVER = "switchover"  # migration_completion: VM stopped, last pass
    POSTCOPY = "postcopy"  # postcopy_start sent the device state: the guest runs there


KINDS = ("drop-channel", "close-main", "stall", "corrupt", "dst-exit", "event")
CORRUPTIONS = (
    "magic",  # bad magic
    "version",  # bad version
    "flags",  # compression flags of another method
    "pages-used",  # normal_pages > pages_alloc
    "offset",  # a page offset outside the RAM block
    "ramblock",  # an unknown RAM block name
    "truncate",  # half the payload, then the connection drops
    "payload",  # compressed data that cannot be decompressed
    "random",  # seeded byte flips anywhere in the packet (may go unnoticed with "none")
)
# Corruptions that only mean something on a packet with pages (QEMU checks them only there).
_DATA_ONLY = frozenset({"flags", "pages-used", "offset", "ramblock", "truncate", "payload"})
_KEYS: dict[str, frozenset[str]] = {
    "drop-channel": frozenset({"channel", "after", "at", "count"}),
    "close-main": frozenset({"after", "at", "count"}),
    "stall": frozenset({"channel", "after", "at", "seconds", "count"}),
    "corrupt": frozenset({"what", "channel", "after", "at", "seed", "count"}),
    "dst-exit": frozenset({"after", "bytes", "status"}),
    "event": frozenset({"name", "delay", "count"}),
}
BAD_MAGIC = 0xDEADBEEF
UNKNOWN_RAMBLOCK = b"x-migemu-no-such-block"
OUTSIDE_OFFSET = 0x7FFF_FFFF_F000


class FaultSpecError(ValueError):
    """A fault spec that does not parse; the text is the message for the user."""


@dataclass
class Fault:
    """One injected fault and its progress (armed, packets seen, times fired)."""

    spec: str
    kind: str
    channel: int | None = None  # None: any channel
    after: int = 0  # matching packets (or main-channel writes) let through once armed
    at: Phase | None = None  # arm at this source phase (None: armed at once)
    count: int = 1  # how many times it fires (0: for ever)
    seconds: float = 1.0  # stall
    what: str = "magic"  # corrupt
    seed: int = 0  # corrupt, what=random
    bytes: int | None = None  # dst-exit: after this many bytes received
    status: int = 1  # dst-exit
    name: str | None = None  # event: which event (None: all)
    delay: float = 0.0  # event: after the current reply, and this much later
    armed: bool = False
    seen: int = 0
    fired: int = 0

    @property
    def done(self) -> bool:
        return self.count != 0 and self.fired >= self.count

    def info(self) -> dict[str, Any]:
        state = "fired" if self.done else "armed" if self.armed else "pending"
        return {"spec": self.spec, "state": state, "fired": self.fired}


def _number(kind: str, key: str, text: str, conv: Callable[[str], Any]) -> Any:
    try:
        value = conv(text)
    except ValueError:
        raise FaultSpecError(f"fault '{kind}': '{key}' expects a number, not '{text}'") from None
    if value < 0:
        raise FaultSpecError(f"fault '{kind}': '{key}' must not be negative")
    return value


def parse_spec(spec: str) -> Fault:
    """``kind[,key=value]...`` -> a ``Fault`` (raises ``FaultSpecError``)."""
    kind, *rest = spec.split(",")
    if kind not in KINDS:
        raise FaultSpecError(f"unknown fault '{kind}' (one of: {', '.join(KINDS)})")
    fault = Fault(spec=spec, kind=kind)
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq or key not in _KEYS[kind]:
            allowed = ", ".join(sorted(_KEYS[kind]))
            raise FaultSpecError(f"fault '{kind}': unknown parameter '{item}' (allowed: {allowed})")
        if key == "at":
            try:
                fault.at = Phase(value)
            except ValueError:
                raise FaultSpecError(
                    f"fault '{kind}': 'at' is one of setup, iterate, switchover, postcopy, "
                    f"not '{value}'"
                ) from None
        elif key == "what":
            if value not in CORRUPTIONS:
                raise FaultSpecError(f"fault 'corrupt': 'what' is one of {', '.join(CORRUPTIONS)}")
            fault.what = value
        elif key == "name":
            fault.name = value
        elif key in ("seconds", "delay"):
            setattr(fault, key, _number(kind, key, value, float))
        else:
            setattr(fault, key, _number(kind, key, value, int))
    if fault.channel is not None and fault.channel > 255:
        raise FaultSpecError(f"fault '{kind}': 'channel' must be at most 255")
    fault.armed = fault.at is None
    return fault


# -- the plan (one per process: one migemu process is one machine) ---------------------------


@dataclass
class LinkRecord:
    """Counters of one migration connection, kept for ``x-migemu-query-links``."""

    link: Link
    migration: int
    late_calls: int = 0  # send/recv calls started after the latch fired
    late_base: int | None = None  # bytes moved before the first late call


@dataclass
class FaultPlan:
    """Every injected fault, plus the connections seen (bounded history)."""

    faults: list[Fault] = field(default_factory=list)
    links: collections.deque[LinkRecord] = field(
        default_factory=lambda: collections.deque(maxlen=256)
    )
    lock: threading.Lock = field(default_factory=threading.Lock)
    latches: weakref.WeakKeyDictionary[ErrorLatch, int] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    received_packets: int = 0
    exit: Callable[[int], None] = os._exit  # dst-exit; tests may replace it
    verbose: bool = True  # a stderr line when a fault fires

    def inject(self, spec: str) -> Fault:
        fault = parse_spec(spec)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.faults = []

    def active(self, kind: str) -> list[Fault]:
        return [f for f in self.faults if f.kind == kind and not f.done]


PLAN = FaultPlan()


def inject(spec: str) -> None:
    """Add a fault (``-migemu-fault`` / ``x-migemu-inject-fault``)."""
    PLAN.inject(spec)


def clear() -> None:
    PLAN.clear()


def query_faults() -> list[dict[str, Any]]:
    with PLAN.lock:
        return [f.info() for f in PLAN.faults]


def _take(fault: Fault) -> bool:
    """Count one matching packet on an armed fault; True when it fires now."""
    if not fault.armed or fault.done:
        return False
    if fault.seen < fault.after:
        fault.seen += 1
        return False
    fault.fired += 1
    fault.seen = 0
    return True


def _note(fault: Fault, what: str) -> None:
    if PLAN.verbose:
        print(f"migemu: injected fault '{fault.spec}': {what}", file=sys.stderr, flush=True)


# -- hooks called by the engine --------------------------------------------------------------


def phase(moment: Phase) -> None:
    """The source's migration thread reached ``moment``: arm the faults waiting for it."""
    if not PLAN.faults:
        return
    with PLAN.lock:
        for fault in PLAN.faults:
            if fault.at is moment and not fault.armed and not fault.done:
                fault.armed = True
                fault.seen = 0


def on_packet(channel: SendChannel, header: bytes, payload: bytes) -> tuple[bytes, bytes]:
    """A send channel is about to write one packet: drop, stall or corrupt it."""
    if not PLAN.faults:
        return header, payload
    is_data = struct.unpack_from(">I", header, 16)[0] > 0
    chosen = None
    with PLAN.lock:  # decide here, act below: acting does IO, whose hook takes the lock
        for fault in PLAN.faults:
            if fault.kind not in ("drop-channel", "stall", "corrupt"):
                continue
            if fault.channel is not None and fault.channel != channel.id:
                continue
            if fault.kind == "corrupt" and fault.what in _DATA_ONLY and not is_data:
                continue
            if _take(fault):
                chosen = fault
                break
    if chosen is None:
        return header, payload
    if chosen.kind == "drop-channel":
        _note(chosen, f"multifd channel {channel.id} dropped")
        channel.link._shutdown()
    elif chosen.kind == "stall":
        _note(chosen, f"multifd channel {channel.id} stalls {chosen.seconds:g} s")
        channel.link.latch.fired.wait(chosen.seconds)  # a cancel or error ends the stall
    else:
        _note(chosen, f"packet on multifd channel {channel.id} corrupted ({chosen.what})")
        return _corrupt(chosen, channel, header, payload)
    return header, payload


def _corrupt(
    fault: Fault, channel: SendChannel, header: bytes, payload: bytes
) -> tuple[bytes, bytes]:
    h = bytearray(header)
    p = bytearray(payload)
    what = fault.what
    if what == "magic":
        struct.pack_into(">I", h, 0, BAD_MAGIC)
    elif what == "version":
        struct.pack_into(">I", h, 4, 2)
    elif what == "flags":
        flags = struct.unpack_from(">I", h, 8)[0]
        other = 0x4 if flags & 0xE == 0x2 else 0x2  # zlib <-> zstd, none -> zlib
        struct.pack_into(">I", h, 8, (flags & ~0xE) | other)
    elif what == "pages-used":
        alloc = struct.unpack_from(">I", h, 12)[0]
        struct.pack_into(">I", h, 16, alloc + 1)
    elif what == "offset":
        struct.pack_into(">Q", h, 320, OUTSIDE_OFFSET)
    elif what == "ramblock":
        h[64:320] = UNKNOWN_RAMBLOCK.ljust(256, b"\0")
    elif what == "truncate":
        # Half the packet goes out, then the connection drops: the peer sees EOF mid-packet.
        channel.link.sendv([bytes(h), bytes(p[: len(p) // 2])])
        channel.link._shutdown()
    elif what == "payload":
        _break_compressed(p)
    else:  # random
        rng = random.Random(fault.seed + fault.fired)
        data = h + p
        for _ in range(8):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        h, p = data[: len(h)], data[len(h) :]
    return bytes(h), bytes(p)


def _break_compressed(p: bytearray) -> None:
    """Make a zlib/zstd payload undecodable, deterministically (no checksum would catch a
    random flip): a bad stream header on a channel's first packet, else a reserved block type
    (deflate BTYPE 11, zstd Block_Type 3). With "none" there is nothing to check: flip a byte."""
    if not p:
        return
    if p[:4] == b"\x28\xb5\x2f\xfd":  # zstd frame magic
        p[0] ^= 0xFF
    elif len(p) > 1 and (p[0] << 8 | p[1]) % 31 == 0 and p[0] & 0x0F == 8:  # zlib header
        p[1] ^= 0x1F
    else:
        p[0] |= 0x06


def on_io(link: Link, op: str) -> None:
    """A link is about to call send/recv: count IO after the latch fired; close-main,
    stalling the main channel, dst-exit by bytes."""
    record = getattr(link, "record", None)
    if record is not None and link.latch.failed:
        record.late_calls += 1
        if record.late_base is None:
            record.late_base = link.bytes_sent + link.bytes_received
    if not PLAN.faults:
        return
    chosen = None
    with PLAN.lock:
        for fault in PLAN.faults:
            if fault.done:
                continue
            if op == "send" and link.name == "main":
                if fault.kind == "close-main" or (fault.kind == "stall" and fault.channel is None):
                    if _take(fault):
                        chosen = fault
                        break
            elif op == "recv" and fault.kind == "dst-exit" and fault.bytes is not None:
                total = sum(r.link.bytes_received for r in PLAN.links if r.link.latch is link.latch)
                if total >= fault.bytes:
                    fault.fired += 1
                    chosen = fault
                    break
    if chosen is None:
        return
    if chosen.kind == "close-main":
        _note(chosen, "main channel closed")
        link._shutdown()
    elif chosen.kind == "stall":
        _note(chosen, f"main channel stalls {chosen.seconds:g} s")
        link.latch.fired.wait(chosen.seconds)
    else:
        _note(chosen, f"destination exits with status {chosen.status}")
        PLAN.exit(chosen.status)


def on_received_packet(channel_id: int) -> None:
    """The destination applied one multifd packet: dst-exit after K of them."""
    if not PLAN.faults:
        return
    chosen = None
    with PLAN.lock:
        for fault in PLAN.faults:
            if fault.kind == "dst-exit" and fault.bytes is None and not fault.done:
                if fault.seen < fault.after:
                    fault.seen += 1
                    continue
                fault.fired += 1
                chosen = fault
                break
    if chosen is not None:
        _note(chosen, f"destination exits with status {chosen.status}")
        PLAN.exit(chosen.status)


def track(link: Link) -> LinkRecord:
    """Remember a new connection (for ``x-migemu-query-links``)."""
    with PLAN.lock:
        seq = PLAN.latches.get(link.latch)
        if seq is None:
            seq = len(PLAN.latches) and max(PLAN.latches.values()) + 1
            PLAN.latches[link.latch] = seq
        record = LinkRecord(link, seq)
        PLAN.links.append(record)
    return record


def query_links() -> list[dict[str, Any]]:
    """Per connection: bytes moved, IO calls and bytes after the first error."""
    out = []
    with PLAN.lock:
        records = list(PLAN.links)
    for r in records:
        link = r.link
        moved = link.bytes_sent + link.bytes_received
        info: dict[str, Any] = {
            "migration": r.migration,
            "name": link.name,
            "bytes-sent": link.bytes_sent,
            "bytes-received": link.bytes_received,
            "io-after-error": r.late_calls,
            "bytes-after-error": 0 if r.late_base is None else moved - r.late_base,
        }
        if link.latch.error is not None:
            info["error"] = link.latch.error.desc
        out.append(info)
    return out


# -- events ----------------------------------------------------------------------------------

_last_event: dict[str, Any] | None = None
_last_fault: Fault | None = None


def _event_fault(event: dict[str, Any]) -> Fault | None:
    """The event fault for ``event`` -- decided once per event, whatever the subscriber."""
    global _last_event, _last_fault
    if event is _last_event:
        return _last_fault
    chosen = None
    with PLAN.lock:
        for fault in PLAN.faults:
            if fault.kind != "event" or fault.done:
                continue
            if fault.name is None or fault.name == event.get("event"):
                fault.fired += 1
                chosen = fault
                break
    _last_event, _last_fault = event, chosen
    return chosen


class _Delayed:
    """Events held back by one monitor, delivered in emission order."""

    def __init__(self) -> None:
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.last = 0.0  # loop time of the latest scheduled delivery


_delayed: weakref.WeakKeyDictionary[Any, _Delayed] = weakref.WeakKeyDictionary()


def defer_event(
    loop: asyncio.AbstractEventLoop,
    deliver: Callable[[dict[str, Any]], None],
    event: dict[str, Any],
    owner: object,
) -> bool:
    """Delay or reorder ``event`` for one monitor (``owner``); True when it took the event.

    A matching event goes out after the reply being written now (QEMU sometimes sends an
    event before the reply that caused it; clients must cope with both orders), ``delay``
    seconds later. Later events of the monitor queue behind it: order is kept."""
    if not PLAN.faults and owner not in _delayed:
        return False
    fault = _event_fault(event) if PLAN.faults else None
    held = _delayed.get(owner)
    if fault is None and (held is None or not held.queue):
        return False
    if held is None:
        held = _delayed.setdefault(owner, _Delayed())
    held.queue.append(event)
    delay = fault.delay if fault is not None else 0.0

    def release() -> None:
        if held.queue:
            deliver(held.queue.popleft())

    def schedule() -> None:
        held.last = max(loop.time() + delay, held.last)
        loop.call_at(held.last, release)

    loop.call_soon_threadsafe(schedule)
    return True
