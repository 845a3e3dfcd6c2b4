"""The HMP console: command table, argument parsing, output text (emulator layer).

HMP is a client of the QMP command handlers (through ``Dispatcher.execute``), never a second
implementation: each command here parses its text arguments the way QEMU 7.2 does, calls the
QMP command, and prints the result in QEMU's format. ``execute(line)`` returns the text QEMU
would print, with CRLF line ends (what ``human-monitor-command`` returns and what a readline
monitor writes). Errors print as ``Error: <desc>``; argument errors as QEMU's monitor does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from migemu.emulator.hmp import info
from migemu.emulator.hmp.qemu_help import HELP_TEXT, INFO_HELP_TEXT
from migemu.emulator.hmp.values import (
    FALSE_WORDS,
    TRUE_WORDS,
    parse_bool,
    parse_size,
    parse_size_param,
    parse_uint,
)
from migemu.emulator.migration.state import MigrationStatus
from migemu.qapi.errors import QMPError

if TYPE_CHECKING:
    from migemu.emulator.machine import Machine


class ArgError(Exception):
    """A command line that does not fit the command's argument spec."""


@dataclass(frozen=True)
class HMPCommand:
    name: str  # "cont|c": the first alias is the name
    params: str  # as shown by help
    args: tuple[tuple[str, str], ...]  # (name, kind): "s" word, "b" on/off, "-d" flag
    help: str
    run: Callable[[HMPConsole, dict[str, Any]], str]
    needs: str | None = None  # the QMP command it stands on; hidden while that is missing

    @property
    def names(self) -> list[str]:
        return self.name.split("|")

    def help_line(self, prefix: str = "") -> str:
        return f"{prefix}{self.name} {self.params} -- {self.help}\n"


# migrate_set_parameter: how each parameter's text is read (QEMU 7.2 hmp_migrate_set_parameter).
_UINT8 = (
    "compress-level compress-threads decompress-threads throttle-trigger-threshold "
    "cpu-throttle-initial cpu-throttle-increment max-cpu-throttle multifd-channels "
    "multifd-zlib-level multifd-zstd-level"
).split()
_SIZE = (
    "announce-initial announce-max announce-rounds announce-step downtime-limit "
    "xbzrle-cache-size max-postcopy-bandwidth"
).split()
_BOOL = "compress-wait-thread cpu-throttle-tailslow block-incremental".split()
_STR = "tls-creds tls-hostname tls-authz".split()


def parse_parameter(name: str, text: str) -> Any:
    if name in _UINT8:
        return parse_uint(name, text, 8)
    if name == "x-checkpoint-delay":
        return parse_uint(name, text, 32)
    if name in _SIZE:
        return parse_size_param(name, text)
    if name in _BOOL:
        return parse_bool(name, text)
    if name in _STR:
        return text
    if name == "max-bandwidth":
        value = parse_size(text, default_shift=20)  # the one size whose unit is MiB
        if value is None or value >= 1 << 63:
            raise QMPError(f"Invalid size {text}")
        return value
    if name == "multifd-compression":
        return text  # the QMP enum check gives QEMU's "does not accept value" text
    if name == "block-bitmap-mapping":
        raise QMPError("The block-bitmap-mapping parameter can only be set through QMP")
    raise QMPError(f"invalid parameter value: {name}")


def _set_parameter(con: HMPConsole, a: dict[str, Any]) -> str:
    value = parse_parameter(a["parameter"], a["value"])
    con.qmp("migrate-set-parameters", {a["parameter"]: value})
    return ""


def _set_capability(con: HMPConsole, a: dict[str, Any]) -> str:
    name = a["capability"]
    if name not in {c["capability"] for c in con.qmp("query-migrate-capabilities")}:
        raise QMPError(f"invalid parameter value: {name}")
    con.qmp(
        "migrate-set-capabilities", {"capabilities": [{"capability": name, "state": a["state"]}]}
    )
    return ""


def _migrate(con: HMPConsole, a: dict[str, Any]) -> str:
    args: dict[str, Any] = {"uri": a["uri"], "detach": True}
    for flag, member in (("b", "blk"), ("i", "inc"), ("r", "resume")):
        if a.get(flag):
            args[member] = True
    con.qmp("migrate", args)
    if a.get("d"):
        return ""
    if not con.interactive:
        return SYNC_MIGRATE_REFUSED
    con._wait = True
    return ""


