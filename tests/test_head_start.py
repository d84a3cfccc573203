"""A process's one-time stage costs paid before the stages need them (flows.orchestration.head_start):
dbt's and Feast's on a thread of their own, once, silently, and never failing the caller."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from flows.orchestration import head_start


def test_the_head_start_pays_dbt_and_feast_once_on_its_own_thread(
    home: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from dbt_common.clients.jinja import template_cache

    from flows.transform import stage

    monkeypatch.setattr(stage._DBT, "warm", False)  # as in a process that has not paid it yet
    template_cache.file_cache.clear()
    calls: list[tuple[list[str], str]] = []
    invoke = stage._DBT.invoke

    def spy(args, *rest, **kw):
        calls.append((list(args), threading.current_thread().name))
        return invoke(args, *rest, **kw)

    monkeypatch.setattr(stage._DBT, "invoke", spy)
    capfd.readouterr()
    head_start.begin().wait()
    assert [(a[0], name) for a, name in calls] == [("ls", "asof-head-start")]
    assert stage._DBT.warm
    assert all(m.macro_sql in template_cache.file_cache for m in stage.parsed_manifest().macros.values())
    assert all(name in sys.modules for name in head_start.MATERIALIZE_MODULES)
    # `dbt ls` lists the project's seeds; nothing reaches the terminal the flow's thread prints on
    assert capfd.readouterr().out == ""
    stage.warm_up()  # paid: no second invocation
    head_start.begin().wait()
    assert len(calls) == 1
    assert not (home / "lake").exists()


def test_a_failed_payment_leaves_the_others_and_the_caller_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    paid: list[str] = []

    def fail() -> None:
        paid.append("transform")
        raise RuntimeError("dbt_project.yml is broken")  # the transform stage reports it itself

    monkeypatch.setattr(head_start, "pay_transform_costs", fail)
    monkeypatch.setattr(head_start, "pay_materialize_costs", lambda: paid.append("materialize"))
    head_start.begin().wait()
    assert paid == ["transform", "materialize"]
