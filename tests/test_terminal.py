"""flows.terminal: upstream text printed on a terminal executes nothing and hides nothing."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from flows.terminal import cell, printable


def _unsafe(ch: str) -> bool:
    if ch in "\t\n":
        return False
    return (
        unicodedata.category(ch) == "Cc"
        or ch in "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
    )


@given(st.text())
def test_printable_leaves_no_control_character_and_changes_nothing_else(text: str) -> None:
    out = printable(text)
    assert not any(_unsafe(ch) for ch in out)
    if not any(_unsafe(ch) for ch in text):
        assert out == text


def test_escapes_are_visible() -> None:
    assert printable("a\x1b[2Jb\rc\x9bd\u202ee\tf\ng") == "a\\x1b[2Jb\\rc\\x9bd\\u202ee\tf\ng"


def test_cell_is_literal() -> None:
    assert cell("[bold]x[/] \x1b").plain == "[bold]x[/] \\x1b"