def _continue(con: HMPConsole, a: dict[str, Any]) -> str:
    if a["state"] not in MIGRATION_STATUSES:
        raise QMPError(f"invalid parameter value: {a['state']}")
    con.qmp("migrate-continue", {"state": a["state"]})
    return ""


def _quit(con: HMPConsole, a: dict[str, Any]) -> str:
    con._suspend = True
    con.qmp("quit")
    return ""


def _simple(qmp_name: str, arg: str | None = None) -> Callable[[HMPConsole, dict[str, Any]], str]:
    def run(con: HMPConsole, a: dict[str, Any]) -> str:
        con.qmp(qmp_name, {arg: a[arg]} if arg else None)
        return ""

    return run


def _help(con: HMPConsole, a: dict[str, Any]) -> str:
    return con.help_text(a.get("name"))


def _info(con: HMPConsole, a: dict[str, Any]) -> str:
    raise AssertionError("info is dispatched by HMPConsole.execute")  # pragma: no cover


COMMANDS: tuple[HMPCommand, ...] = (
    HMPCommand("cont|c", "", (), "resume emulation", _simple("cont")),
    HMPCommand("help|?", "[cmd]", (("name", "S?"),), "show the help", _help),
    HMPCommand(
        "info", "[subcommand]", (), "show various information about the system state", _info
    ),
    HMPCommand(
        "migrate",
        "[-d] [-b] [-i] [-r] uri",
        (("d", "-d"), ("b", "-b"), ("i", "-i"), ("r", "-r"), ("uri", "s")),
        "migrate to URI (using -d to not wait for completion)",
        _migrate,
        needs="migrate",
    ),
    HMPCommand(
        "migrate_cancel",
        "",
        (),
        "cancel the current VM migration",
        _simple("migrate_cancel"),
        needs="migrate_cancel",
    ),
    HMPCommand(
        "migrate_continue",
        "state",
        (("state", "s"),),
        "Continue migration from the given paused state",
        _continue,
        needs="migrate-continue",
    ),
    HMPCommand(
        "migrate_incoming",
        "uri",
        (("uri", "s"),),
        "Continue an incoming migration from an -incoming defer",
        _simple("migrate-incoming", "uri"),
        needs="migrate-incoming",
    ),
    HMPCommand(
        "migrate_pause",
        "",
        (),
        "Pause an ongoing migration (postcopy-only)",
        _simple("migrate-pause"),
        needs="migrate-pause",
    ),
    HMPCommand(
        "migrate_recover",
        "uri",
        (("uri", "s"),),
        "Continue a paused incoming postcopy migration",
        _simple("migrate-recover", "uri"),
        needs="migrate-recover",
    ),
    HMPCommand(
        "migrate_start_postcopy",
        "",
        (),
        "Followup to a migration command to switch the migration to postcopy mode. The "
        "postcopy-ram capability must be set on both source and destination before the "
        "original migration command .",
        _simple("migrate-start-postcopy"),
        needs="migrate-start-postcopy",
    ),
    HMPCommand(
        "migrate_set_capability",
        "capability state",
        (("capability", "s"), ("state", "b")),
        "Enable/Disable the usage of a capability for migration",
        _set_capability,
    ),
    HMPCommand(
        "migrate_set_parameter",
        "parameter value",
        (("parameter", "s"), ("value", "s")),
        "Set the parameter for migration",
        _set_parameter,
    ),
    HMPCommand("quit|q", "", (), "quit the emulator", _quit),
    HMPCommand("stop|s", "", (), "stop emulation", _simple("stop")),
)


_SPACE = " \t\n\v\f\r"


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in _SPACE:
        i += 1
    return i


def get_str(text: str, i: int) -> tuple[str, int] | None:
    """QEMU's ``get_str``: a word or a double-quoted string with \\n \\r \\\\ \\' \\"
    escapes; None when there is none (QEMU prints why on stdout, not on the monitor)."""
    i = _skip_space(text, i)
    if i >= len(text):
        return None
    if text[i] != '"':
        j = i
        while j < len(text) and text[j] not in _SPACE:
            j += 1
        return text[i:j], j
    out = []
    i += 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\":
            c = text[i + 1] if i + 1 < len(text) else "\0"
            i += 2
            if c in "nr":
                out.append("\n" if c == "n" else "\r")
            elif c in "\\'\"":
                out.append(c)
            else:
                print(f"unsupported escape code: '\\{c}'", flush=True)
                return None
        else:
            out.append(text[i])
            i += 1
    if i >= len(text):
        print("unterminated string", flush=True)
        return None
    return "".join(out), i + 1


