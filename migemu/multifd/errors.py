"""The multifd error vocabulary (multifd layer).

Every failure of the migration data path -- main stream or multifd channel, sending or
receiving -- is a ``MultiFDError``. Four subclasses say whose fault it was: ``ChannelClosed``
(we closed or cancelled), ``PeerBroken`` (the peer vanished or cut a record short),
``CodecError`` (a compressed payload did not decompress to what the header promised) and
``ProtocolError`` (bytes that QEMU 7.2 itself would refuse). ``desc`` is QEMU's exact message
where QEMU has one; the migration state machine turns it into ``error-desc``. These errors are
never QMP replies.
"""

from __future__ import annotations


class MultiFDError(Exception):
    """Root of every data-path error. ``desc`` is the human text (QEMU's where it has one)."""

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.desc!r})"


class ChannelClosed(MultiFDError):
    """We closed the channel (cancel, shutdown, an error elsewhere); no more IO on it."""


class PeerBroken(MultiFDError):
    """The peer broke the connection: EOF in the middle of a record, reset, broken pipe."""


class CodecError(MultiFDError):
    """A compression or decompression failure, or a payload that decodes to the wrong size."""


class ProtocolError(MultiFDError):
    """Bytes that violate the wire format, or that QEMU 7.2 would reject, with its message."""


# QEMU 7.2's text for an EOF inside a record (qio_channel_read_all*).
UNEXPECTED_EOF = "Unexpected end-of-file before all data were read"
