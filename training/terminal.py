"""Terminal safety: text printed by ``lsseg`` never carries control sequences from files it reads.

Bundle names, task and label names and paths come from files anyone can write. An ANSI escape sequence in
one would clear the screen, set the window title or fake a message, so every stream ``lsseg`` prints to is
wrapped in :class:`PrintableStream`, which drops escape sequences and control characters (tab, newline and
carriage return, which progress lines use, stay).
"""

from __future__ import annotations

import re
from typing import TextIO

_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, clear screen
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window title, hyperlinks
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"  # DCS, SOS, PM, APC strings
    r"|\x1b[ -~]?"  # two-character escapes (and a lone ESC)
    r"|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]"  # other C0 and C1 control characters
)


def printable(text: str) -> str:
    """``text`` without escape sequences and control characters other than tab, newline and carriage return."""
    return _ESCAPES.sub("", text)


class PrintableStream:
    """A text stream that passes everything written to it through :func:`printable`."""

    def __init__(self, stream: TextIO):
        self.wrapped = stream

    def write(self, text: str) -> int:
        self.wrapped.write(printable(text))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):
        return getattr(self.wrapped, name)
