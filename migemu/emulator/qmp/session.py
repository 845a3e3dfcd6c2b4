"""One QMP monitor session, sans-IO (emulator layer).

The session takes parsed JSON values (or JSON parse errors) from the reader and returns the
response objects to send, exactly as QEMU 7.2's monitor forms them: request-shape checks in
QDict iteration order, capability negotiation (before it, every CommandNotFound becomes
"Expecting capabilities negotiation with 'qmp_capabilities'"), ``id`` copied unchanged into
the response after ``return``/``error``. Events are delivered by the server only once
``negotiated`` is true. No sockets here: ``server.py`` is the thin adapter.
"""

from __future__ import annotations

from typing import Any

from migemu.emulator.dispatch import Dispatcher
from migemu.qapi import validate
from migemu.qapi.errors import COMMAND_NOT_FOUND, CommandNotFound, QMPError
from migemu.qapi.qjson import JSONParseError, Parsed, qdict_order

NEGOTIATION_DESC = "Expecting capabilities negotiation with 'qmp_capabilities'"
QMP_CAPABILITIES = "qmp_capabilities"
OOB = "oob"

Response = dict[str, Any]


def error_response(err: QMPError) -> Response:
    return {"error": err.to_qobject()}


class QMPSession:
    """State of one monitor: negotiated or not, OOB on or off."""

    def __init__(
        self, dispatcher: Dispatcher, version: dict[str, Any], oob_offered: bool = True
    ) -> None:
        self.dispatcher = dispatcher
        self.version = version
        self.oob_offered = oob_offered
        self.negotiated = False
        self.oob_enabled = False

    def greeting(self) -> Response:
        return {"QMP": {"version": self.version, "capabilities": [OOB] if self.oob_offered else []}}

    def handle(self, item: Parsed | JSONParseError) -> Response | None:
        """The response to one reader result (``None``: nothing to send)."""
        if isinstance(item, JSONParseError):
            return error_response(QMPError(item.desc))
        return self.handle_request(item.value)

    def handle_request(self, request: Any) -> Response | None:
        response = self._dispatch(request)
        if isinstance(request, dict) and "id" in request:
            response["id"] = request["id"]
        return response

    def _dispatch(self, request: Any) -> Response:
        try:
            name, arguments = self._check_request(request)
            if not self.negotiated and name != QMP_CAPABILITIES:
                raise CommandNotFound(f"The command {name} has not been found")
            if name == QMP_CAPABILITIES:
                result = self._qmp_capabilities(arguments)
            else:
                result = self.dispatcher.execute(name, arguments)
        except QMPError as err:
            if not self.negotiated and err.error_class == COMMAND_NOT_FOUND:
                err = CommandNotFound(NEGOTIATION_DESC)
            return error_response(err)
        return {"return": result}

    def _check_request(self, request: Any) -> tuple[str, dict[str, Any] | None]:
        """QEMU's checks of the request object's members, in QDict iteration order."""
        if not isinstance(request, dict):
            raise QMPError("QMP input must be a JSON object")
        has_exec = False
        for key in qdict_order(list(request)):
            value = request[key]
            if key == "execute" or (key == "exec-oob" and self.oob_enabled):
                if not isinstance(value, str):
                    raise QMPError(f"QMP input member '{key}' must be a string")
                if has_exec:
                    raise QMPError("QMP input member 'execute' clashes with 'exec-oob'")
                has_exec = True
            elif key == "arguments":
                if not isinstance(value, dict):
                    raise QMPError("QMP input member 'arguments' must be an object")
            elif key != "id":
                raise QMPError(f"QMP input member '{key}' is unexpected")
        if not has_exec:
            raise QMPError("QMP input lacks member 'execute'")
        if "execute" in request:
            name = request["execute"]
        else:
            name = request["exec-oob"]
            if self.dispatcher.has(name) or name == QMP_CAPABILITIES:
                if not self.dispatcher.allows_oob(name):
                    raise QMPError(f"The command {name} does not support OOB")
            else:
                raise CommandNotFound(f"The command {name} has not been found")
        return name, request.get("arguments")

    def _qmp_capabilities(self, arguments: dict[str, Any] | None) -> dict[str, Any]:
        args = validate(QMP_CAPABILITIES, arguments if arguments is not None else {})
        if self.negotiated:
            raise CommandNotFound("Capabilities negotiation is already complete, command ignored")
        enable = args.get("enable", [])
        for cap in enable:
            if cap != OOB or not self.oob_offered:
                raise QMPError(f"Capability {cap} not available")
        self.oob_enabled = OOB in enable
        self.negotiated = True
        return {}
