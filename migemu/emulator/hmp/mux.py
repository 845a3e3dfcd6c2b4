"""A multiplexed character device (``mux=on``, ``-serial mon:stdio``) in front of an HMP
monitor, as QEMU 7.2's ``char-mux.c`` behaves (emulator layer, sans-IO).

The user switches the input focus between the frontends with Ctrl-A c; Ctrl-A h prints the
escape help, Ctrl-A x ends the process at once, Ctrl-A Ctrl-A sends a Ctrl-A. The monitor
is greeted the first time it gets the focus; losing it prints a newline and suspends it,
getting it back restarts the line and shows the prompt. While the focused monitor is
suspended the mux reads nothing (escapes included), like QEMU's ``can_read`` chain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from migemu.emulator.hmp.server import HMPMonitor, Write

ESCAPE_CHAR = 0x01  # Ctrl-A, QEMU's default term_escape_char
MUX_HELP = (
    "\n\r"
    "C-a h    print this help\n\r"
    "C-a x    exit emulator\n\r"
    "C-a s    save disk data back to file (if -snapshot)\n\r"
    "C-a t    toggle console timestamps\n\r"
    "C-a b    send break (magic sysrq)\n\r"
    "C-a c    switch between console and monitor\n\r"
    "C-a C-a  sends C-a\n\r"
)
TERMINATED = "QEMU: Terminated\n\r"


class Mux:
    """Frontend 0 is the monitor; frontends after it (a serial port) only drop input."""

    def __init__(
        self,
        monitor: HMPMonitor,
        write: Write,
        exit_now: Callable[[], None],
        frontends: int = 1,
    ) -> None:
        self.monitor = monitor
        self.write = write
        self.exit_now = exit_now
        self.frontends = frontends
        self.focus = frontends - 1  # the last frontend attached has the focus
        self.got_escape = False
        self.greeted = False
        self.exited = False
        self.pending = bytearray()
        monitor.on_resume = self.pump

    def open(self) -> None:
        """The chardev is open: greet the monitor if it has the focus."""
        if self.focus == 0:
            self._greet()

    def _greet(self) -> None:
        self.greeted = True
        self.monitor.opened(self.write)

    def feed(self, data: bytes) -> None:
        self.pending += data
        self.pump()

    def pump(self) -> None:
        while self.pending and not self.exited:
            if self.focus == 0 and (self.monitor.suspended or self.monitor.quitting):
                return
            ch = self.pending.pop(0)
            if self.got_escape:
                self.got_escape = False
                if ch == ESCAPE_CHAR:
                    self._send(ch)
                else:
                    self._escape(chr(ch))
            elif ch == ESCAPE_CHAR:
                self.got_escape = True
            else:
                self._send(ch)

    def _send(self, ch: int) -> None:
        if self.focus == 0:
            self.monitor.feed(bytes([ch]))

    def _escape(self, key: str) -> None:
        if key in "?h":
            self.write(MUX_HELP.encode())
        elif key == "x":
            self.write(TERMINATED.encode())
            self.exited = True
            self.exit_now()
        elif key == "c":
            self._set_focus((self.focus + 1) % self.frontends)
        # s (commit disks), b (break) and t (timestamps) change nothing a monitor shows

    def _set_focus(self, focus: int) -> None:
        if self.focus == 0 and self.greeted:
            self.monitor.focus_out()
        self.focus = focus
        if focus == 0:
            if self.greeted:
                self.monitor.focus_in()
            else:
                self._greet()
