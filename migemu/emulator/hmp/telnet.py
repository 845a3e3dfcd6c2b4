"""Telnet on a socket chardev (``telnet=on``), as QEMU 7.2's ``char-socket.c`` does it (emulator
layer, sans-IO).

On connect QEMU sends four option commands (WILL ECHO, WILL SUPPRESS-GO-AHEAD, WILL BINARY,
DO BINARY) and never negotiates further. Input goes through a three-state filter: IAC IAC is
a 0xff data byte, IAC BREAK is dropped, any other IAC swallows the next two bytes (so a
subnegotiation's payload leaks through as data, exactly as in QEMU).
"""

from __future__ import annotations

IAC = 0xFF
IAC_BREAK = 0xF3
TELNET_INIT = bytes([IAC, 0xFB, 0x01, IAC, 0xFB, 0x03, IAC, 0xFB, 0x00, IAC, 0xFD, 0x00])


class TelnetFilter:
    """tcp_chr_process_IAC_bytes: strips telnet commands from the input stream."""

    def __init__(self) -> None:
        self.state = 1  # QEMU's do_telnetopt: 1 data, 2 after IAC, 3 after a command

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            if self.state > 1:
                if b == IAC and self.state == 2:
                    out.append(b)
                    self.state = 1
                    continue
                if b == IAC_BREAK and self.state == 2:
                    self.state += 1  # a break event: nothing a monitor shows
                self.state += 1
                if self.state >= 4:
                    self.state = 1
            elif b == IAC:
                self.state = 2
            else:
                out.append(b)
        return bytes(out)
