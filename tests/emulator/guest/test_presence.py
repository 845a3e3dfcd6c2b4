"""Page presence on a postcopy destination: discard, request once, wait, fill, give up; and
the guest workloads touching only pages that are there."""

from __future__ import annotations

import threading
import time

import numpy as np

from migemu.emulator.guest.dirty import DirtyBitmap
from migemu.emulator.guest.presence import PagePresence
from migemu.emulator.guest.workload import GuestWorkload, SweepWorkload
from migemu.emulator.ram import PAGE_SIZE, map_anonymous

DEADLINE_S = 10.0


def wait_until(predicate, deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.001)


def test_discard_fill_and_the_received_bitmap():
    block = map_anonymous("mem0", 16 * PAGE_SIZE)
    p = PagePresence([block])
    assert p.missing("mem0") == 0
    p.discard("mem0", 3, 6)
    assert p.missing("mem0") == 6 and not p.is_present("mem0", 3)
    written = []
    assert p.fill("mem0", 3, lambda: written.append(3))
    assert not p.fill("mem0", 3, lambda: written.append("again"))  # never twice
    assert written == [3]
    # little-endian bit order, padded to 8 bytes (QEMU's bitmap_to_le of receivedmap)
    bits = np.unpackbits(np.frombuffer(p.received_bitmap("mem0"), np.uint8), bitorder="little")
    assert len(p.received_bitmap("mem0")) == 8
    assert bits[:16].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    block.close()


def test_a_waiter_asks_once_and_wakes_when_the_page_arrives():
    block = map_anonymous("mem0", 8 * PAGE_SIZE)
    asked: list[tuple[str, int]] = []
    p = PagePresence([block], requester=lambda b, page: asked.append((b, page)))
    p.discard("mem0", 2, 3)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(p.wait_present("mem0", 2, 4, lambda: False)))
    t.start()
    wait_until(lambda: asked == [("mem0", 2)])
    p.place("mem0", 2)
    t.join(DEADLINE_S)
    assert result == [1]  # page 2 is there now, page 3 still missing
    assert asked == [("mem0", 2)] and p.requests == 1
    assert p.wait_present("mem0", 5, 3, lambda: False) == 3  # present: no wait, no request
    block.close()


def test_a_waiter_gives_up_and_asks_again_after_a_recovery():
    block = map_anonymous("mem0", 4 * PAGE_SIZE)
    asked: list[int] = []
    p = PagePresence([block], requester=lambda b, page: asked.append(page))
    p.discard("mem0", 0, 4)
    stop = threading.Event()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(p.wait_present("mem0", 1, 1, stop.is_set)))
    t.start()
    wait_until(lambda: asked == [1])
    p.forget_requests()  # the source lost its queue
    wait_until(lambda: asked == [1, 1])
    stop.set()
    p.wake()
    t.join(DEADLINE_S)
    assert result == [0]
    block.close()


def test_sweep_guest_blocks_on_a_missing_page_and_continues_in_order():
    block = map_anonymous("mem0", 16 * PAGE_SIZE)
    sweep = SweepWorkload(block, DirtyBitmap(block.pages), start=0, end=8 * PAGE_SIZE)
    asked: list[int] = []
    p = PagePresence([block], requester=lambda b, page: asked.append(page))
    p.discard("mem0", 4, 2)
    sweep.set_presence(p)
    t = threading.Thread(target=sweep.step, args=(8,))
    t.start()
    wait_until(lambda: asked == [4])
    col = np.frombuffer(block.mem, np.uint8)[: 8 * PAGE_SIZE : PAGE_SIZE]
    assert col.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # it stopped before the hole
    for page in (4, 5):
        p.place("mem0", page)
    t.join(DEADLINE_S)
    assert col.tolist() == [1] * 8
    del col
    sweep.stop()
    block.close()


def test_a_paused_vcpu_stops_waiting():
    block = map_anonymous("mem0", 8 * PAGE_SIZE)
    sweep = SweepWorkload(block, DirtyBitmap(block.pages), start=0, end=8 * PAGE_SIZE, rate=None)
    p = PagePresence([block])
    p.discard("mem0", 0, 8)
    sweep.set_presence(p)
    sweep.start()
    sweep.pause()  # returns although the vCPU was waiting for page 0
    assert np.frombuffer(block.mem, np.uint8)[0] == 0
    sweep.stop()
    block.close()


def test_random_guest_waits_for_every_page_of_its_batch():
    block = map_anonymous("mem0", 64 * PAGE_SIZE)
    bitmaps = {"mem0": DirtyBitmap(block.pages)}
    guest = GuestWorkload([block], bitmaps, rate=None, seed=3)
    served: list[int] = []
    p = PagePresence([block])

    def serve(name: str, page: int) -> None:  # the "source" answers at once
        served.append(page)
        p.place(name, page)

    p.requester = serve
    p.discard("mem0", 0, 64)
    guest.set_presence(p)
    guest.step(32)
    written = set(np.flatnonzero(bitmaps["mem0"].sync_and_clear().mask).tolist())
    assert written and written <= set(served)
    guest.stop()
    block.close()
