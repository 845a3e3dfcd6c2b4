"""Start-up errors of the ``migemu`` process (emulator layer).

Anything that builds part of the machine from the command line (RAM, monitors, services such
as qtest, HMP consoles or the dashboard) raises ``StartupError`` with the text QEMU would
print after ``<prog>: ``; the command prints it and exits with status 1.
"""

from __future__ import annotations


class StartupError(Exception):
    """The configuration cannot be brought up; the message follows ``<prog>: ``."""
