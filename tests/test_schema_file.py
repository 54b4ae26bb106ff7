"""The schema file refuses annotations that would silently mean something else (found by
an operator's tests): a variants string read as its letters, `optional = "false"` read as
true."""

from __future__ import annotations

import pytest

from komm_policy.directory.schema import SchemaError, parse_schema


def _schema(column: dict[str, object]) -> dict[str, object]:
    return {"tables": {"subscriptions": {"primary_key": ["id"], "columns": {
        "id": "integer", "permission": column}}}}


@pytest.mark.parametrize("column, message", [
    ({"type": "enum", "variants": "Write"}, "must be a list of names"),
    ({"type": "enum", "variants": ["Read", 3]}, "must be a list of names"),
    ({"type": "enum", "variants": ["Read", "Read"]}, "twice"),
    ({"type": "text", "optional": "false"}, "must be true or false"),
    ({"type": "text", "optional": 1}, "must be true or false"),
])
def test_ambiguous_annotations_are_errors_naming_the_column(column: dict[str, object],
                                                            message: str) -> None:
    with pytest.raises(SchemaError, match=message) as caught:
        parse_schema(_schema(column), "schema.toml")
    assert "permission" in str(caught.value)


def test_well_formed_annotations_keep_their_meaning() -> None:
    schema = parse_schema(_schema({"type": "enum", "variants": ["Read", "Write"],
                                   "optional": False}), "schema.toml")
    column = next(c for c in schema.tables["subscriptions"].columns if c.name == "permission")
    assert column.variants == ("Read", "Write") and column.optional is False
