"""Migration settings of one machine: parameters and capabilities (emulator layer).

Holds the current MigrationParameters and capability set, applies ``-global migration.*``
at startup with QEMU's checks, and serves the four QMP commands through the pure functions
in ``parameters`` and ``capabilities``. A failing set applies nothing: the new dict replaces
the old one only after every check passed. The lock makes a set atomic with respect to
migration threads reading the settings.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from migemu.emulator.migration import capabilities as caps_mod
from migemu.emulator.migration import parameters as params_mod
from migemu.qapi.errors import QMPError

FIXED_DURING_MIGRATION = ("multifd-channels", "multifd-compression")


class SettingsError(Exception):
    """A ``-global migration.*`` setting that QEMU refuses at startup."""


class MigrationSettings:
    """Current parameters and capabilities."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.parameters: dict[str, Any] = params_mod.default_parameters()
        self.capabilities: dict[str, bool] = caps_mod.default_capabilities()
        # Set by the migration manager: is a migration running, is this a destination, may
        # the incoming URI carry several channels. The defaults describe an idle source.
        self.migration_running: Callable[[], bool] = lambda: False
        self.incoming: Callable[[], bool] = lambda: False
        self.multi_channel_allowed: Callable[[], bool] = lambda: True
        self.incoming_active: Callable[[], bool] = lambda: False

    @classmethod
    def from_globals(cls, globals_: Iterable[tuple[str, str, str]]) -> MigrationSettings:
        """Settings after ``-global migration.PROP=VALUE`` options, checked as QEMU does."""
        settings = cls()
        params, caps = settings.parameters, settings.capabilities
        try:
            for driver, prop, value in globals_:
                if driver == "migration":
                    params, caps = caps_mod.apply_global(params, caps, prop, value)
            params_mod.check_parameters(params)
            caps_mod.check_capabilities(caps_mod.default_capabilities(), caps, parameters=params)
        except QMPError as err:
            raise SettingsError(err.desc) from err
        settings.parameters, settings.capabilities = params, caps
        return settings

    def get(self, name: str) -> Any:
        return self.parameters[name]

    def capability(self, name: str) -> bool:
        return self.capabilities[name]

    def query_parameters(self) -> dict[str, Any]:
        return params_mod.query_parameters(self.parameters)

    def query_capabilities(self) -> list[dict[str, Any]]:
        return caps_mod.query_capabilities(self.capabilities)

    def set_parameters(self, request: Mapping[str, Any]) -> None:
        with self._lock:
            new = params_mod.set_parameters(
                self.parameters,
                request,
                zero_copy_send=self.capabilities["zero-copy-send"],
            )
            if self.migration_running() or self.incoming_active():
                # QEMU 7.2 aborts (multifd-channels) or silently ignores (compression) such a
                # change mid-migration; migemu refuses it instead, after QEMU's own checks.
                for name in FIXED_DURING_MIGRATION:
                    if new[name] != self.parameters[name]:
                        raise QMPError(
                            f"Parameter '{name}' cannot be changed while a migration is in progress"
                        )
            self.parameters = new

    def set_capabilities(self, request: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            self.capabilities = caps_mod.set_capabilities(
                self.capabilities,
                request,
                migration_running=self.migration_running(),
                incoming=self.incoming(),
                multi_channel_allowed=self.multi_channel_allowed(),
                parameters=self.parameters,
            )
