"""One measured migration between two local processes: the engine of ``demo`` and ``bench`` (tools).

``Runner`` owns a scratch directory (in /dev/shm when there is room) with generated guest
images, starts a source and a destination (migemu, or real QEMU 7.2 for comparisons) on unix
QMP sockets, sets the same capabilities and parameters on both, migrates over loopback TCP
through a byte-counting ``WireProxy``, polls ``query-migrate`` for progress, checks that the
destination's RAM file equals the source's, and returns a ``RunResult`` with QEMU's own
counters next to the wire bytes. Every process it starts is ended by PID and every file it
made is removed, on success, on error and on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, QMPClient

from migemu.emulator.guest.image import PAGE_SIZE, ImageMix, write_image
from migemu.tools.wireproxy import LOOPBACK, WireProxy

METHODS = ("none", "zlib", "zstd")
ENGINES = ("migemu", "qemu")
# Image kinds (page mixes): the default is tuned to the 1 GiB image QEMU was measured on.
MIX_PRESETS: dict[str, ImageMix] = {
    "realistic": ImageMix(),
    "zero-heavy": ImageMix(zero=85, code=4, text=6, sparse=3, random=2),
    "text": ImageMix(zero=10, code=20, text=60, sparse=10, random=0),
    "random": ImageMix(zero=0, code=0, text=0, sparse=0, random=100),
}
LEVEL_RANGE = {"zlib": (0, 9), "zstd": (0, 20)}
DEFAULT_LEVEL = {"zlib": 1, "zstd": 1}
MAX_BANDWIDTH = 1 << 40  # QEMU's default 128 MiB/s would cap every measurement
START_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 600.0
POLL_S = 0.02
STOP_TIMEOUT_S = 10.0
SHM = Path("/dev/shm")
CHUNK_BYTES = 8 << 20

ProgressFn = Callable[[dict[str, Any], float], None]


class RunnerError(Exception):
    """A run could not be set up (a process did not start, a bad setting): the message says why."""


@dataclass(frozen=True)
class RunSpec:
    """What one migration measures. ``level`` None means the method's default (1)."""

    size: int
    method: str = "none"
    channels: int = 2
    level: int | None = None
    image: str = "realistic"
    dirty_rate: int = 0  # pages/s written by the source's guest while it migrates
    seed: int = 1
    engine: str = "migemu"
    bandwidth: int = MAX_BANDWIDTH

    def __post_init__(self) -> None:
        if self.size <= 0 or self.size % (1 << 20):
            raise RunnerError(f"size must be a positive whole number of MiB, not {self.size}")
        if self.method not in METHODS:
            raise RunnerError(f"unknown method {self.method!r} (methods: {', '.join(METHODS)})")
        if not 1 <= self.channels <= 255:
            raise RunnerError(f"channels must be between 1 and 255, not {self.channels}")
        if self.level is not None:
            if self.method == "none":
                raise RunnerError("a compression level needs method zlib or zstd")
            lo, hi = LEVEL_RANGE[self.method]
            if not lo <= self.level <= hi:
                raise RunnerError(f"{self.method} level must be between {lo} and {hi}")
        if self.image not in MIX_PRESETS:
            raise RunnerError(f"unknown image kind {self.image!r} ({', '.join(MIX_PRESETS)})")
        if self.dirty_rate < 0:
            raise RunnerError("dirty rate must not be negative")
        if self.engine not in ENGINES:
            raise RunnerError(f"unknown engine {self.engine!r}")
        if self.engine == "qemu" and self.dirty_rate:
            raise RunnerError("QEMU -machine none runs no guest: dirty rate must be 0 with qemu")

    @property
    def effective_level(self) -> int | None:
        if self.method == "none":
            return None
        return DEFAULT_LEVEL[self.method] if self.level is None else self.level

    @property
    def label(self) -> str:
        level = f"-{self.effective_level}" if self.method != "none" else ""
        dirty = f" dirty={self.dirty_rate}/s" if self.dirty_rate else ""
        return f"{self.method}{level} x{self.channels} {self.image}{dirty}"


@dataclass(frozen=True)
class Mismatch:
    """Where two RAM files first differ."""

    offset: int
    reason: str

    @property
    def page(self) -> int:
        return self.offset // PAGE_SIZE

    def __str__(self) -> str:
        return f"{self.reason} at byte {self.offset} (page {self.page})"


