"""Metadata filters: SQL compilation agrees with the pure-Python semantics; bad filters name the field."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.errors import InvalidFilter
from indexer.filters import compile_filters, matches

VALUES = st.one_of(st.integers(-5, 5), st.sampled_from(["a", "b", "c"]), st.booleans(), st.floats(-5, 5))
KEYS = st.sampled_from(["year", "tag", "n"])
METADATA = st.dictionaries(KEYS, VALUES, max_size=3)
COND = st.one_of(
    VALUES,
    st.fixed_dictionaries({"in": st.lists(VALUES, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"$nin": st.lists(VALUES, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"ne": VALUES}),
    st.dictionaries(st.sampled_from(["gt", "gte", "lt", "$lte"]), st.integers(-5, 5), min_size=1, max_size=2),
)
FILTERS = st.dictionaries(KEYS, COND, min_size=1, max_size=2)


def _sql_match(meta: dict[str, Any], filters: dict[str, Any]) -> bool:
    conn = sqlite3.connect(":memory:")
    where, params = compile_filters(filters)
    row = conn.execute(f"SELECT 1 FROM (SELECT ? AS metadata) WHERE {where}", [json.dumps(meta), *params])
    return row.fetchone() is not None


@settings(max_examples=300, deadline=None)
@given(meta=METADATA, filters=FILTERS)
def test_sql_and_python_semantics_agree(meta: dict[str, Any], filters: dict[str, Any]) -> None:
    assert _sql_match(meta, filters) == matches(meta, filters)


def test_examples() -> None:
    meta = {"year": 2020, "tag": "x", "score": 0.5}
    assert matches(meta, {"year": 2020})
    assert matches(meta, {"year": {"gte": 2010, "lt": 2021}, "tag": {"in": ["x", "y"]}})
    assert not matches(meta, {"year": {"gt": 2020}})
    assert not matches(meta, {"tag": "2020"})  # strings never equal numbers
    assert not matches(meta, {"missing": {"gte": 0}})
    assert _sql_match(meta, {"score": {"lte": 0.5}})


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ("year", "filters"),
        ({"bad key!": 1}, "filters.bad key!"),
        ({"year": {"in": []}}, "filters.year.in"),
        ({"year": {"gte": "2000"}}, "filters.year.gte"),
        ({"year": {"near": 1}}, "filters.year.near"),
        ({"year": [1, 2]}, "filters.year"),
        ({"year": {}}, "filters.year"),
        ({"year": {"gt": float("nan")}}, "filters.year.gt"),
    ],
)
def test_invalid_filters_name_the_field(filters: Any, field: str) -> None:
    with pytest.raises(InvalidFilter) as err:
        compile_filters(filters)
    assert err.value.field == field