def _flag_later(flag: str, args: tuple[tuple[str, str], ...]) -> bool:
    return any(kind == f"-{flag}" for _, kind in args)


def parse_args(cmd: HMPCommand, text: str, shown_name: str) -> dict[str, Any]:
    """monitor_parse_arguments: fit ``text`` (what follows the command name) to the spec,
    with QEMU's errors (prefixed with ``shown_name``, the table name with its aliases)."""
    out: dict[str, Any] = {}
    i = 0
    for pos, (name, kind) in enumerate(cmd.args):
        if kind.startswith("-"):
            i = _skip_space(text, i)
            if text[i : i + 1] == "-":
                flag = text[i + 1 : i + 2]
                if flag == kind[1]:
                    out[name] = True
                    i += 2
                elif not _flag_later(flag, cmd.args[pos + 1 :]):
                    raise ArgError(f"{shown_name}: unsupported option -{flag}")
            continue
        i = _skip_space(text, i)
        if kind == "b":
            j = i
            while j < len(text) and 32 < ord(text[j]) < 127:
                j += 1
            if text[i:j] not in ("on", "off"):
                raise ArgError("Expected 'on' or 'off'")
            out[name], i = text[i:j] == "on", j
            continue
        if kind.endswith("?") and i >= len(text):
            continue
        if kind.startswith("S"):
            out[name], i = text[i:], len(text)
            continue
        got = get_str(text, i)
        if got is None:
            raise ArgError(f"{shown_name}: string expected")
        out[name], i = got
    if _skip_space(text, i) < len(text):
        raise ArgError(f"{shown_name}: extraneous characters at the end of line")
    return out


def _command_name(text: str, i: int) -> tuple[str, int] | None:
    """get_command_name: the word at ``i`` (ended by a space or ``/``) and where it ends."""
    i = _skip_space(text, i)
    if i >= len(text):
        return None
    j = i
    while j < len(text) and text[j] != "/" and text[j] not in _SPACE:
        j += 1
    return text[i:j], j


def _cmdline_args(text: str) -> list[str] | None:
    """parse_cmdline: every get_str word of ``text``; None if one is malformed."""
    args = []
    i = _skip_space(text, 0)
    while i < len(text):
        got = get_str(text, i)
        if got is None:
            return None
        word, i = got
        args.append(word)
        i = _skip_space(text, i)
    return args


@dataclass(frozen=True)
class Result:
    """What one command line did: its text, and what the monitor must do next."""

    text: str  # CRLF line ends
    wait_migration: bool = False  # synchronous ``migrate``: suspend until it ends
    suspend: bool = False  # ``quit``: the monitor reads and prints nothing more


def _qemu_entries(text: str) -> dict[str, str]:
    """Alias -> that command's help entry (its line and tab-indented continuation lines)."""
    entries: dict[str, str] = {}
    current: list[str] = []
    names: list[str] = []
    for line in text.splitlines(keepends=True):
        # Continuation lines: tab-indented help, or drive_add's "[,opt=...]" synopsis lines.
        if line.startswith(("\t", "[")) and current:
            current.append(line)
            continue
        if current:
            for n in names:
                entries.setdefault(n, "".join(current))
        head = line.split(" ", 1)[0]
        if head == "info" and text is INFO_HELP_TEXT:
            head = line.split(" ", 2)[1]
        names, current = head.split("|"), [line]
    if current:
        for n in names:
            entries.setdefault(n, "".join(current))
    return entries


QEMU_COMMANDS = _qemu_entries(HELP_TEXT)
QEMU_INFO = _qemu_entries(INFO_HELP_TEXT)
MIGRATION_STATUSES = frozenset(s.value for s in MigrationStatus)
SYNC_MIGRATE_REFUSED = "terminal does not allow synchronous migration, continuing detached\n"


