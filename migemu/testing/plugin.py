"""The pytest plugin of ``migemu.testing`` (entry point ``pytest11``: ``migemu``).

Test-library layer. Fixtures (all function-scoped): ``migemu_pair`` (a started
``MigrationPair``; options by indirect parametrization with a dict or the ``migemu_pair``
marker), ``migemu_vm`` (a factory: ``await migemu_vm(memory="256M")``), and the knobs they
read, each overridable by direct parametrization: ``migemu_profile`` ("7.2"),
``migemu_method`` (None: no multifd; "none"/"zlib"/"zstd"), ``migemu_transport``
("unix"/"tcp") and ``migemu_backend`` ("migemu", or "qemu" with ``--migemu-against=qemu``
or the ``migemu_against`` marker). Under real QEMU a test that uses a migemu-only feature is
skipped with the reason. The async fixtures are pytest-asyncio fixtures, so they work in
strict and auto mode alike.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from migemu.testing.errors import UnsupportedByQEMU
from migemu.testing.pair import MigrationPair
from migemu.testing.vm import BACKENDS, QEMU_BINARY, VM

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - exercised only without pytest-asyncio
    pytest_asyncio = None  # type: ignore[assignment]

VMFactory = Callable[..., Awaitable[VM]]
NEEDS_ASYNCIO = (
    "migemu's fixtures are async and need pytest-asyncio: pip install 'pytest-asyncio>=0.23'"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("migemu", "migemu test library")
    group.addoption(
        "--migemu-against",
        choices=BACKENDS,
        default="migemu",
        dest="migemu_against",
        help="run migemu_vm/migemu_pair tests against migemu (default) or real QEMU 7.2"
        f" ({QEMU_BINARY} on PATH); tests using migemu-only features are skipped",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "migemu_only(reason=None): the test uses migemu-only features; "
        "skipped under --migemu-against=qemu",
    )
    config.addinivalue_line(
        "markers",
        "migemu_against(*backends): run the test once per backend ('migemu', 'qemu'), "
        "whatever --migemu-against says",
    )
    config.addinivalue_line(
        "markers", "migemu_pair(**options): MigrationPair options for the migemu_pair fixture"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("migemu_against")
    if marker is None or "migemu_backend" not in metafunc.fixturenames:
        return
    backends = marker.args or BACKENDS
    for backend in backends:
        if backend not in BACKENDS:
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: migemu_against({backend!r}):"
                f" backends are {', '.join(BACKENDS)}"
            )
    metafunc.parametrize("migemu_backend", backends, indirect=True, ids=list(backends))


def _skip_unsupported(err: UnsupportedByQEMU) -> None:
    pytest.skip(f"migemu-only feature, not run against real QEMU: {err}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    except UnsupportedByQEMU as err:
        _skip_unsupported(err)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    except UnsupportedByQEMU as err:
        _skip_unsupported(err)


@pytest.fixture
def migemu_backend(request: pytest.FixtureRequest) -> str:
    """The backend: "migemu" or "qemu" (real QEMU 7.2 from PATH)."""
    backend: str = getattr(request, "param", None) or request.config.getoption("migemu_against")
    if backend == "qemu":
        marker = request.node.get_closest_marker("migemu_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else None)
            pytest.skip(f"migemu-only test, not run against real QEMU: {reason or 'marked'}")
        if shutil.which(QEMU_BINARY) is None:
            pytest.skip(f"--migemu-against=qemu: {QEMU_BINARY} not found on PATH")
    return backend


@pytest.fixture
def migemu_profile() -> str:
    """The QEMU version migemu emulates (only "7.2" exists)."""
    return "7.2"


@pytest.fixture
def migemu_method() -> str | None:
    """The multifd compression ``migemu_pair`` migrates with (None: multifd off)."""
    return None


@pytest.fixture
def migemu_transport() -> str:
    """How the pair's migration stream travels: "unix" socket or loopback "tcp"."""
    return "unix"


def _async_fixture(func: Callable[..., Any]) -> Any:
    if pytest_asyncio is not None:
        return pytest_asyncio.fixture(func)

    def missing(request: pytest.FixtureRequest) -> None:
        raise pytest.UsageError(NEEDS_ASYNCIO)

    missing.__name__ = func.__name__
    missing.__doc__ = func.__doc__
    return pytest.fixture(missing)


@_async_fixture
async def migemu_vm(migemu_backend: str, migemu_profile: str) -> AsyncIterator[VMFactory]:
    """A factory: ``vm = await migemu_vm(memory="256M", guest=..., faults=..., args=...)``
    returns a started ``VM``; every VM it made is closed after the test."""
    vms: list[VM] = []

    async def factory(name: str | None = None, /, **options: Any) -> VM:
        options.setdefault("profile", migemu_profile)
        options.setdefault("backend", migemu_backend)
        vm = VM(name or f"vm{len(vms)}", **options)
        vms.append(vm)
        await vm.start()
        return vm

    try:
        yield factory
    finally:
        for vm in reversed(vms):
            await vm.close()


@_async_fixture
async def migemu_pair(
    request: pytest.FixtureRequest,
    migemu_backend: str,
    migemu_profile: str,
    migemu_method: str | None,
    migemu_transport: str,
) -> AsyncIterator[MigrationPair]:
    """A started ``MigrationPair`` (source with a realistic RAM image, destination waiting
    with ``-incoming defer``); options: ``@pytest.mark.migemu_pair(memory="256M", ...)`` or
    ``@pytest.mark.parametrize("migemu_pair", [{...}], indirect=True)``."""
    options: dict[str, Any] = {}
    marker = request.node.get_closest_marker("migemu_pair")
    if marker is not None:
        options.update(marker.kwargs)
    options.update(getattr(request, "param", None) or {})
    options.setdefault("profile", migemu_profile)
    options.setdefault("backend", migemu_backend)
    options.setdefault("method", migemu_method)
    options.setdefault("transport", migemu_transport)
    pair = MigrationPair(**options)
    try:
        await pair.start()
        yield pair
    finally:
        await pair.close()
