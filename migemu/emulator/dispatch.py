"""Command dispatch: command name -> handler (emulator layer).

Every QMP command, and every HMP command through them, runs through ``Dispatcher.execute``:
the arguments are validated against our QAPI schema (QEMU 7.2's exact visitor errors), then
the handler runs. A handler returns the command's return value (``None`` means ``{}``) or
raises ``QMPError``; any other exception is a bug, logged and answered with GenericError so
that the process keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from migemu.qapi import validate
from migemu.qapi.errors import CommandNotFound, QMPError

Handler = Callable[[dict[str, Any]], Any]

log = logging.getLogger(__name__)


class Dispatcher:
    """The table of commands one emulated QEMU implements."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._oob: set[str] = set()

    def register(self, name: str, handler: Handler, allow_oob: bool = False) -> None:
        if name in self._handlers:
            raise ValueError(f"command {name} registered twice")
        self._handlers[name] = handler
        if allow_oob:
            self._oob.add(name)

    def allows_oob(self, name: str) -> bool:
        return name in self._oob

    def has(self, name: str) -> bool:
        return name in self._handlers

    def names(self) -> list[str]:
        return list(self._handlers)

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one command; returns its QMP return value or raises QMPError."""
        handler = self._handlers.get(name)
        if handler is None:
            raise CommandNotFound(f"The command {name} has not been found")
        args = validate(name, arguments if arguments is not None else {})
        try:
            result = handler(args)
        except QMPError:
            raise
        except Exception as err:  # a bug: keep serving, say so
            log.exception("command %s failed unexpectedly", name)
            raise QMPError(f"internal error in migemu while running {name}: {err}") from err
        return {} if result is None else result
