"""flows/features/feast_import.py: asof processes import Feast without typeguard's import-time
instrumentation; a plain interpreter (e.g. the `feast` CLI) still gets it. Each case runs in a fresh
interpreter, because instrumentation happens once, at feast's first import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.kill_harness import REPO

PROBE = textwrap.dedent(
    """
    {prelude}
    import feast.feature_view, feast.data_source
    names = set(feast.feature_view.FeatureView.__init__.__code__.co_names)
    names |= set(feast.data_source.DataSource.__init__.__code__.co_names)
    print("instrumented" if "check_argument_types_internal" in names else "plain")
    """
)


def _probe(prelude: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(prelude=prelude)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_feast_imported_through_asof_is_not_instrumented() -> None:
    assert _probe("import flows") == "plain"


def test_feast_imported_alone_keeps_typeguard() -> None:
    """The switch applies only where asof is loaded first: the guard above is what changes it."""
    assert _probe("") == "instrumented"


def test_the_switch_changes_no_result_of_feast() -> None:
    """A feature view built from asof's definitions is the same either way (creation times aside)."""
    build = (
        "import sys; sys.path.insert(0, 'feature_repo'); import features as f; "
        "spec = f.customer_txn_features_daily.to_proto().spec; "
        "[spec.batch_source.meta.ClearField(t) for t in ('created_timestamp', 'last_updated_timestamp')]; "
        "import json; from google.protobuf.json_format import MessageToDict; "
        "print(json.dumps(MessageToDict(spec), sort_keys=True))"
    )
    plain = subprocess.run(
        [sys.executable, "-c", build], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    fast = subprocess.run(
        [sys.executable, "-c", "import flows; " + build],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plain.returncode == 0 and fast.returncode == 0, (plain.stderr[-1500:], fast.stderr[-1500:])
    assert plain.stdout == fast.stdout and plain.stdout.strip()
