"""TLS migrations (x509, PSK) end to end, migemu <-> QEMU 7.2, and QEMU's error texts.

Interop: a migemu source to a QEMU destination and back, with PSK and x509, plain precopy and
multifd on 2 channels; the destination's RAM must be byte-identical. Differential: each bad
TLS setup runs once between two QEMUs and once between two migemus, and what a client sees
must be the same: the source's status and ``error-desc``, whether the destination exits or
keeps serving, and the TLS error it prints. The wire test puts a recording proxy between the
two and checks that no guest page crosses in plain text (and that it does without TLS).
Credentials are generated per test (tls_certs.py).
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from harness import QEMU, Cluster, make_image, qemu_cmd, setup_pair, sha256
from tls_certs import CLIENT_NAME, HOSTILE_NAME, psk_dir, x509_dir

pytestmark = pytest.mark.asyncio
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")

MIB = 16
DEADLINE_S = 30.0
TLS_LINE = re.compile(r"TLS|[Cc]ertificate|credentials|hostname|authz|AuthZ")


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "image.ram"
    make_image(path, MIB, seed=11)
    return path


def binary(kind: str) -> list[str] | None:
    return qemu_cmd() if kind == "qemu" else None


async def add_creds(vm: Any, qom_type: str, endpoint: str, creds_dir: Path, **props: Any) -> None:
    args = {"qom-type": qom_type, "id": "tls0", "endpoint": endpoint, "dir": str(creds_dir)}
    await vm.cmd("object-add", {**args, **props})


async def start_pair(
    cluster: Cluster, image: Path, src_kind: str, dst_kind: str, tag: str = ""
) -> tuple[Any, Any]:
    src = await cluster.start(f"src{tag}", mem_mib=MIB, image=image, share=False,
                              binary=binary(src_kind))  # fmt: skip
    dst = await cluster.start(f"dst{tag}", mem_mib=MIB, incoming="defer", binary=binary(dst_kind))
    return src, dst


async def setup_tls(
    src: Any, dst: Any, kind: str, creds: Path, *, hostname: str | None = None,
    authz: str | None = None, verify_client: bool = True,
) -> None:  # fmt: skip
    if kind == "anon":
        for vm, endpoint in ((src, "client"), (dst, "server")):
            await vm.cmd("object-add", {"qom-type": "tls-creds-anon", "id": "tls0",
                                        "endpoint": endpoint})  # fmt: skip
    elif kind == "psk":
        await add_creds(src, "tls-creds-psk", "client", creds)
        await add_creds(dst, "tls-creds-psk", "server", creds)
    else:
        await add_creds(src, "tls-creds-x509", "client", creds, **{"verify-peer": True})
        await add_creds(dst, "tls-creds-x509", "server", creds, **{"verify-peer": verify_client})
    await src.cmd("migrate-set-parameters", {"tls-creds": "tls0"})
    await dst.cmd("migrate-set-parameters", {"tls-creds": "tls0"})
    if hostname is not None:
        await src.cmd("migrate-set-parameters", {"tls-hostname": hostname})
    if authz is not None:
        await dst.cmd("object-add", {"qom-type": "authz-simple", "id": "authz0", "identity": authz})
        await dst.cmd("migrate-set-parameters", {"tls-authz": "authz0"})


# -- interop ------------------------------------------------------------------------------------


@needs_qemu
@pytest.mark.parametrize("multifd", [False, True], ids=["precopy", "multifd2"])
@pytest.mark.parametrize("kind", ["psk", "x509", "anon"])
@pytest.mark.parametrize("direction", ["migemu-to-qemu", "qemu-to-migemu"])
async def test_tls_interop_with_qemu(cluster, image, tmp_path, direction, kind, multifd):
    src_kind, dst_kind = direction.split("-to-")
    src, dst = await start_pair(cluster, image, src_kind, dst_kind)
    creds = psk_dir(tmp_path / "psk") if kind == "psk" else x509_dir(tmp_path / "x509")
    await setup_tls(src, dst, kind, creds)
    uri = await setup_pair(src, dst, multifd=multifd, channels=2)
    await src.cmd("migrate", {"uri": uri})
    info = await src.wait_status(["completed", "failed"])
    assert info["status"] == "completed", info
    await dst.wait_status(["completed"])
    assert sha256(dst.ram) == sha256(image)


async def test_tls_migemu_pair_multifd_x509_authz(cluster, image, tmp_path):
    src, dst = await start_pair(cluster, image, "migemu", "migemu")
    await setup_tls(src, dst, "x509", x509_dir(tmp_path / "x509"), authz=f"CN={CLIENT_NAME}")
    uri = await setup_pair(src, dst, multifd=True, channels=4, method="zstd")
    await src.cmd("migrate", {"uri": uri})
    info = await src.wait_status(["completed", "failed"])
    assert info["status"] == "completed", info
    await dst.wait_status(["completed"])
    assert sha256(dst.ram) == sha256(image)


# -- what crosses the wire ----------------------------------------------------------------------


class RecordingProxy:
    """127.0.0.1 TCP proxy that keeps every byte the source sends (one thread per pipe)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.captured: list[bytearray] = []
        self.socks: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.stopped = False
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.socks += [client, upstream]
            buf = bytearray()
            self.captured.append(buf)
            for a, b, keep in ((client, upstream, buf), (upstream, client, None)):
                t = threading.Thread(target=self._pipe, args=(a, b, keep), daemon=True)
                t.start()
                self.threads.append(t)

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket, keep: bytearray | None) -> None:
        try:
            while data := a.recv(1 << 16):
                if keep is not None:
                    keep += data
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_WR if s is b else socket.SHUT_RD)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopped = True
        self.listener.close()
        for s in self.socks:
            s.close()
        self.accepter.join(5)
        for t in self.threads:
            t.join(5)


