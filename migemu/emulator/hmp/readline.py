"""QEMU 7.2's monitor line editor (``util/readline.c``), sans-IO (emulator layer).

An HMP monitor on a socket or terminal echoes and edits what the user types itself: bytes go
in one at a time (``handle_byte``), the text QEMU would print comes out (``take_output``,
with ``\\n`` line ends; the monitor turns them into CRLF) and a finished line is returned.
The echo is QEMU's literal one: after each byte the whole line is redrawn (``ESC[D`` back to
its start, the text, ``ESC[K``) whenever it changed, then the cursor is moved with
``ESC[C``/``ESC[D``. History (64 entries, duplicates moved to the end) outlives clients.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

PROMPT = "(qemu) "
MAX_CMDS = 64  # READLINE_MAX_CMDS
MAX_COMPLETIONS = 256  # READLINE_MAX_COMPLETIONS
CMD_BUF_SIZE = 4095  # READLINE_CMD_BUF_SIZE - 1 usable bytes

# A completion finder gets the text left of the cursor and returns (candidates, the index in
# the candidates' text where what was typed ends).
CompletionFinder = Callable[[str], tuple[list[str], int]]


class _Esc(Enum):
    NORM = 0
    ESC = 1
    CSI = 2
    SS3 = 3


class ReadLine:
    """One monitor's line editor state: the line being typed, the cursor, the history."""

    def __init__(self, completion: CompletionFinder | None = None, prompt: str = PROMPT) -> None:
        self.prompt = prompt
        self.completion = completion
        self.buf = ""
        self.index = 0
        self.last_buf = ""
        self.last_index = 0
        self.esc = _Esc.NORM
        self.esc_param = 0
        self.history: list[str] = []
        self.hist_entry = -1
        self._out: list[str] = []

    # -- output ------------------------------------------------------------------------------

    def take_output(self) -> str:
        """The text printed since the last call (``\\n`` line ends)."""
        out, self._out = "".join(self._out), []
        return out

    def _print(self, text: str) -> None:
        self._out.append(text)

    def show_prompt(self) -> None:
        """readline_show_prompt: print the prompt; the next update redraws the whole line."""
        self._print(self.prompt)
        self.last_buf = ""
        self.last_index = 0
        self.esc = _Esc.NORM

    def restart(self) -> None:
        """readline_restart: a new client starts with an empty line (history stays)."""
        self.buf = ""
        self.index = 0

    # -- input -------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[str]:
        """Every byte of ``data``; returns the lines completed (a monitor that runs commands
        must use ``handle_byte`` instead, to stop reading while a command runs)."""
        lines = []
        for ch in data:
            line = self.handle_byte(ch)
            if line is not None:
                lines.append(line)
        return lines

    def handle_byte(self, ch: int) -> str | None:
        """readline_handle_byte; returns the command line when Enter completes one."""
        line = None
        if self.esc is _Esc.NORM:
            line = self._normal(ch)
        elif self.esc is _Esc.ESC:
            if ch == ord("["):
                self.esc, self.esc_param = _Esc.CSI, 0
            elif ch == ord("O"):
                self.esc, self.esc_param = _Esc.SS3, 0
            else:
                self.esc = _Esc.NORM
        elif self.esc is _Esc.CSI:
            self._csi(ch)
        else:
            if ch == ord("F"):
                self._eol()
            elif ch == ord("H"):
                self._bol()
            self.esc = _Esc.NORM
        if line is not None:
            return line
        self._update()
        return None

    def _normal(self, ch: int) -> str | None:
        if ch == 1:
            self._bol()
        elif ch == 4:
            self._delete_char()
        elif ch == 5:
            self._eol()
        elif ch == 9:
            self._complete()
        elif ch == 12:
            self._print("\033[2J\033[1;1H")
            self.show_prompt()
        elif ch in (10, 13):
            line = self.buf
            self._hist_add(line)
            self._print("\n")
            self.buf = ""
            self.index = 0
            self.last_buf = ""
            self.last_index = 0
            # QEMU's update after the command finds nothing changed: nothing more to print.
            return line
        elif ch == 23:  # (^N/^P history keys came after 7.2: here they do nothing)
            self._backword()
        elif ch == 27:
            self.esc = _Esc.ESC
        elif ch in (127, 8):
            self._backspace()
        elif ch == 155:
            self.esc = _Esc.CSI
        elif ch >= 32:
            self._insert(chr(ch))
        return None

    def _csi(self, ch: int) -> None:
        c = chr(ch)
        if c in "AF":
            self._up()
        elif c in "BE":
            self._down()
        elif c == "D":
            self._backward()
        elif c == "C":
            self._forward()
        elif c.isdigit() and ch < 128:
            self.esc_param = self.esc_param * 10 + int(c)
            return
        elif c == "~":
            if self.esc_param == 1:
                self._bol()
            elif self.esc_param == 3:
                self._delete_char()
            elif self.esc_param == 4:
                self._eol()
        self.esc = _Esc.NORM

    # -- editing -----------------------------------------------------------------------------

    def _insert(self, c: str) -> None:
        if len(self.buf) < CMD_BUF_SIZE:
            self.buf = self.buf[: self.index] + c + self.buf[self.index :]
            self.index += 1

    def _backward(self) -> None:
        if self.index > 0:
            self.index -= 1

    def _forward(self) -> None:
        if self.index < len(self.buf):
            self.index += 1

    def _backword(self) -> None:
        """^W: delete the word left of the cursor (and the spaces after it)."""
        if self.index == 0 or self.index > len(self.buf):
            return
        start = self.index - 1
        while start > 0 and self.buf[start].isspace():
            start -= 1
        while start > 0:
            if self.buf[start].isspace():
                start += 1
                break
            start -= 1
        self.buf = self.buf[:start] + self.buf[self.index :]
        self.index = start

    def _bol(self) -> None:
        self.index = 0

    def _eol(self) -> None:
        self.index = len(self.buf)

    def _backspace(self) -> None:
        if self.index > 0:
            self._backward()
            self._delete_char()

    def _delete_char(self) -> None:
        if self.index < len(self.buf):
            self.buf = self.buf[: self.index] + self.buf[self.index + 1 :]

    # -- history -----------------------------------------------------------------------------

    def _up(self) -> None:
        if self.hist_entry == 0:
            return
        if self.hist_entry == -1:
            self.hist_entry = len(self.history)
        self.hist_entry -= 1
        if self.hist_entry >= 0:
            self.buf = self.history[self.hist_entry][:CMD_BUF_SIZE]
            self.index = len(self.buf)

    def _down(self) -> None:
        if self.hist_entry == -1:
            return
        if self.hist_entry < MAX_CMDS - 1 and self.hist_entry + 1 < len(self.history):
            self.hist_entry += 1
            self.buf = self.history[self.hist_entry][:CMD_BUF_SIZE]
        else:
            self.buf = ""
            self.hist_entry = -1
        self.index = len(self.buf)

    def _hist_add(self, line: str) -> None:
        if not line:
            return
        idx = -1
        if self.hist_entry != -1 and self.history[self.hist_entry] == line:
            idx = self.hist_entry
        elif line in self.history:
            idx = self.history.index(line)
        if idx != -1:
            if idx == MAX_CMDS - 1:
                return  # already the newest entry of a full history (hist_entry is kept)
            del self.history[idx]
        elif len(self.history) == MAX_CMDS:
            del self.history[0]
        self.history.append(line)
        self.hist_entry = -1

    # -- completion --------------------------------------------------------------------------

    def _complete(self) -> None:
        if self.completion is None:
            return
        found, start = self.completion(self.buf[: self.index])
        completions: list[str] = []
        for c in found:
            if c not in completions and len(completions) < MAX_COMPLETIONS:
                completions.append(c)
        if not completions:
            return
        if len(completions) == 1:
            word = completions[0]
            for c in word[start:]:
                self._insert(c)
            if word and not word.endswith("/"):
                self._insert(" ")
            return
        completions.sort(key=lambda s: s.encode())
        self._print("\n")
        prefix = _common_prefix(completions)
        for c in completions[0][start:prefix]:
            self._insert(c)
        width = min(max(max(len(c) for c in completions) + 2, 10), 80)
        columns = 80 // width
        col = 0
        for i, c in enumerate(completions):
            self._print(c.ljust(width))
            col += 1
            if col == columns or i == len(completions) - 1:
                self._print("\n")
                col = 0
        self.show_prompt()

    # -- redraw ------------------------------------------------------------------------------

    def _update(self) -> None:
        """readline_update: redraw the line if it changed, then move the cursor."""
        if self.buf != self.last_buf:
            self._print("\033[D" * self.last_index + self.buf + "\033[K")
            self.last_buf = self.buf
            self.last_index = len(self.buf)
        if self.index != self.last_index:
            delta = self.index - self.last_index
            self._print("\033[C" * delta if delta > 0 else "\033[D" * -delta)
            self.last_index = self.index


def _common_prefix(words: list[str]) -> int:
    """Length of the prefix all ``words`` share (QEMU's max_prefix)."""
    first = words[0]
    n = len(first)
    for w in words[1:]:
        n = min(n, len(w))
        for j in range(n):
            if w[j] != first[j]:
                n = j
                break
    return n
