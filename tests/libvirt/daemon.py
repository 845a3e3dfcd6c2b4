"""A private libvirtd 9.0 for tests: its own config, run, state, cache and log dirs.

libvirtd (qemu:///system) hard-codes /etc/libvirt, /run/libvirt, /var/lib/libvirt,
/var/cache/libvirt and /var/log/libvirt. Each daemon runs in its own mount namespace
(``unshare -m``) where those paths are bind mounts of directories under a temp dir, so a
test never touches the host's and two daemons can run side by side. The daemon's socket is
reachable from outside the namespace through the bind-mounted run dir
(``qemu:///system?socket=…``). The process is libvirtd itself (``unshare`` execs it) and
is ended by its PID.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

LIBVIRTD = shutil.which("libvirtd") or (
    "/usr/sbin/libvirtd" if Path("/usr/sbin/libvirtd").exists() else None
)
VIRSH = shutil.which("virsh")
UNSHARE = shutil.which("unshare")
DEADLINE_S = 30.0

# The host paths libvirtd uses, each replaced by a directory of the rig.
_PRIVATE_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}

QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
"""


def missing_reason() -> str | None:
    """Why these tests cannot run here, or None."""
    if LIBVIRTD is None or VIRSH is None:
        return (
            "libvirtd/virsh not installed (apt-get install libvirt-daemon "
            "libvirt-daemon-driver-qemu libvirt-clients)"
        )
    if UNSHARE is None:
        return "unshare (util-linux) not installed"
    if os.geteuid() != 0:
        return "libvirtd's qemu:///system needs root"
    return None


def ensure_accounts() -> None:
    """libvirtd's QEMU driver refuses to start until these exist (as .ci/run creates them)."""
    if subprocess.run(["getent", "group", "kvm"], capture_output=True).returncode:
        subprocess.run(["groupadd", "-r", "kvm"], check=True)
    if subprocess.run(["getent", "group", "libvirt-qemu"], capture_output=True).returncode:
        subprocess.run(["groupadd", "-r", "libvirt-qemu"], check=True)
    if subprocess.run(["getent", "passwd", "libvirt-qemu"], capture_output=True).returncode:
        subprocess.run(
            [
                "useradd",
                "-r",
                "-g",
                "libvirt-qemu",
                "-G",
                "kvm",
                "-d",
                "/var/lib/libvirt",
                "-s",
                "/usr/sbin/nologin",
                "libvirt-qemu",
            ],
            check=True,
        )


@dataclass
class Libvirtd:
    """One private daemon under ``root``; ``start()``, ``virsh(...)``, ``stop()``."""

    root: Path
    host_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    proc: subprocess.Popen[bytes] | None = None

    def path(self, key: str) -> Path:
        return self.root / key

    @property
    def socket(self) -> Path:
        return self.path("run") / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    @property
    def daemon_log(self) -> Path:
        return self.root / "libvirtd.log"

    def domain_log(self, name: str) -> Path:
        return self.path("log") / "qemu" / f"{name}.log"

    def _write_config(self) -> None:
        for key in _PRIVATE_DIRS:
            self.path(key).mkdir(parents=True, exist_ok=True)
        (self.path("log") / "qemu").mkdir(exist_ok=True)
        (self.path("etc") / "qemu.conf").write_text(QEMU_CONF)
        (self.path("etc") / "libvirtd.conf").write_text(
            f'log_filters = "1:qemu.qemu_monitor 3:util 3:rpc 3:object 3:event"\n'
            f'log_outputs = "1:file:{self.daemon_log}"\n'
            f'host_uuid = "{self.host_uuid}"\n'
            'auth_unix_rw = "none"\nauth_unix_ro = "none"\nunix_sock_group = "root"\n'
            "admin_max_workers = 1\n"
        )

    def start(self) -> None:
        assert LIBVIRTD and UNSHARE
        self._write_config()
        mounts = []
        for key, target in _PRIVATE_DIRS.items():
            # The mount point must exist; these are the package's own (normally present) dirs.
            mounts.append(f"mkdir -p {target} && mount --bind {self.path(key)} {target}")
        script = " && ".join(mounts) + (
            f" && exec {LIBVIRTD} --config {self.path('etc') / 'libvirtd.conf'}"
            f" --pid-file {self.root / 'libvirtd.pid'}"
        )
        self.proc = subprocess.Popen(
            [UNSHARE, "-m", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=open(self.root / "libvirtd.stdout", "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        end = time.monotonic() + DEADLINE_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"libvirtd exited: {(self.root / 'libvirtd.stdout').read_text()}"
                )
            if self.socket.exists() and self.virsh("version", check=False).returncode == 0:
                return
            if time.monotonic() > end:
                self.stop()
                raise RuntimeError("libvirtd never answered")
            time.sleep(0.05)  # polling the daemon's socket, with a deadline

    def virsh(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        assert VIRSH
        r = subprocess.run(
            [VIRSH, "-c", self.uri, *args], capture_output=True, text=True, timeout=timeout
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"virsh {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}"
            )
        return r

    def monitor_log(self) -> str:
        return self.daemon_log.read_text(errors="replace") if self.daemon_log.exists() else ""

    def qmp_exchanges(self) -> list[tuple[str, str]]:
        """(sent message, reply) pairs from the monitor log, in order, matched by id."""
        sent: dict[str, str] = {}
        out: list[tuple[str, str]] = []
        for line in self.monitor_log().splitlines():
            m = re.search(r"QEMU_MONITOR_SEND_MSG: mon=\S+ msg=(.*?)\s*(fd=-?\d+)?$", line)
            if m:
                idm = re.search(r'"id":"(libvirt-\d+)"', m.group(1))
                if idm:
                    sent[f"{line.split('mon=')[1].split()[0]}/{idm.group(1)}"] = m.group(1)
                continue
            m = re.search(r"QEMU_MONITOR_RECV_REPLY: mon=(\S+) reply=(.*)$", line)
            if m:
                idm = re.search(r'"id": "(libvirt-\d+)"', m.group(2))
                if idm:
                    out.append((sent.get(f"{m.group(1)}/{idm.group(1)}", "?"), m.group(2)))
        return out

    def emulator_pids(self) -> list[int]:
        """PIDs of the emulators this daemon started (libvirt's pid files in its run dir)."""
        pids = []
        for f in (self.path("run") / "qemu").glob("*.pid"):
            text = f.read_text().strip()
            if text.isdigit():
                pids.append(int(text))
        return pids

    def stop(self) -> None:
        if self.proc is None:
            return
        for pid in self.emulator_pids():  # domains outlive libvirtd: end them by PID
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
