"""The HMP line editor, sans-IO: bytes in, echo out, lines completed.

Every expected echo here was observed from QEMU 7.2.22 on an HMP unix socket (the bytes a
client receives, before the monitor turns ``\\n`` into CRLF).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migemu.emulator.hmp.readline import MAX_CMDS, ReadLine

L, R, K = "\x1b[D", "\x1b[C", "\x1b[K"


def typed(rl: ReadLine, data: bytes) -> tuple[str, list[str]]:
    lines = rl.feed(data)
    return rl.take_output(), lines


def test_each_character_redraws_the_line():
    rl = ReadLine()
    assert typed(rl, b"a") == ("a" + K, [])
    assert typed(rl, b"b") == (L + "ab" + K, [])
    assert typed(rl, b"c") == (L * 2 + "abc" + K, [])
    assert typed(rl, b"\x7f") == (L * 3 + "ab" + K, [])
    assert typed(rl, b"\r") == ("\n", ["ab"])


def test_enter_on_lf_and_cr_and_empty_line():
    rl = ReadLine()
    assert typed(rl, b"x\n") == ("x" + K + "\n", ["x"])
    assert typed(rl, b"\r") == ("\n", [""])
    assert rl.history == ["x"]  # empty lines are not remembered


def test_cursor_movement_keys():
    rl = ReadLine()
    rl.feed(b"info status")
    rl.take_output()
    assert typed(rl, b"\x01") == (L * 11, [])  # ^A
    assert typed(rl, b"\x05") == (R * 11, [])  # ^E
    assert typed(rl, b"\x1b[D") == (L, [])
    assert typed(rl, b"\x1b[C") == (R, [])
    assert typed(rl, b"\x1b[1~") == (L * 11, [])  # Home
    assert typed(rl, b"\x1b[3~") == ("nfo status" + K + L * 10, [])  # Delete
    assert typed(rl, b"\x04") == ("fo status" + K + L * 9, [])  # ^D deletes too
    assert typed(rl, b"\x1b[4~") == (R * 9, [])  # End
    assert typed(rl, b"\x1bOH") == (L * 9, [])  # SS3 Home
    assert typed(rl, b"\x1bOF") == (R * 9, [])  # SS3 End


def test_unknown_keys_print_nothing():
    rl = ReadLine()
    rl.feed(b"ab")
    rl.take_output()
    for key in (b"\x15", b"\x0b", b"\x1bx", b"\x1b[Z", b"\x02"):
        assert typed(rl, key) == ("", [])
    assert typed(rl, b"\x9bD") == (L, [])  # 0x9b is an 8-bit CSI


def test_ctrl_w_deletes_the_word_before_the_cursor():
    rl = ReadLine()
    rl.feed(b"info statusx")
    rl.take_output()
    assert typed(rl, b"\x17") == (L * 12 + "info " + K, [])


def test_history_up_down_and_duplicates():
    rl = ReadLine()
    rl.feed(b"ab\rinfo status\rinfo status\n")
    rl.take_output()
    assert rl.history == ["ab", "info status"]
    assert typed(rl, b"\x1b[A") == ("info status" + K, [])
    assert typed(rl, b"\x1b[A") == (L * 11 + "ab" + K, [])
    assert typed(rl, b"\x1b[A") == ("", [])  # the oldest entry: nothing more
    assert typed(rl, b"\x1b[B") == (L * 2 + "info status" + K, [])
    assert typed(rl, b"\x1b[B") == (L * 11 + K, [])  # past the newest: an empty line
    assert typed(rl, b"\x10") == ("", [])  # ^P: not a history key in 7.2
    assert typed(rl, b"\x1b[A") == ("info status" + K, [])
    rl.feed(b"\r")
    assert rl.history == ["ab", "info status"]


def test_history_keeps_64_entries():
    rl = ReadLine()
    for i in range(MAX_CMDS + 3):
        rl.feed(f"c{i}\r".encode())
    assert len(rl.history) == MAX_CMDS
    assert rl.history[0] == "c3"
    rl.feed(b"c10\r")
    assert rl.history[-1] == "c10" and len(rl.history) == MAX_CMDS


def test_prompt_and_clear_screen():
    rl = ReadLine()
    rl.show_prompt()
    assert rl.take_output() == "(qemu) "
    rl.feed(b"ab\x0c")
    assert rl.take_output() == "a" + K + L + "ab" + K + "\x1b[2J\x1b[1;1H(qemu) ab" + K


def _finder(text: str) -> tuple[list[str], int]:
    names = [
        "migrate",
        "migrate_cancel",
        "migrate_continue",
        "migrate_incoming",
        "migrate_pause",
        "migrate_recover",
        "migrate_set_capability",
        "migrate_set_parameter",
        "migrate_start_postcopy",
        "info",
    ]
    return [n for n in names if n.startswith(text)], len(text)


def test_completion_lists_candidates_in_columns():
    rl = ReadLine(_finder)
    rl.feed(b"mig")
    rl.take_output()
    listing = (
        "\nmigrate                 migrate_cancel          migrate_continue        \n"
        "migrate_incoming        migrate_pause           migrate_recover         \n"
        "migrate_set_capability  migrate_set_parameter   migrate_start_postcopy  \n"
        "(qemu) migrate" + K
    )
    assert typed(rl, b"\t") == (listing, [])
    assert typed(rl, b"\t") == (listing, [])


def test_completion_of_a_single_candidate_adds_a_space():
    rl = ReadLine(_finder)
    assert typed(rl, b"inf\t") == (
        "i" + K + L + "in" + K + L * 2 + "inf" + K + L * 3 + "info " + K,
        [],
    )


@given(st.binary(max_size=200))
def test_any_bytes_keep_the_editor_consistent(data: bytes):
    rl = ReadLine(_finder)
    lines = rl.feed(data)
    rl.take_output()
    assert 0 <= rl.index <= len(rl.buf)
    assert all("\r" not in line and "\n" not in line for line in lines)
    assert len(rl.history) <= MAX_CMDS


@pytest.mark.parametrize("key", [b"\x1b[A", b"\x1b[F"])
def test_up_keys(key: bytes):
    rl = ReadLine()
    rl.feed(b"x\r")
    assert rl.feed(key) == [] and rl.buf == "x"
