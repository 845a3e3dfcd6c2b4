"""QMP error vocabulary (qapi layer).

A ``QMPError`` is the only exception a command handler raises on purpose: it carries the QMP
error class (``GenericError``, ``CommandNotFound``, ...) and the exact ``desc`` text QEMU 7.2
would give. Dispatch turns it into the error reply in one place; any other exception is a bug.
"""

from __future__ import annotations

GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"
DEVICE_NOT_ACTIVE = "DeviceNotActive"
DEVICE_NOT_FOUND = "DeviceNotFound"
KVM_MISSING_CAP = "KVMMissingCap"


class QMPError(Exception):
    """An error reply: ``{"error": {"class": error_class, "desc": desc}}``."""

    def __init__(self, desc: str, error_class: str = GENERIC_ERROR) -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class

    def to_qobject(self) -> dict[str, str]:
        """The ``error`` member of the reply, members in QEMU's insertion order."""
        return {"class": self.error_class, "desc": self.desc}

    def __repr__(self) -> str:
        return f"QMPError({self.desc!r}, {self.error_class!r})"


class CommandNotFound(QMPError):
    """``CommandNotFound``: unknown command, or a command used before negotiation."""

    def __init__(self, desc: str) -> None:
        super().__init__(desc, COMMAND_NOT_FOUND)
