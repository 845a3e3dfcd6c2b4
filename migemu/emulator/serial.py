"""The guest's first serial port (COM1) on a ``-serial`` character device (emulator layer).

QEMU opens ``-serial file:PATH`` when the machine is built (created, truncated), so the file
exists before the guest prints anything; migemu does the same. ``SerialPort.write`` is
called from the vCPU thread; writes are unbuffered so a harness polling the file sees each
character at once, and a lock keeps a write from racing with ``close``.
"""

from __future__ import annotations

import os
import threading

from migemu.emulator.cmdline import ChardevConfig
from migemu.emulator.startup import StartupError


class SerialPort:
    """Output of one serial port; a port without a backend swallows its output."""

    def __init__(self, fd: int | None = None) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self.written = 0

    @classmethod
    def open(cls, chardev: ChardevConfig | None, spec: str, prog: str = "migemu") -> SerialPort:
        """Open the backend as QEMU does at start-up; QEMU's errors otherwise."""
        if chardev is None or chardev.backend == "null":
            return cls()
        if chardev.backend == "stdio":
            return cls(os.dup(1))
        if chardev.backend == "file":
            path = chardev.path or ""
            append = dict(chardev.options).get("append") in ("on", "yes", "true")
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
            try:
                return cls(os.open(path, flags | os.O_CLOEXEC, 0o666))
            except OSError as err:
                raise StartupError(
                    f"-serial {spec}: Could not open '{path}': {err.strerror}\n"
                    f"{prog}: -serial {spec}: could not connect serial device to character "
                    f"backend '{spec}'"
                ) from err
        raise StartupError(
            f"-serial {spec}: migemu's serial port supports file:, stdio and null backends"
        )

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._fd is None:
                return
            try:
                os.write(self._fd, data)
                self.written += len(data)
            except OSError:
                pass  # a full disk or a closed pipe loses output, as on a real UART

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
