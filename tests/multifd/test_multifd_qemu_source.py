"""Differential test: a real QEMU 7.2 source migrates to a recording listener; our decoders
must parse every byte of main and multifd streams and rebuild the source's RAM exactly.

This covers zlib, for which there is no stored capture. Skipped without qemu-system-x86_64.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import zstandard
from multifd_support import DEADLINE_S, QEMU, QMP, make_image, start_qemu, wait_status
from multifd_support import QEMU_RAM_SIZE as RAM_SIZE

from migemu.multifd import (
    PACKET_HEADER_WIRE_SIZE,
    PAGE_SIZE,
    ChannelDecoder,
    MultiFDInit,
    check_init,
    send_method,
)
from migemu.multifd.mainstream import MainStreamDecoder, RamEOS, RamPage, RamZero

pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")


def libzstd_matches_qemu() -> bool:
    """zstd output is only reproducible with the same libzstd: python-zstandard bundles its
    own (1.5.7 here), QEMU links the system's (Debian 12: 1.5.4)."""
    if shutil.which("zstd") is None:
        return False
    system = subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout
    return f"v{'.'.join(map(str, zstandard.ZSTD_VERSION))}" in system


def record_connections(server: socket.socket, count: int) -> list[bytes]:
    """Accept ``count`` connections and read each to EOF, concurrently."""
    results: list[bytearray] = [bytearray() for _ in range(count)]

    def drain(conn: socket.socket, out: bytearray) -> None:
        with conn:
            while chunk := conn.recv(1 << 16):
                out += chunk

    threads = []
    for index in range(count):
        conn, _ = server.accept()
        thread = threading.Thread(target=drain, args=(conn, results[index]))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(DEADLINE_S)
    return [bytes(r) for r in results]


@pytest.mark.parametrize(("method", "level"), [("none", 0), ("zlib", 1), ("zstd", 1)])
def test_our_decoders_read_a_real_qemu_source(method: str, level: int, tmp_path: Path) -> None:
    image = make_image()
    image_path = tmp_path / "image"
    image_path.write_bytes(image)
    qmp_path = tmp_path / "qmp.sock"
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(DEADLINE_S)
    port = server.getsockname()[1]
    proc = start_qemu(image_path, qmp_path, incoming=False, share=False)
    try:
        qmp = QMP(qmp_path)
        qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
        qmp.cmd("migrate-set-parameters", **{"multifd-channels": 2, "multifd-compression": method})
        qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        streams = record_connections(server, 3)
        assert wait_status(qmp, "completed", "failed") == "completed"
        qmp.cmd("quit")
        proc.wait(DEADLINE_S)
    finally:
        server.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

    main, *channels = streams
    assert main[:4] == b"QEVM"
    ram = bytearray(b"\xa5" * RAM_SIZE)
    main_decoder = MainStreamDecoder(ram_blocks={"mem0": RAM_SIZE})
    eos = 0
    for record in main_decoder.feed(main):
        if isinstance(record, RamZero):
            ram[record.offset : record.offset + PAGE_SIZE] = bytes([record.fill]) * PAGE_SIZE
        elif isinstance(record, RamPage):
            ram[record.offset : record.offset + PAGE_SIZE] = record.data
        elif isinstance(record, RamEOS):
            eos += 1
    assert main_decoder.done

    taken: set[int] = set()
    for stream in channels:
        decoder = ChannelDecoder(method, {"mem0": RAM_SIZE})
        ours = send_method(method, 0, level)
        pos = 64
        syncs = 0
        pending = decoder.feed(stream)
        while pending:
            record = pending.pop(0)
            if isinstance(record, MultiFDInit):
                channel = check_init(record, channels=2, taken=taken)
                taken.add(channel)
                decoder.accept(channel)
            else:
                pos += PACKET_HEADER_WIRE_SIZE
                if record.header.normal_pages:
                    size = len(record.data) if method == "none" else record.header.next_packet_size
                    theirs = stream[pos : pos + size]
                    pos += size
                    payload = ours.compress(record.data)
                    if method != "zstd" or libzstd_matches_qemu():
                        # none: the pages themselves. zlib: Python's zlib module and QEMU
                        # link the same libz, and deflate's output does not depend on how
                        # the input was split, so QEMU's per-page deflate calls and our
                        # one call per packet give the same bytes.
                        assert payload == theirs
                for index, offset in enumerate(record.header.offsets):
                    ram[offset : offset + PAGE_SIZE] = record.data[
                        index * PAGE_SIZE : (index + 1) * PAGE_SIZE
                    ]
                if record.sync:
                    syncs += 1
                    decoder.release()
            if not pending:
                pending = decoder.feed(b"")
        decoder.feed_eof()
        assert syncs == eos  # one SYNC per channel per EOS on main
    assert taken == {0, 1}
    assert bytes(ram) == image
