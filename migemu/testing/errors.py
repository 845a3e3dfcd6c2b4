"""The error vocabulary of ``migemu.testing`` (the test library, above the emulator layer).

Every error says which VM it is about and, for a migration, the status it was in and how far
it had got, so a failing user test explains itself without a debugger. ``UnsupportedByQEMU``
marks a migemu-only feature used while the backend is real QEMU: the pytest plugin turns it
into a skip with that reason.
"""

from __future__ import annotations

from typing import Any


class MigemuTestingError(Exception):
    """Root of every error raised by ``migemu.testing``."""


class VMStateError(MigemuTestingError):
    """The VM cannot do this now: started twice, used before ``start()`` or after ``close()``."""


class VMStartError(MigemuTestingError):
    """The process did not come up (bad argument, missing binary, no QMP socket in time)."""


class VMExitedError(MigemuTestingError):
    """The process exited while something was still expected of it."""

    def __init__(self, message: str, returncode: int | None) -> None:
        super().__init__(message)
        self.returncode = returncode


class MigrationFailedError(MigemuTestingError):
    """The source reported ``failed`` while another status was awaited."""

    def __init__(self, message: str, info: dict[str, Any]) -> None:
        super().__init__(message)
        self.info = info
        self.error_desc: str | None = info.get("error-desc")


class MigrationStatusError(MigemuTestingError):
    """The migration ended in a status other than the one awaited (e.g. ``completed`` while
    waiting for ``active``), so waiting longer could never succeed."""

    def __init__(self, message: str, info: dict[str, Any]) -> None:
        super().__init__(message)
        self.info = info


class MigrationTimeoutError(MigemuTestingError, TimeoutError):
    """A deadline passed; ``info`` is the last ``query-migrate`` answer (may be empty)."""

    def __init__(self, message: str, info: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.info = info or {}


class UnsupportedByQEMU(MigemuTestingError):
    """A migemu-only feature (fault injection, ``x-migemu-*``, a dirtying guest) was asked of
    real QEMU. Under the pytest plugin this skips the test with this message."""


def describe(info: dict[str, Any]) -> str:
    """One line for a ``query-migrate`` answer: the status and the RAM progress, if any."""
    if not info:
        return "no migration status yet"
    text = f"status {info.get('status', '?')!r}"
    ram = info.get("ram")
    if isinstance(ram, dict):
        text += (
            f", ram transferred {ram.get('transferred')} of {ram.get('total')} bytes,"
            f" remaining {ram.get('remaining')}, dirty-sync-count {ram.get('dirty-sync-count')}"
        )
    if "error-desc" in info:
        text += f", error-desc {info['error-desc']!r}"
    return text
