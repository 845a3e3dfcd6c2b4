"""The QMP monitor: a sans-IO session (``session.py``) and its asyncio server (``server.py``)."""

from migemu.emulator.qmp.session import QMPSession

__all__ = ["QMPSession"]