def plain_samples(image: Path, n: int = 64) -> list[bytes]:
    """64-byte pieces of non-zero, non-repetitive guest pages."""
    data = image.read_bytes()
    out = []
    for page in range(0, len(data) // 4096, 7):
        chunk = data[page * 4096 + 1024 : page * 4096 + 1088]
        if len(set(chunk)) > 16:
            out.append(chunk)
        if len(out) == n:
            break
    assert len(out) >= 8
    return out


@pytest.mark.parametrize("tls", [True, False], ids=["tls-psk", "plain"])
@pytest.mark.parametrize("multifd", [False, True], ids=["precopy", "multifd2"])
async def test_no_plain_bytes_on_the_wire(cluster, image, tmp_path, tls, multifd):
    src, dst = await start_pair(cluster, image, "migemu", "migemu")
    if tls:
        await setup_tls(src, dst, "psk", psk_dir(tmp_path / "psk"))
    uri = await setup_pair(src, dst, multifd=multifd, channels=2)
    proxy = RecordingProxy(int(uri.rsplit(":", 1)[1]))
    try:
        await src.cmd("migrate", {"uri": f"tcp:127.0.0.1:{proxy.port}"})
        info = await src.wait_status(["completed", "failed"])
        assert info["status"] == "completed", info
        await dst.wait_status(["completed"])
    finally:
        proxy.close()
    assert sha256(dst.ram) == sha256(image)
    assert len(proxy.captured) == (3 if multifd else 1)
    wire = b"".join(proxy.captured)
    assert len(wire) > MIB << 19  # the RAM did cross
    seen = [s for s in plain_samples(image) if s in wire]
    if tls:
        assert seen == [] and b"QEVM" not in wire  # no page, not even the stream's magic
    else:
        assert len(seen) == len(plain_samples(image))  # the check can see plain pages


# -- bad settings: the same outcome as QEMU's -------------------------------------------------


async def outcome(src: Any, dst: Any, cluster: Cluster) -> dict[str, Any]:
    """What a client sees of a failing TLS migration, on both sides."""
    info = await src.wait_status(["completed", "failed"], deadline_s=DEADLINE_S)
    result: dict[str, Any] = {"src": info["status"], "error-desc": info.get("error-desc")}
    end = time.monotonic() + DEADLINE_S
    while True:
        lines = [
            line.split(": ", 1)[1]
            for line in cluster.log(dst.name).splitlines()
            if ": " in line and TLS_LINE.search(line) and "terminating on signal" not in line
        ]
        if dst.proc.poll() is not None:
            result["dst"] = f"exit {dst.proc.returncode}"
            break
        if lines:
            try:
                await dst.cmd("query-status")  # still serving QMP
            except Exception:  # it printed its error and is exiting
                result["dst"] = f"exit {await dst.wait_exit()}"
            else:
                result["dst"] = "serving"
            break
        if time.monotonic() > end:
            result["dst"] = "no report"
            break
        await asyncio.sleep(0.02)
    lines = [  # again: all of what it printed before it exited or answered
        line.split(": ", 1)[1]
        for line in cluster.log(dst.name).splitlines()
        if ": " in line and TLS_LINE.search(line) and "terminating on signal" not in line
    ]
    result["dst-tls-errors"] = sorted(set(lines))
    return result


SCENARIOS: dict[str, dict[str, Any]] = {
    "psk-mismatch": {"kind": "psk", "other_key": True},
    "psk-unknown-user": {"kind": "psk", "username": "nobody"},
    "src-no-creds-object": {"kind": "psk", "src_creds_id": "missing"},
    "src-server-endpoint": {"kind": "psk", "src_endpoint": "server"},
    # The source's text depends on whether its ClientHello reached the destination before
    # that closed the connection (reset: pull error) or not (EOF): timing, in QEMU too.
    "dst-client-endpoint": {
        "kind": "psk",
        "dst_endpoint": "client",
        "racy_src": (
            "TLS handshake failed: Error in the pull function.",
            "TLS handshake failed: Error in the push function.",
            "TLS handshake failed: The TLS connection was non-properly terminated.",
        ),
    },
    "x509-mismatch-host": {"kind": "x509", "hostname": "qemu.org", "cert_ip": "127.0.0.1"},
    "x509-unix-no-hostname": {"kind": "x509", "unix": True},
    "x509-hostile-client": {"kind": "x509", "client_cn": HOSTILE_NAME, "authz": True},
    "x509-reject-anon-client": {"kind": "x509", "client_cn": None},
    "x509-authz-missing": {"kind": "x509", "authz_id": "nosuch"},
    "x509-untrusted-server": {"kind": "x509", "other_ca": True},
    # The plain source's write fails with a reset or a broken pipe: timing again.
    "plain-source-to-tls-destination": {
        "kind": "psk",
        "src_plain": True,
        "racy_src": (
            "Unable to write to socket: Connection reset by peer",
            "Unable to write to socket: Broken pipe",
        ),
    },
    "tls-source-to-plain-destination": {"kind": "psk", "dst_plain": True},
}


async def run_scenario(
    cluster: Cluster, image: Path, tmp: Path, impl: str, name: str
) -> dict[str, Any]:
    sc = SCENARIOS[name]
    src, dst = await start_pair(cluster, image, impl, impl, tag=impl)
    base = tmp / f"{impl}-{name}"
    if sc["kind"] == "psk":
        src_dir = psk_dir(base / "src", key="009d5638c40fde0c", username=sc.get("username", "qemu"))
        dst_key = "10ffa6a2c42f0388" if sc.get("other_key") else "009d5638c40fde0c"
        dst_dir = psk_dir(base / "dst", key=dst_key)
        src_type = dst_type = "tls-creds-psk"
        src_props: dict[str, Any] = {}
        if "username" in sc:
            src_props["username"] = sc["username"]
        dst_props: dict[str, Any] = {}
    else:
        dst_dir = x509_dir(base / "dst", ip=sc.get("cert_ip", "127.0.0.1"),
                           client_cn=sc.get("client_cn", CLIENT_NAME))  # fmt: skip
        src_dir = dst_dir
        if sc.get("other_ca"):
            src_dir = x509_dir(base / "src")
        src_type = dst_type = "tls-creds-x509"
        src_props, dst_props = {"verify-peer": True}, {"verify-peer": True}
    src_ep, dst_ep = sc.get("src_endpoint", "client"), sc.get("dst_endpoint", "server")
    await src.cmd("object-add", {"qom-type": src_type, "id": "tls0", "endpoint": src_ep,
                                 "dir": str(src_dir), **src_props})  # fmt: skip
    await dst.cmd("object-add", {"qom-type": dst_type, "id": "tls0", "endpoint": dst_ep,
                                 "dir": str(dst_dir), **dst_props})  # fmt: skip
    if not sc.get("src_plain"):
        await src.cmd("migrate-set-parameters", {"tls-creds": sc.get("src_creds_id", "tls0")})
    if not sc.get("dst_plain"):
        await dst.cmd("migrate-set-parameters", {"tls-creds": "tls0"})
    if "hostname" in sc:
        await src.cmd("migrate-set-parameters", {"tls-hostname": sc["hostname"]})
    if sc.get("authz"):
        await dst.cmd("object-add", {"qom-type": "authz-simple", "id": "authz0",
                                     "identity": f"CN={CLIENT_NAME}"})  # fmt: skip
        await dst.cmd("migrate-set-parameters", {"tls-authz": "authz0"})
    if "authz_id" in sc:
        await dst.cmd("migrate-set-parameters", {"tls-authz": sc["authz_id"]})
    if sc.get("unix"):
        uri = f"unix:{tmp}/{impl}-{name}.mig"
        await dst.cmd("migrate-incoming", {"uri": uri})
    else:
        await dst.cmd("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        port = (await dst.cmd("query-migrate"))["socket-address"][0]["port"]
        uri = f"tcp:127.0.0.1:{port}"
    await src.cmd("migrate", {"uri": uri})
    return await outcome(src, dst, cluster)


@needs_qemu
@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_tls_failure_same_as_qemu(cluster, image, tmp_path, name):
    expected = await run_scenario(cluster, image, tmp_path, "qemu", name)
    got = await run_scenario(cluster, image, tmp_path, "migemu", name)
    assert expected["src"] == "failed"
    racy = SCENARIOS[name].get("racy_src")
    if racy:
        assert expected["error-desc"] in racy and got["error-desc"] in racy
        expected["error-desc"] = got["error-desc"]
    assert got == expected


# -- objects: the same replies as QEMU's --------------------------------------------------------


def object_requests(tmp: Path) -> list[tuple[str, dict[str, Any]]]:
    x509 = x509_dir(tmp / "x509", client_cn=None)
    psk = psk_dir(tmp / "psk")
    empty = tmp / "empty"
    empty.mkdir(exist_ok=True)
    return [
        ("object-add", {"qom-type": "tls-creds-x509", "id": "a", "dir": str(tmp / "nonexistent"),
                        "endpoint": "server"}),
        ("object-add", {"qom-type": "tls-creds-x509", "id": "b", "dir": str(empty)}),
        ("object-add", {"qom-type": "tls-creds-x509", "id": "c", "endpoint": "client"}),
        ("object-add", {"qom-type": "tls-creds-x509", "id": "d", "dir": str(x509),
                        "endpoint": "client"}),
        ("object-add", {"qom-type": "tls-creds-x509", "id": "d", "dir": str(x509),
                        "endpoint": "server"}),
        ("object-add", {"qom-type": "tls-creds-x509", "id": "e", "dir": str(x509),
                        "endpoint": "sideways"}),
        ("object-add", {"qom-type": "tls-creds-x509", "id": "f", "dir": str(x509), "bogus": 1}),
        ("object-add", {"qom-type": "tls-creds-psk", "id": "g", "dir": str(psk),
                        "endpoint": "server", "username": "qemu"}),
        ("object-add", {"qom-type": "tls-creds-psk", "id": "h", "dir": str(psk),
                        "username": "nobody"}),
        ("object-add", {"qom-type": "tls-creds-psk", "id": "i", "dir": str(empty),
                        "endpoint": "server"}),
        ("object-add", {"qom-type": "tls-creds-psk", "id": "j", "dir": str(psk)}),
        ("object-add", {"qom-type": "authz-simple", "id": "k"}),
        ("object-add", {"qom-type": "authz-simple", "id": "k", "identity": "CN=x"}),
        ("object-add", {"qom-type": "no-such-type", "id": "l"}),
        ("object-del", {"id": "j"}),
        ("object-del", {"id": "j"}),
        ("object-del", {"id": "mem0"}),
        ("object-add", {"qom-type": "tls-creds-psk", "id": "mem0", "dir": str(psk)}),
    ]  # fmt: skip


async def replies(vm: Any, requests: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    from qemu.qmp import ExecuteError

    out: list[Any] = []
    for name, args in requests:
        try:
            out.append(await vm.cmd(name, args))
        except ExecuteError as err:
            out.append({"class": err.error_class, "desc": str(err)})
    return out


@needs_qemu
async def test_object_add_del_same_as_qemu(cluster, tmp_path):
    requests = object_requests(tmp_path)
    qemu = await cluster.start("q", binary=qemu_cmd())
    migemu = await cluster.start("m")
    expected, got = await replies(qemu, requests), await replies(migemu, requests)
    assert got == expected


@needs_qemu
@pytest.mark.parametrize(
    "spec",
    [
        "tls-creds-x509,id=t0,dir=NONEXISTENT,endpoint=server",
        "tls-creds-psk,id=t0,dir=PSK,endpoint=server,username=qemu",
        "tls-creds-psk,id=t0,dir=PSK,username=nobody",
        "tls-creds-x509,id=t0,dir=X509,endpoint=client,bogus=1",
        "authz-simple,id=a0",
    ],
)
async def test_object_cmdline_same_as_qemu(tmp_path, spec):
    import subprocess
    import sys

    spec = (
        spec.replace("NONEXISTENT", str(tmp_path / "none"))
        .replace("PSK", str(psk_dir(tmp_path / "psk")))
        .replace("X509", str(x509_dir(tmp_path / "x509")))
    )
    outs = []
    for argv in (qemu_cmd(), [sys.executable, "-m", "migemu"]):
        proc = subprocess.run(
            [*argv, "-machine", "none", "-object", spec], capture_output=True, timeout=30
        )
        outs.append((proc.returncode, proc.stderr.decode().split(": ", 1)[1]))
    assert outs[1] == outs[0]


# -- faults: a failed handshake fails the migration, and everything keeps serving -------------


async def test_handshake_failure_then_plain_migration(cluster, image, tmp_path):
    src, dst = await start_pair(cluster, image, "migemu", "migemu")
    await add_creds(src, "tls-creds-psk", "client", psk_dir(tmp_path / "a", key="00aa" * 8))
    await add_creds(dst, "tls-creds-psk", "server", psk_dir(tmp_path / "b", key="00bb" * 8))
    for vm in (src, dst):
        await vm.cmd("migrate-set-parameters", {"tls-creds": "tls0"})
    uri = await setup_pair(src, dst, multifd=True, channels=2)
    await src.cmd("migrate", {"uri": uri})
    info = await src.wait_status(["completed", "failed"])
    assert info == {
        "status": "failed",
        "error-desc": "TLS handshake failed: The TLS connection was non-properly terminated.",
    }
    assert (await src.cmd("query-status"))["status"] == "running"
    assert "socket-address" in await dst.cmd("query-migrate")  # still listening
    # The same source, TLS off, to a plain destination: a normal migration.
    plain = await cluster.start("plain", mem_mib=MIB, incoming="defer")
    await src.cmd("migrate-set-parameters", {"tls-creds": ""})
    uri = await setup_pair(src, plain, multifd=True, channels=2)
    await src.cmd("migrate", {"uri": uri})
    assert (await src.wait_status(["completed", "failed"]))["status"] == "completed"
    await plain.wait_status(["completed"])
    assert sha256(plain.ram) == sha256(image)


@pytest.mark.parametrize("dst_kind", ["migemu", pytest.param("qemu", marks=needs_qemu)])
async def test_destination_serves_after_bad_handshake(cluster, image, tmp_path, dst_kind):
    """A connection that fails its handshake is dropped; the destination keeps listening and
    takes the next, good one (migration_tls_incoming_handshake)."""
    src, dst = await start_pair(cluster, image, "migemu", dst_kind)
    good = psk_dir(tmp_path / "good")
    await add_creds(src, "tls-creds-psk", "client", psk_dir(tmp_path / "bad"))
    await add_creds(dst, "tls-creds-psk", "server", good)
    for vm in (src, dst):
        await vm.cmd("migrate-set-parameters", {"tls-creds": "tls0"})
    uri = await setup_pair(src, dst, multifd=False)
    await src.cmd("migrate", {"uri": uri})
    assert (await src.wait_status(["completed", "failed"]))["status"] == "failed"
    await src.cmd("object-del", {"id": "tls0"})
    await add_creds(src, "tls-creds-psk", "client", good)
    await src.cmd("migrate", {"uri": uri})
    info = await src.wait_status(["completed", "failed"])
    assert info["status"] == "completed", info
    await dst.wait_status(["completed"])
    assert sha256(dst.ram) == sha256(image)


async def test_cancel_unblocks_a_stuck_handshake(cluster, image, tmp_path):
    """A destination that accepts and never answers: the source waits in its TLS handshake
    until migrate_cancel, which must end it (the socket is shut down under the read)."""
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        try:
            accepted.append(silent.accept()[0])
        except OSError:
            pass
        done.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        src = await cluster.start("src", mem_mib=MIB, image=image, share=False)
        await add_creds(src, "tls-creds-psk", "client", psk_dir(tmp_path / "psk"))
        await src.cmd("migrate-set-parameters", {"tls-creds": "tls0"})
        await src.cmd("migrate", {"uri": f"tcp:127.0.0.1:{silent.getsockname()[1]}"})
        end = time.monotonic() + DEADLINE_S
        while not done.is_set():  # connected: the ClientHello is out, no answer comes
            assert time.monotonic() < end
            await asyncio.sleep(0.01)
        assert (await src.cmd("query-migrate"))["status"] == "setup"
        await src.cmd("migrate_cancel")
        info = await src.wait_status(["cancelled", "failed", "completed"])
        assert info["status"] == "cancelled"
        assert (await src.cmd("query-status"))["status"] == "running"
    finally:
        silent.close()
        for s in accepted:
            s.close()
        thread.join(5)


async def test_anon_creds_migemu_pair(cluster, image, tmp_path):
    src, dst = await start_pair(cluster, image, "migemu", "migemu")
    await src.cmd("object-add", {"qom-type": "tls-creds-anon", "id": "tls0", "endpoint": "client"})
    await dst.cmd("object-add", {"qom-type": "tls-creds-anon", "id": "tls0", "endpoint": "server"})
    for vm in (src, dst):
        await vm.cmd("migrate-set-parameters", {"tls-creds": "tls0"})
    uri = await setup_pair(src, dst, multifd=True, channels=2)
    await src.cmd("migrate", {"uri": uri})
    info = await src.wait_status(["completed", "failed"])
    assert info["status"] == "completed", info
    await dst.wait_status(["completed"])
    assert sha256(dst.ram) == sha256(image)
