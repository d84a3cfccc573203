"""Sources are read from their contracts: validation order from the references between them, and a
contract that cannot define a source is refused with its file named."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.sources import CONTRACTS_DIR, SOURCE_NAMES, ContractError, load_sources, read_contract


def contract(name: str, references: tuple[str, ...] = (), **extra: str) -> str:
    rule = "  - {{id: unknown_{0}, kind: reference, column: id, table: {0}, table_key: id}}\n"
    rules = "".join(rule.format(r) for r in references)
    head = "".join(f"{k}: {v}\n" for k, v in {"source": name, "format": "csv", **extra}.items())
    return (
        head
        + "key: [id]\nempty_is_valid: true\ncolumns:\n  - {name: id, type: int, nullable: false}\n"
        + (f"rules:\n{rules}" if rules else "")
    )


def renamed_key(text: str) -> str:
    return text.replace("[id]", "[b_id]").replace("name: id", "name: b_id")


def write(directory: Path, **contracts: str) -> Path:
    directory.mkdir(exist_ok=True)
    for name, text in contracts.items():
        (directory / f"{name}.yml").write_text(text)
    return directory


def test_demo_order_follows_the_references():
    """Merchants before transactions ("merchant known" includes the same batch), transactions before
    chargebacks (a chargeback of a known transaction); customers reference nothing."""
    assert SOURCE_NAMES == ("merchants", "customers", "transactions", "chargebacks")
    assert tuple(load_sources(CONTRACTS_DIR)) == SOURCE_NAMES


def test_order_is_by_reference_depth_then_referenced_first(tmp_path):
    d = write(
        tmp_path / "c",
        a=contract("a"),
        b=contract("b"),
        c=contract("c", ("b",)),
        d=contract("d", ("c", "a")),
        e=contract("e", ("b",)),
    )
    # depth 0: a and b, both referenced, by name; depth 1: c (referenced by d) before e; then d
    assert list(load_sources(d)) == ["a", "b", "c", "e", "d"]


def test_a_file_name_is_the_default_file(tmp_path):
    d = write(tmp_path / "c", x=contract("x"), y=contract("y", file="y_export.csv"))
    sources = load_sources(d)
    assert (sources["x"].default_file, sources["y"].default_file) == ("x.csv", "y_export.csv")


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a": contract("a", ("b",)), "b": contract("b", ("a",))}, "reference cycle"),
        ({"a": contract("a", ("nowhere",))}, "unknown source 'nowhere'"),
        ({"a": contract("b")}, "must match the file name"),
        ({"a": contract("a", format="parquet")}, "format must be one of"),
        ({"a": contract("a").replace("type: int", "type: integer")}, "type must be one of"),
        ({"a": contract("a").replace("key: [id]", "key: [nope]")}, "key ['nope']"),
        ({"a": contract("a") + "batch: {volume: {min_rows: 1}}\n"}, "empty_is_valid is True"),
        ({"a": contract("a", ("b",)), "b": renamed_key(contract("b"))}, "b has no column 'id'"),
        ({"a": contract("a") + "rules:\n  - {id: r, kind: range, column: x, min: 0}\n"}, "names no column"),
    ],
)
def test_a_contract_that_cannot_define_a_source_is_refused(tmp_path, files, message):
    with pytest.raises(ContractError) as err:
        load_sources(write(tmp_path / "c", **files))
    assert message in str(err.value)


def test_every_demo_contract_reads():
    for path in sorted(CONTRACTS_DIR.glob("*.yml")):
        assert read_contract(path).name == path.stem
