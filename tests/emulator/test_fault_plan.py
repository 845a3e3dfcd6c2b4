"""The fault plan without processes: spec parsing, arming and counting, and that every packet
corruption is caught by the real receiver with QEMU's message (bytes in, errors out)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from migemu.emulator.migration import faults
from migemu.multifd import ChannelDecoder, ChannelEncoder, MultiFDError

BLOCKS = {"mem0": 1 << 20}
EXPECTED = {
    "magic": "received packet magic deadbeef",
    "version": "received packet version 2",
    "flags": "flags received",
    "pages-used": "pages and expected maximum pages are 128",
    "offset": "offset too long",
    "ramblock": "unknown ram block x-migemu-no-such-block",
}


def packets(method: str, n: int = 3) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    rng = random.Random(2)
    enc = ChannelEncoder(0, method)
    out = []
    for num in range(n):
        offsets = [4096 * i for i in range(8)]
        out.append(enc.packet(num, "mem0", offsets, [rng.randbytes(4096) for _ in offsets]))
    return enc.greeting(), out


def feed(method: str, greeting: bytes, stream: list[bytes]) -> None:
    dec = ChannelDecoder(method, BLOCKS, pause_at_sync=False)
    dec.feed(greeting)
    dec.accept(0)
    for chunk in stream:
        dec.feed(chunk)


class _Link:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.shut = False

    def sendv(self, buffers: list[bytes]) -> None:
        self.sent.append(b"".join(buffers))

    def _shutdown(self) -> None:
        self.shut = True


@pytest.mark.parametrize("what", sorted(EXPECTED))
@pytest.mark.parametrize("method", ["none", "zlib", "zstd"])
def test_header_corruptions_are_rejected(method: str, what: str) -> None:
    greeting, pkts = packets(method)
    fault = faults.parse_spec(f"corrupt,what={what}")
    header, payload = faults._corrupt(fault, SimpleNamespace(link=_Link()), *pkts[1])  # type: ignore[arg-type]
    with pytest.raises(MultiFDError) as err:
        feed(method, greeting, [*pkts[0], header, payload])
    assert EXPECTED[what] in err.value.desc


@pytest.mark.parametrize("method", ["zlib", "zstd"])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_payload_corruption_is_undecodable(method: str, index: int) -> None:
    greeting, pkts = packets(method)
    fault = faults.parse_spec("corrupt,what=payload")
    stream = [b"".join(p) for p in pkts[:index]]
    stream += list(faults._corrupt(fault, SimpleNamespace(link=_Link()), *pkts[index]))  # type: ignore[arg-type]
    with pytest.raises(MultiFDError) as err:
        feed(method, greeting, stream)
    assert "inflate returned" in err.value.desc or "decompressStream returned" in err.value.desc


def test_truncate_sends_half_then_drops() -> None:
    greeting, pkts = packets("none")
    link = _Link()
    faults._corrupt(
        faults.parse_spec("corrupt,what=truncate"), SimpleNamespace(link=link), *pkts[0]
    )  # type: ignore[arg-type]
    assert link.shut and len(link.sent[0]) == len(pkts[0][0]) + len(pkts[0][1]) // 2
    dec = ChannelDecoder("none", BLOCKS, pause_at_sync=False)
    dec.feed(greeting)
    dec.accept(0)
    dec.feed(link.sent[0])
    with pytest.raises(MultiFDError, match="Unexpected end-of-file"):
        dec.feed_eof()


def test_arming_and_counting() -> None:
    fault = faults.parse_spec("drop-channel,channel=1,after=2,at=iterate,count=2")
    assert not fault.armed and fault.channel == 1
    assert not faults._take(fault)  # not armed yet
    fault.armed = True
    assert [faults._take(fault) for _ in range(7)] == [False, False, True, False, False, True,
                                                        False]  # fmt: skip
    assert fault.done and fault.info()["state"] == "fired"


@pytest.mark.parametrize(
    "spec",
    ["", "nope", "stall,seconds=-1", "stall,seconds=abc", "corrupt,what=x", "event,at=setup",
     "drop-channel,channel=256", "dst-exit,status", "close-main,at=soon"],
)  # fmt: skip
def test_bad_specs(spec: str) -> None:
    with pytest.raises(faults.FaultSpecError):
        faults.parse_spec(spec)


def test_phase_arms_only_matching_faults() -> None:
    plan_faults = faults.PLAN.faults
    try:
        faults.PLAN.faults = []
        a = faults.PLAN.inject("close-main,at=switchover")
        b = faults.PLAN.inject("close-main,at=setup")
        faults.phase(faults.Phase.SETUP)
        assert b.armed and not a.armed
        assert [f["state"] for f in faults.query_faults()] == ["pending", "armed"]
    finally:
        faults.PLAN.faults = plan_faults