def compare_ram(source: Path, destination: Path) -> Mismatch | None:
    """None when the two files hold the same bytes, else the first difference."""
    a_size, b_size = os.path.getsize(source), os.path.getsize(destination)
    with open(source, "rb") as a, open(destination, "rb") as b:
        offset = 0
        while True:
            x = a.read(CHUNK_BYTES)
            y = b.read(CHUNK_BYTES)
            if x != y:
                n = min(len(x), len(y))
                first = next(
                    (
                        i
                        for i in range(0, n, PAGE_SIZE)
                        if x[i : i + PAGE_SIZE] != y[i : i + PAGE_SIZE]
                    ),
                    n,
                )
                if first < n:
                    first += next(j for j in range(PAGE_SIZE) if x[first + j] != y[first + j])
                    return Mismatch(offset + first, "content differs")
                break
            if not x:
                break
            offset += len(x)
    if a_size != b_size:
        return Mismatch(min(a_size, b_size), f"sizes differ ({a_size} vs {b_size} bytes)")
    return None


@dataclass
class RunResult:
    """One migration's outcome: QEMU's counters, the wire bytes, the verification."""

    spec: RunSpec
    status: str
    error: str | None = None
    wall_ms: float = 0.0  # from the migrate command to the destination's completion
    total_time_ms: int = 0
    downtime_ms: int = 0
    setup_time_ms: int = 0
    iterations: int = 0
    ram: dict[str, Any] = field(default_factory=dict)
    wire: dict[str, Any] = field(default_factory=dict)
    verified: bool = False
    mismatch: str | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)
    query_migrate: dict[str, Any] = field(default_factory=dict)  # the source's, at the end

    @property
    def ok(self) -> bool:
        return self.status == "completed" and self.verified

    @property
    def wire_bytes(self) -> int:
        return int(self.wire.get("up_bytes", 0))

    @property
    def page_bytes(self) -> int:
        """Bytes of non-zero page data sent (QEMU's ``normal-bytes``)."""
        return int(self.ram.get("normal-bytes", 0))

    @property
    def ratio(self) -> float:
        """Compression ratio: page bytes per wire byte (just under 1 without compression)."""
        return self.page_bytes / self.wire_bytes if self.wire_bytes else 0.0

    @property
    def ram_rate(self) -> float:
        """Guest RAM migrated per second of ``total-time`` (bytes/s)."""
        return self.spec.size / (self.total_time_ms / 1000) if self.total_time_ms else 0.0

    @property
    def wire_rate(self) -> float:
        """Wire bytes per second of ``total-time``."""
        return self.wire_bytes / (self.total_time_ms / 1000) if self.total_time_ms else 0.0

    @property
    def cpu_total(self) -> float:
        """CPU seconds of source + destination from ``migrate`` to the destination's end."""
        return round(sum(self.cpu_s.values()), 2)

    @property
    def cpu_src(self) -> float:
        return self.cpu_s.get("src", 0.0)

    @property
    def cpu_dst(self) -> float:
        return self.cpu_s.get("dst", 0.0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        """The inverse of ``as_dict`` (derived and unknown keys are ignored)."""
        names = {f.name for f in fields(cls)} - {"spec"}
        return cls(RunSpec(**data["spec"]), **{k: v for k, v in data.items() if k in names})

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["spec"]["level"] = self.spec.effective_level
        out.update(
            wire_bytes=self.wire_bytes,
            page_bytes=self.page_bytes,
            ratio=round(self.ratio, 4),
            ram_rate=round(self.ram_rate),
            wire_rate=round(self.wire_rate),
            cpu_total=self.cpu_total,
        )
        return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (Linux /proc), 0.0 when unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Process:
    """A started migemu or QEMU with its QMP client."""

    name: str
    proc: subprocess.Popen[bytes]
    qmp: QMPClient
    log: Path

    async def cmd(self, name: str, args: dict[str, Any] | None = None) -> Any:
        return await self.qmp.execute(name, args)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.qmp.disconnect(), STOP_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a dead peer must not stop the cleanup
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            end = time.monotonic() + STOP_TIMEOUT_S
            while self.proc.poll() is None and time.monotonic() < end:
                await asyncio.sleep(0.01)
            if self.proc.poll() is None:
                self.proc.kill()
        self.proc.wait()


def engine_argv(engine: str) -> list[str]:
    if engine == "qemu":
        qemu = shutil.which("qemu-system-x86_64")
        if qemu is None:
            raise RunnerError("qemu-system-x86_64 is not installed (needed for --vs-qemu)")
        return [qemu, "-nodefaults", "-display", "none"]
    return [sys.executable, "-m", "migemu"]


class Runner:
    """Scratch directory, image cache and the migrations; use as ``async with Runner() as r``."""

    def __init__(self, workdir: Path | None = None, keep: bool = False, proxy: bool = True) -> None:
        self._parent = workdir
        self.keep = keep
        self.proxy = proxy  # False: the source connects straight to the destination
        self.dir: Path | None = None
        self._images: dict[tuple[int, str, int], Path] = {}
        self._processes: list[Process] = []
        self._runs = 0

    async def __aenter__(self) -> Runner:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self, need_bytes: int = 0) -> None:
        parent = self._parent
        if parent is None and SHM.is_dir():
            free = shutil.disk_usage(SHM).free
            parent = SHM if free > max(need_bytes, 1 << 30) else None
        self.dir = Path(tempfile.mkdtemp(prefix="migemu-run-", dir=parent))

    async def close(self) -> None:
        await asyncio.gather(*(p.stop() for p in self._processes))
        self._processes.clear()
        if self.dir is not None and not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def image(self, size: int, kind: str, seed: int) -> Path:
        """The generated image for (size, kind, seed), written once per runner."""
        key = (size, kind, seed)
        if key not in self._images:
            assert self.dir is not None, "open() first"
            path = self.dir / f"image-{kind}-{size >> 20}M-{seed}.ram"
            write_image(str(path), size, seed=seed, mix=MIX_PRESETS[kind])
            self._images[key] = path
        return self._images[key]

    async def _start(
        self, name: str, spec: RunSpec, ram: Path, extra: Sequence[str] = ()
    ) -> Process:
        assert self.dir is not None
        sock = self.dir / f"{name}.sock"
        log = self.dir / f"{name}.log"
        mib = spec.size >> 20
        level = []
        if spec.method != "none" and spec.level is not None:
            level = ["-global", f"migration.multifd-{spec.method}-level={spec.level}"]
        argv = [
            *engine_argv(spec.engine),
            "-machine", "none", "-m", f"{mib}M",
            "-object", f"memory-backend-file,id=mem0,size={mib}M,mem-path={ram},share=on",
            "-machine", "memory-backend=mem0",
            "-qmp", f"unix:{sock},server=on,wait=off",
            *level,
            *extra,
        ]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        process = Process(name, proc, QMPClient(name), log)
        self._processes.append(process)
        end = time.monotonic() + START_TIMEOUT_S
        while True:
            if sock.exists():
                try:
                    await process.qmp.connect(str(sock))
                    return process
                except ConnectError:
                    pass
            if proc.poll() is not None or time.monotonic() > end:
                raise RunnerError(f"{spec.engine} ({name}) did not start: {process.log_tail()}")
            await asyncio.sleep(0.01)

    async def run(
        self, spec: RunSpec, progress: ProgressFn | None = None, timeout_s: float = RUN_TIMEOUT_S
    ) -> RunResult:
        """Migrate once as ``spec`` says; failures of the migration itself are in the result."""
        assert self.dir is not None, "open() first"
        self._runs += 1
        tag = f"run{self._runs}"
        image = self.image(spec.size, spec.image, spec.seed)
        src_ram = image
        if spec.dirty_rate:  # the guest writes to its RAM: keep the image for the next run
            src_ram = self.dir / f"{tag}-src.ram"
            shutil.copyfile(image, src_ram)
        dst_ram = self.dir / f"{tag}-dst.ram"
        guest = ["-migemu-guest", f"dirty,rate={spec.dirty_rate},seed={spec.seed}"]
        proxy: WireProxy | None = None
        try:
            src, dst = await asyncio.gather(  # both at once: interpreter start-up is slow
                self._start(f"{tag}-src", spec, src_ram, guest if spec.dirty_rate else ()),
                self._start(f"{tag}-dst", spec, dst_ram, ["-incoming", "defer"]),
            )
            await self._configure(spec, src, dst)
            await dst.cmd("migrate-incoming", {"uri": f"tcp:{LOOPBACK}:0"})
            port = (await dst.cmd("query-migrate"))["socket-address"][0]["port"]
            if self.proxy:
                proxy = WireProxy(LOOPBACK, int(port))
                await proxy.start()
            uri = proxy.uri if proxy is not None else f"tcp:{LOOPBACK}:{port}"
            return await self._migrate(
                spec, src, dst, src_ram, dst_ram, uri, proxy, progress, timeout_s
            )
        finally:
            if proxy is not None:
                await proxy.close()
            # one migration at a time: every process still listed belongs to this run
            await asyncio.gather(*(p.stop() for p in self._processes))
            self._processes.clear()
            for path in (dst_ram, src_ram if src_ram != image else None):
                if path is not None and path.exists() and not self.keep:
                    path.unlink()

    async def _configure(self, spec: RunSpec, src: Process, dst: Process) -> None:
        caps = [
            {"capability": "events", "state": True},
            {"capability": "multifd", "state": True},
        ]
        params = {
            "multifd-channels": spec.channels,
            "multifd-compression": spec.method,
            "max-bandwidth": spec.bandwidth,
        }
        for p in (src, dst):
            await p.cmd("migrate-set-capabilities", {"capabilities": caps})
            await p.cmd("migrate-set-parameters", params)

    async def _migrate(
        self,
        spec: RunSpec,
        src: Process,
        dst: Process,
        src_ram: Path,
        dst_ram: Path,
        uri: str,
        proxy: WireProxy | None,
        progress: ProgressFn | None,
        timeout_s: float,
    ) -> RunResult:
        result = RunResult(spec, status="setup")
        t0 = time.monotonic()
        end = t0 + timeout_s
        cpu0 = {"src": cpu_seconds(src.proc.pid), "dst": cpu_seconds(dst.proc.pid)}
        await src.cmd("migrate", {"uri": uri})
        while True:
            info = await src.cmd("query-migrate")
            if progress is not None:
                progress(info, time.monotonic() - t0)
            status = info.get("status", "none")
            if status in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > end:
                await src.cmd("migrate_cancel")
                result.status, result.error = "timeout", f"not finished after {timeout_s:.0f} s"
                return result
            await asyncio.sleep(POLL_S)
        result.status = status
        if status != "completed":
            result.error = info.get("error-desc") or f"{status}: {dst.log_tail()}"
            return result
        while True:  # the destination finishes loading after the source reports completed
            dst_status = "exited" if dst.proc.poll() is not None else None
            if dst_status is None:
                dst_status = (await dst.cmd("query-migrate")).get("status", "none")
            if dst_status == "completed":
                break
            if dst_status in ("failed", "exited") or time.monotonic() > end:
                result.status = "failed"
                result.error = f"destination {dst_status}: {dst.log_tail()}"
                return result
            await asyncio.sleep(POLL_S / 4)
        result.wall_ms = round((time.monotonic() - t0) * 1000, 1)
        # CPU used by the migration itself: interpreter start-up (~0.4 s for migemu) left out
        result.cpu_s = {
            "src": round(cpu_seconds(src.proc.pid) - cpu0["src"], 2),
            "dst": round(cpu_seconds(dst.proc.pid) - cpu0["dst"], 2),
        }
        if proxy is not None:
            await proxy.wait_idle(1.0)
            result.wire = proxy.summary()
        # QEMU 7.2 sets "completed" a moment before it fills in total-time and downtime
        while not info.get("total-time") and time.monotonic() < end:
            await asyncio.sleep(POLL_S / 4)
            info = await src.cmd("query-migrate")
        result.query_migrate = info
        result.ram = dict(info.get("ram", {}))
        result.total_time_ms = int(info.get("total-time", 0))
        result.downtime_ms = int(info.get("downtime", 0))
        result.setup_time_ms = int(info.get("setup-time", 0))
        result.iterations = int(result.ram.get("dirty-sync-count", 0))
        mismatch = await asyncio.to_thread(compare_ram, src_ram, dst_ram)
        result.verified = mismatch is None
        result.mismatch = None if mismatch is None else str(mismatch)
        return result


def interrupt_on_sigterm() -> None:
    """Make SIGTERM end a tool like Ctrl-C does, so the same cleanup runs."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def parse_size(text: str) -> int:
    """``256M``, ``1G``, ``512`` (MiB when no suffix) -> bytes."""
    units = {"M": 1 << 20, "G": 1 << 30, "K": 1 << 10}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t) << 20
    except ValueError as err:
        raise ValueError(f"cannot read size {text!r} (examples: 16M, 256M, 1G)") from err