class HMPConsole:
    """One HMP monitor's command interpreter.

    ``interactive`` is True for a monitor with a terminal (readline): there ``migrate``
    without ``-d`` waits; through ``human-monitor-command`` it cannot and says so.
    """

    def __init__(
        self,
        machine: Machine,
        interactive: bool = False,
        history: Callable[[], list[str]] | None = None,
    ) -> None:
        self.machine = machine
        self.interactive = interactive
        self.history = history  # the line editor's history (``info history``), if any
        self._wait = False
        self._suspend = False

    def qmp(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        return self.machine.dispatcher.execute(name, arguments)

    def commands(self) -> list[HMPCommand]:
        d = self.machine.dispatcher
        return [c for c in COMMANDS if c.needs is None or d.has(c.needs)]

    def find(self, name: str) -> HMPCommand | None:
        for cmd in self.commands():
            if name in cmd.names:
                return cmd
        return None

    def help_text(self, name: str | None) -> str:
        if name is None:
            return HELP_TEXT
        if name == "info":
            return INFO_HELP_TEXT
        return QEMU_COMMANDS.get(name, f"unknown command: '{name}'\n")

    def execute(self, line: str) -> str:
        """Run one command line; returns QEMU's output text with CRLF line ends."""
        return self.run(line).text

    def run(self, line: str) -> Result:
        """Run one command line; the text and what a readline monitor does next."""
        self._wait = self._suspend = False
        text = self._run(line).replace("\n", "\r\n")
        return Result(text, self._wait, self._suspend)

    def _run(self, line: str) -> str:
        found = _command_name(line, 0)
        if found is None:
            return ""
        name, end = found
        if name == "info":
            return self._info(line, _skip_space(line, end))
        if name in ("help", "?"):
            return self._help(line[end:])
        cmd = self.find(name)
        if cmd is None:
            if name in QEMU_COMMANDS:
                return f"Error: migemu does not emulate the HMP command '{name}'\n"
            return f"unknown command: '{line[:end]}'\n"
        try:
            args = parse_args(cmd, line[_skip_space(line, end) :], cmd.name)
            return cmd.run(self, args)
        except ArgError as err:
            return f'{err}\nTry "help {line[:end]}" for more information\n'
        except QMPError as err:
            return f"Error: {err.desc}\n"

    def _help(self, text: str) -> str:
        """help_cmd: the whole table, one command, ``info``'s table or one subcommand."""
        args = _cmdline_args(text)
        if args is None:
            return ""
        if not args:
            return HELP_TEXT
        if args[0] == "info":
            if len(args) == 1:
                return INFO_HELP_TEXT
            entry = QEMU_INFO.get(args[1])
            return entry if entry else f"unknown command: 'info {args[1]}'\n"
        return QEMU_COMMANDS.get(args[0], f"unknown command: '{args[0]}'\n")

    def _info(self, line: str, start: int) -> str:
        found = _command_name(line, start)
        if found is None:
            return INFO_HELP_TEXT
        name, end = found
        sub = info.find(name)
        if sub is None:
            if name in QEMU_INFO:
                return f"Error: migemu does not emulate 'info {name}'\n"
            return f"unknown command: '{line[:end]}'\n"
        if _skip_space(line, end) < len(line):
            return (
                f"{name}: extraneous characters at the end of line\n"
                f'Try "help {line[:end]}" for more information\n'
            )
        try:
            return sub.run(self)
        except QMPError as err:
            return f"Error: {err.desc}\n"

    # -- completion (monitor_find_completion) ------------------------------------------------

    def complete(self, text: str) -> tuple[list[str], int]:
        """monitor_find_completion: candidates for the text left of the cursor, and how
        much of the last word is typed."""
        args = _cmdline_args(text)
        if args is None:
            return [], 0
        if text[-1:] in tuple(_SPACE):
            args.append("")
        if not args:
            args = [""]
        return self._complete_in(QEMU_COMMANDS, args), len(args[-1])

    def _complete_in(self, table: dict[str, str], args: list[str]) -> list[str]:
        if len(args) <= 1:
            return [name for name in table if name.startswith(args[0] if args else "")]
        head, last = args[0], args[-1]
        if head not in table:
            return []
        if table is QEMU_COMMANDS and head == "info":
            return self._complete_in(QEMU_INFO, args[1:])
        if table is QEMU_COMMANDS and head in ("help", "?"):
            return self._complete_in(QEMU_COMMANDS, args[1:])
        names: list[str] = []
        if table is QEMU_COMMANDS and head == "migrate_set_capability":
            if len(args) == 2:
                names = [c["capability"] for c in self.qmp("query-migrate-capabilities")]
            elif len(args) == 3:
                names = ["on", "off"]
        elif table is QEMU_COMMANDS and head == "migrate_set_parameter" and len(args) == 2:
            names = [*self.qmp("query-migrate-parameters"), "block-bitmap-mapping"]
        return [n for n in names if n.startswith(last)]


__all__ = ["COMMANDS", "FALSE_WORDS", "TRUE_WORDS", "HMPCommand", "HMPConsole", "Result"]
