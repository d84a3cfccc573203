"""Text that came from upstream, made safe to print on a terminal.

Landing files are not ours: a value, a header or a file name can hold terminal escape sequences
(`ESC ]0;...` retitles the window, `ESC [2J` clears it, some terminals have done worse) or Unicode
bidirectional controls that make a line read differently from what it holds. Whatever asof prints
that may carry upstream text goes through `printable`: such characters are shown as Python-style
escapes (`\\x1b`, `\\u202e`), so the operator sees that they are there and the terminal executes
nothing. `cell` does the same for a table cell and keeps Rich from reading `[...]` in the text as
markup. Tabs and newlines pass through: they move the cursor, nothing more.
"""

from __future__ import annotations

import re

from rich.text import Text

# C0 controls but tab and newline, DEL, C1 controls; zero-width and bidirectional formatting marks
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def printable(text: object) -> str:
    return _UNSAFE.sub(_escape, str(text))


def cell(text: object, style: str = "") -> Text:
    """A Rich table cell showing `text` literally (no markup), control characters escaped."""
    return Text(printable(text), style=style)
