"""Deflate backends a multifd zlib source can compress with (multifd layer).

QEMU 7.2 deflates with the system zlib. Faster drop-in libraries emit the same standard
zlib-wrapped deflate streams, which any inflate -- QEMU's included -- reads unchanged, so a
migemu source may use one of them; they differ in CPU cost and in how many bytes they emit
(so ``multifd-bytes`` and ``transferred`` are no longer QEMU's own for the same RAM).
Measured on the realistic image at level 1, 20,000 pages: stock zlib 0.97 CPU-s / 39.5 MB,
isal 0.28 s / 40.0 MB, zlib-ng 0.45 s / 47.0 MB. Stock zlib stays the default: its bytes, and
so every counter QEMU reports, are QEMU's. The choice is per process, ``MIGEMU_DEFLATE``
(``zlib``, ``isal``, ``zlib-ng``), checked at start-up. The receiving side always inflates
with stock zlib, so its error texts for a corrupt payload stay QEMU's.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

ENV = "MIGEMU_DEFLATE"
DEFAULT = "zlib"
# Backend name -> (module providing zlib's compressobj/Z_SYNC_FLUSH API, pip package).
BACKENDS: dict[str, tuple[str, str]] = {
    "zlib": ("zlib", "(standard library)"),
    "isal": ("isal.isal_zlib", "isal"),
    "zlib-ng": ("zlib_ng.zlib_ng", "zlib-ng"),
}


class DeflateBackendError(Exception):
    """An unknown or uninstalled backend; the message says which and how to get it."""


def selected() -> str:
    """The backend this process compresses with: ``MIGEMU_DEFLATE``, else stock zlib."""
    return os.environ.get(ENV, "") or DEFAULT


def load(name: str) -> ModuleType:
    """The module of backend ``name``, with a clear error if it is unknown or missing."""
    try:
        module, package = BACKENDS[name]
    except KeyError:
        choices = ", ".join(BACKENDS)
        raise DeflateBackendError(
            f"{ENV}={name}: unknown deflate backend (choose one of {choices})"
        ) from None
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DeflateBackendError(
            f"{ENV}={name}: the backend is not installed (pip install {package})"
        ) from err


def check_selected() -> None:
    """Fail early (at start-up) if ``MIGEMU_DEFLATE`` names a backend that cannot load."""
    load(selected())
