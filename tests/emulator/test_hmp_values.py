"""HMP value parsing: the string-visitor rules, with texts observed from QEMU 7.2's
`human-monitor-command migrate_set_parameter …` (see the i_hmp transcript)."""

from __future__ import annotations

import pytest

from migemu.emulator.hmp.console import parse_parameter
from migemu.emulator.hmp.values import parse_c_uint64, parse_size
from migemu.qapi.errors import QMPError


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("10", 10), ("0x10", 16), ("010", 8), ("-1", 2**64 - 1), ("foo", None), ("", None)],
)
def test_c_uint64(text, value):
    assert parse_c_uint64(text) == value


@pytest.mark.parametrize(
    ("text", "shift", "value"),
    [
        ("1k", 0, 1024),
        ("16M", 0, 16 << 20),
        ("16", 20, 16 << 20),
        ("0x10", 20, 16 << 20),
        ("1.5", 0, None),
        ("1.5k", 0, 1536),
        ("1x", 0, None),
        ("-5", 0, None),
        ("1T", 20, 1 << 40),
    ],
)
def test_size(text, shift, value):
    assert parse_size(text, shift) == value


@pytest.mark.parametrize(
    ("name", "text", "desc"),
    [
        ("multifd-channels", "256", "Parameter 'multifd-channels' expects uint8_t"),
        ("multifd-channels", "-1", "Parameter 'multifd-channels' expects uint8_t"),
        ("multifd-channels", "foo", "Parameter 'multifd-channels' expects uint64"),
        ("x-checkpoint-delay", "5000000000", "Parameter 'x-checkpoint-delay' expects uint32_t"),
        (
            "cpu-throttle-tailslow",
            "maybe",
            "Parameter 'cpu-throttle-tailslow' expects 'on' or 'off'",
        ),
        ("max-bandwidth", "1x", "Invalid size 1x"),
        ("max-bandwidth", "16E", "Invalid size 16E"),
        ("downtime-limit", "16E", "Value '16E' is out of range for parameter 'downtime-limit'"),
        ("foo", "1", "invalid parameter value: foo"),
        (
            "block-bitmap-mapping",
            "x",
            "The block-bitmap-mapping parameter can only be set through QMP",
        ),
        (
            "downtime-limit",
            "-5",
            "Parameter 'downtime-limit' expects a non-negative number below 2^64\n"
            "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
            "and exabytes, respectively.",
        ),
    ],
)
def test_parameter_errors(name, text, desc):
    with pytest.raises(QMPError) as info:
        parse_parameter(name, text)
    assert info.value.desc == desc


def test_parameter_values():
    assert parse_parameter("max-bandwidth", "16M") == 16 << 20
    assert parse_parameter("max-bandwidth", "16") == 16 << 20
    assert parse_parameter("downtime-limit", "1k") == 1024
    assert parse_parameter("compress-wait-thread", "y") is True
    assert parse_parameter("tls-creds", "abc") == "abc"
