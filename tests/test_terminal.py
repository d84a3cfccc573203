"""flows.cli.terminal: upstream text printed on a terminal executes nothing and hides nothing."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from flows.cli.terminal import cell, printable


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


def test_lineage_impact_prints_upstream_names_literally(capsys) -> None:
    """`asof lineage impact` puts file names, reasons and paths in Rich tables: brackets in them are
    shown as written (Rich would read `[/]` as markup and fail, `[bold]` as a style) and control
    characters are escaped."""
    from flows.cli.lineage import _print_impact

    name = "landing/refunds/2024-01-01/a[/]b[bold]\x1b]0;PWNED.csv"
    report = {
        "batch": {"file": name, "source": "refunds", "date": "2024-01-01"},
        "partitions": [
            {
                "table": "quarantine/refunds",
                "partition": "p",
                "rows": 1,
                "version": 0,
                "reasons": {"invalid_format:[/]x": 1},
            }
        ],
        "gold": [],
        "training_sets": [
            {
                "path": "sets/t[/].parquet",
                "service": "s",
                "start": "a",
                "end": "b",
                "reasons": ["read [bold]it"],
                "read_current_batch": True,
            }
        ],
        "online": [],
        "notes": ["see [/] \x1b[2J"],
        "recompute": {
            "backfill": "asof backfill --start 2024-01-01 --end 2024-01-01 --force",
            "training_sets": [],
        },
    }
    _print_impact(report)
    out = capsys.readouterr().out
    assert "\x1b" not in out
    for literal in ("a[/]b[bold]", "invalid_format:[/]x", "t[/].parquet", "read [bold]it", "see [/]"):
        assert literal in out, (literal, out)
