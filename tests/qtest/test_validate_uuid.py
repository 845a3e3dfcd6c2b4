"""validate-uuid end to end, migemu <-> QEMU 7.2 both ways.

With the capability on and ``-uuid`` given, the source sends its UUID in the stream's
configuration; a destination with another ``-uuid`` fails the load with QEMU's text and
exits 1. The text (on the destination's stderr: 7.2 keeps no error-desc on the incoming
side) must be the same whichever binary is the destination, and a matching UUID migrates.
"""

from __future__ import annotations

import pytest
from harness import QEMU, Cluster, make_image, migemu_cmd, qemu_cmd, sha256

pytestmark = pytest.mark.asyncio
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")

MIB = 16
U1 = "11111111-1111-1111-1111-111111111111"
U2 = "22222222-2222-2222-2222-222222222222"
EXPECTED = [  # what QEMU 7.2 prints (checked against it below)
    f"UUID received is {U1} and local is {U2}",
    "load of migration failed: Invalid argument",
]


def argv0(name: str) -> list[str]:
    return qemu_cmd() if name == "qemu" else migemu_cmd()


async def run(cluster: Cluster, tmp_path, src: str, dst: str, dst_uuid: str):
    image = tmp_path / "image.ram"
    make_image(image, MIB, seed=3)
    s = await cluster.start(
        "src", mem_mib=MIB, image=image, share=False, binary=argv0(src), extra=["-uuid", U1]
    )
    d = await cluster.start(
        "dst", mem_mib=MIB, incoming="defer", binary=argv0(dst), extra=["-uuid", dst_uuid]
    )
    caps = [{"capability": "validate-uuid", "state": True}]
    await s.cmd("migrate-set-capabilities", {"capabilities": caps})
    await s.cmd("migrate-set-parameters", {"downtime-limit": 1000000})
    sock = tmp_path / "mig.sock"
    await d.cmd("migrate-incoming", {"uri": f"unix:{sock}"})
    await s.cmd("migrate", {"uri": f"unix:{sock}"})
    return image, s, d


def uuid_lines(log: str) -> list[str]:
    """The destination's error lines, without the program name in front."""
    return [line.split(": ", 1)[1] for line in log.splitlines() if ": " in line]


@pytest.mark.parametrize(
    "src,dst", [pytest.param("qemu", "migemu", marks=needs_qemu), ("migemu", "migemu")]
)
async def test_mismatch_fails_the_destination(cluster, tmp_path, src, dst):
    _, _, d = await run(cluster, tmp_path, src, dst, U2)
    assert await d.wait_exit() == 1
    assert uuid_lines(cluster.log("dst")) == EXPECTED


@needs_qemu
async def test_qemu_destination_refuses_migemus_uuid_with_the_same_text(cluster, tmp_path):
    _, _, d = await run(cluster, tmp_path, "migemu", "qemu", U2)
    assert await d.wait_exit() == 1
    assert uuid_lines(cluster.log("dst")) == EXPECTED


@needs_qemu
@pytest.mark.parametrize("src,dst", [("migemu", "qemu"), ("qemu", "migemu")])
async def test_same_uuid_migrates(cluster, tmp_path, src, dst):
    image, s, d = await run(cluster, tmp_path, src, dst, U1)
    assert (await s.wait_status(["completed", "failed"]))["status"] == "completed"
    assert (await d.wait_status(["completed", "failed"]))["status"] == "completed"
    assert sha256(d.ram) == sha256(image)
