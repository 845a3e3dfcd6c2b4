"""Differential test: malformed main streams sent to a real QEMU 7.2 destination; the
message our decoder raises must appear in QEMU's own error output. Skipped without QEMU."""

from __future__ import annotations

import queue
import socket
import struct
import threading
from pathlib import Path

import pytest
from multifd_support import DEADLINE_S, QEMU, QMP, free_port, start_qemu
from multifd_support import QEMU_RAM_SIZE as RAM_SIZE

from migemu.multifd import ProtocolError, check_init, decode_init, encode_init
from migemu.multifd.mainstream import (
    MainStreamDecoder,
    MainStreamEncoder,
    encode_file_header,
    encode_globalstate_body,
    encode_ram_mem_size,
    encode_section_footer,
    encode_section_full,
    encode_section_part,
    encode_section_start,
)

pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")


def u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def ram_start(*records: bytes, section_id: int = 2) -> bytes:
    return (
        encode_file_header()
        + encode_section_start(section_id, "ram", 0, 4)
        + encode_ram_mem_size([("mem0", RAM_SIZE)])
        + b"".join(records)
    )


def setup_done() -> bytes:
    return ram_start(u64(0x10)) + encode_section_footer(2)


CASES = {
    "magic": b"QEVX" + bytes(13),
    "version": b"QEVM" + struct.pack(">I", 4) + bytes(9),
    "machine": encode_file_header("pc") + b"\x00",
    "section-type": encode_file_header() + b"\x09",
    "unknown-section": encode_file_header() + encode_section_start(9, "pc.foo", 0, 1),
    "ram-version": encode_file_header() + encode_section_start(2, "ram", 0, 5),
    "ram-id-0": ram_start(u64(0x10), section_id=0)
    + encode_section_footer(0)
    + encode_section_part(0),
    "flags-0x200": setup_done() + encode_section_part(2) + u64(0x200),
    "continue-first": setup_done() + encode_section_part(2) + u64(0x22) + b"\0",
    "unknown-block": setup_done() + encode_section_part(2) + u64(0x02) + b"\x06pc.ram\0",
    "illegal-offset": setup_done() + encode_section_part(2) + u64(RAM_SIZE | 2) + b"\x04mem0\0",
    "mem-size-name": encode_file_header()
    + encode_section_start(2, "ram", 0, 4)
    + encode_ram_mem_size([("pc.ram", RAM_SIZE)]),
    "mem-size-length": encode_file_header()
    + encode_section_start(2, "ram", 0, 4)
    + encode_ram_mem_size([("mem0", 2 * RAM_SIZE)]),
    "footer-missing": ram_start(u64(0x10)) + b"\x7f" + bytes(4),
    "footer-id": ram_start(u64(0x10)) + encode_section_footer(3),
    "runstate": encode_file_header()
    + encode_section_full(4, "globalstate", 0, 1, encode_globalstate_body("bogus")),
}


def qemu_output(stream: bytes, tmp_path: Path) -> tuple[int, str]:
    ram = tmp_path / "ram"
    ram.write_bytes(bytes(RAM_SIZE))
    qmp_path = tmp_path / "qmp.sock"
    proc = start_qemu(ram, qmp_path)
    try:
        qmp = QMP(qmp_path)
        port = free_port()
        qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(stream)
        output = proc.communicate(timeout=DEADLINE_S)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, output


def our_error(stream: bytes) -> str:
    decoder = MainStreamDecoder(ram_blocks={"mem0": RAM_SIZE})
    with pytest.raises(ProtocolError) as info:
        decoder.feed(stream)
    return info.value.desc


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_message_as_qemu(case: str, tmp_path: Path) -> None:
    stream = CASES[case]
    desc = our_error(stream)
    code, output = qemu_output(stream, tmp_path)
    assert code == 1, output
    assert desc in output, f"ours: {desc!r}\nQEMU: {output}"


def test_encoder_stream_is_accepted_without_multifd(tmp_path: Path) -> None:
    enc = MainStreamEncoder()
    page = bytes(range(256)) * 16
    stream = b"".join(
        [
            enc.header(),
            enc.ram_start([("mem0", RAM_SIZE)]),
            enc.ram_part(),
            enc.ram_page("mem0", 0, page),
            enc.ram_zero_pages("mem0", range(4096, RAM_SIZE, 4096)),
            enc.ram_close(),
            enc.ram_end(),
            enc.ram_close(),
            enc.eof(),
        ]
    )
    ram = tmp_path / "ram"
    ram.write_bytes(b"\x01" * RAM_SIZE)
    qmp_path = tmp_path / "qmp.sock"
    proc = start_qemu(ram, qmp_path)
    try:
        qmp = QMP(qmp_path)
        port = free_port()
        qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(stream)
        from multifd_support import wait_status

        assert wait_status(qmp, "completed", "failed") == "completed"
        assert ram.read_bytes() == page + bytes(RAM_SIZE - 4096)
        qmp.cmd("quit")
        output = proc.communicate(timeout=DEADLINE_S)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # No VMDESCRIPTION and the socket closed after EOF: accepted, with QEMU's remark.
    assert "Expected vmdescription section, but got 0" in output


def qemu_greeting_error(greetings: list[bytes], tmp_path: Path) -> str:
    """Start a multifd destination, connect main and one connection per greeting, and
    return the first error line QEMU prints (it does not exit on greeting errors)."""
    ram = tmp_path / "ram"
    ram.write_bytes(bytes(RAM_SIZE))
    qmp_path = tmp_path / "qmp.sock"
    proc = start_qemu(ram, qmp_path)
    lines: queue.Queue[bytes] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()])
    reader.start()
    socks = []
    try:
        qmp = QMP(qmp_path)
        qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
        qmp.cmd("migrate-set-parameters", **{"multifd-channels": 2})
        port = free_port()
        qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        socks.append(socket.create_connection(("127.0.0.1", port)))
        socks[0].sendall(encode_file_header())
        for greeting in greetings:
            socks.append(socket.create_connection(("127.0.0.1", port)))
            socks[-1].sendall(greeting)
        return lines.get(timeout=DEADLINE_S).decode(errors="replace")
    finally:
        proc.kill()
        proc.wait()
        reader.join()
        for sock in socks:
            sock.close()


GREETINGS = {
    "magic": [b"\x11\x22\x33\x45" + encode_init(0)[4:]],
    "version": [encode_init(0)[:4] + b"\0\0\0\x02" + encode_init(0)[8:]],
    "uuid": [encode_init(1, bytes(range(16)))],
    "id": [encode_init(3)],
    "taken": [encode_init(0), encode_init(0)],
}


@pytest.mark.parametrize("case", sorted(GREETINGS))
def test_same_greeting_message_as_qemu(case: str, tmp_path: Path) -> None:
    greetings = GREETINGS[case]
    taken: set[int] = set()
    with pytest.raises(ProtocolError) as info:
        for accepted, raw in enumerate(greetings):
            taken.add(check_init(decode_init(raw), channels=2, taken=taken, accepted=accepted))
    assert qemu_greeting_error(greetings, tmp_path) == f"qemu-system-x86_64: {info.value.desc}\n"
