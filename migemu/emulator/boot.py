"""What the machine boots, and where its serial output goes (emulator layer).

Built from the command line like QEMU's board: the ``-serial`` backends are opened at
start-up, and the boot disk (the first ``-drive file=`` or bare image) picks the guest.
migemu runs no guest code: a disk whose boot sector is recognised (``guest.bootsect``) runs
the equivalent built-in workload, printing on COM1; any other disk is refused at start-up,
unless ``-migemu-guest`` says which guest to run, which always wins over the disk.
"""

from __future__ import annotations

from migemu.emulator.cmdline import VMConfig
from migemu.emulator.guest.bootsect import SECTOR_BYTES, identify_boot_sector
from migemu.emulator.guest.workload import SweepWorkload
from migemu.emulator.machine import Machine
from migemu.emulator.runtime import Service
from migemu.emulator.serial import SerialPort
from migemu.emulator.startup import StartupError
from migemu.qapi.errors import QMPError


def boot_disk(config: VMConfig) -> tuple[str, str] | None:
    """(path, how it was given) of the disk the BIOS boots from, if any."""
    for pairs in config.drives:
        values = dict(pairs)
        if "file" in values and values.get("media") != "cdrom":
            return values["file"], ",".join(f"{k}={v}" for k, v in pairs)
    if config.disk_images:
        return config.disk_images[0], config.disk_images[0]
    return None


def read_boot_sector(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(SECTOR_BYTES)
    except OSError as err:
        raise StartupError(f"-drive {option}: Could not open '{path}': {err.strerror}") from err


class SerialService:
    """Keeps the serial ports open while the machine runs."""

    def __init__(self, ports: list[SerialPort]) -> None:
        self.ports = ports

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        for port in self.ports:
            port.close()


def services_for(config: VMConfig, machine: Machine) -> list[Service]:
    chardevs = {c.id: c for c in config.chardevs}
    ports: list[SerialPort] = []
    try:
        for serial in config.serials:
            chardev = chardevs.get(serial.chardev) if serial.chardev else None
            ports.append(SerialPort.open(chardev, serial.spec, config.prog_name))
        disk = boot_disk(config)
        explicit_guest = bool(config.guest.properties)  # -migemu-guest given
        if disk is not None and not explicit_guest:
            path, option = disk
            image = identify_boot_sector(read_boot_sector(path, option))
            if image is None:
                raise StartupError(
                    f"-drive {option}: migemu cannot run this boot image: it recognises only "
                    "QEMU migration-test's x86 boot sector (use -migemu-guest idle to run "
                    "without a guest)"
                )
            try:
                machine.set_guest(image.guest_spec())
            except QMPError as err:
                raise StartupError(f"-drive {option}: {err.desc}") from err
    except StartupError:
        for port in ports:
            port.close()
        raise
    workload = machine.workload
    if ports and isinstance(workload, SweepWorkload):
        workload.attach_serial(ports[0].write)
    return [SerialService(ports)]
