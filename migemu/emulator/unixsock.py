"""Unix sockets that only their owner can use (emulator layer).

QMP, HMP and migration sockets are created with mode 0600. Setting the mode after ``bind()``
leaves a moment when another user could connect; binding under a 0177 umask closes it. The
umask is process-wide, so the window where it is narrowed is kept to the bind itself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def owner_only() -> Iterator[None]:
    """Files (sockets) created inside are ``0600`` from the start."""
    old = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(old)
