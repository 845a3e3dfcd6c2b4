"""object-add and object-del for the objects migemu emulates: TLS credentials and authz-simple.

QEMU 7.2's ``ObjectOptions`` union (schema/tls.json defines the branches migemu has); the
arguments arrive validated by the schema; creating an object reads its files, with QEMU's
texts on failure (``migration/tls.py``). The memory backends of the command line are objects
too: their ids are taken, and deleting one is refused as QEMU refuses it while in use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from migemu.emulator.migration.tls import OBJECT_TYPES, PROPERTIES, TlsError
from migemu.qapi.errors import QMPError

if TYPE_CHECKING:
    from migemu.emulator.machine import Machine


def _backend_ids(machine: Machine) -> set[str]:
    return {str(m.get("id")) for m in machine.options.memdevs}


def register(machine: Machine) -> None:
    objects = machine.tls_objects

    def object_add(args: dict[str, Any]) -> dict[str, Any]:
        qom_type, object_id = args["qom-type"], args["id"]
        if object_id in _backend_ids(machine):
            raise QMPError(
                f"attempt to add duplicate property '{object_id}' to object (type 'container')"
            )
        if qom_type not in OBJECT_TYPES:
            raise QMPError(f"object type '{qom_type}' is not supported by migemu")
        props = {k: v for k, v in args.items() if k not in ("qom-type", "id")}
        for key in props:
            if key not in PROPERTIES[qom_type]:
                raise QMPError(f"Parameter '{key}' is unexpected")
        try:
            objects.add(qom_type, object_id, props)
        except TlsError as err:
            raise QMPError(err.desc) from err
        return {}

    def object_del(args: dict[str, Any]) -> dict[str, Any]:
        object_id = args["id"]
        if object_id in _backend_ids(machine):
            raise QMPError(f"object '{object_id}' is in use, can not be deleted")
        if not objects.delete(object_id):
            raise QMPError(f"object '{object_id}' not found")
        return {}

    machine.dispatcher.register("object-add", object_add)
    machine.dispatcher.register("object-del", object_del)
