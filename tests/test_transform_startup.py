"""What a dbt invocation pays before it reads a row: the adapter's behaviour flags are named
without walking the source of every frame (flows.transform.stage.name_flag_sources_cheaply)."""

from __future__ import annotations

import importlib

import pytest


@pytest.fixture()
def behavior_flags():
    """dbt-common's module, restored to its own `_default_source` afterwards."""
    module = importlib.import_module("dbt_common.behavior_flags")
    original = module.BehaviorFlagRendered.__dict__["_default_source"]
    yield module
    module.BehaviorFlagRendered._default_source = original


def _flag(module, **extra):
    return module.BehaviorFlagRendered({"name": "asof_probe", "default": True, "docs_url": "x", **extra}, {})


def test_the_cheap_source_names_the_same_module_as_dbt_common(behavior_flags) -> None:
    from flows.transform.stage import name_flag_sources_cheaply

    before = _flag(behavior_flags)._behavior_change_event.flag_source
    name_flag_sources_cheaply()
    after = _flag(behavior_flags)._behavior_change_event.flag_source
    assert before == after == __name__


def test_the_cheap_source_does_not_inspect_the_stack(behavior_flags, monkeypatch) -> None:
    import inspect

    from flows.transform.stage import name_flag_sources_cheaply

    name_flag_sources_cheaply()
    name_flag_sources_cheaply()  # a second call keeps the first replacement

    def refuse(*args, **kwargs):
        raise AssertionError("inspect.stack() called")

    monkeypatch.setattr(inspect, "stack", refuse)
    assert _flag(behavior_flags)._behavior_change_event.flag_source == __name__
    # a flag that names its source keeps it
    assert _flag(behavior_flags, source="dbt.adapters.duckdb")._behavior_change_event.flag_source == (
        "dbt.adapters.duckdb"
    )
