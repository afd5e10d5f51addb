"""Metadata filters (equality, in, numeric range) compiled to a SQLite WHERE clause over ``docs.metadata``.

Filter syntax: ``{"key": value}`` (eq), ``{"key": {"in": [...]}}``, ``{"key": {"gte": 1, "lt": 5}}``;
operators ``eq ne in nin gt gte lt lte``, optionally ``$``-prefixed. Several keys are ANDed.
"""

from __future__ import annotations

import math
import re
from typing import Any

from indexer.errors import InvalidFilter

KEY_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}\Z")  # \Z, not $: no trailing newline
MAX_KEYS = 16
MAX_IN = 1024
RANGE_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
Scalar = str | int | float | bool


INT64 = (-(2**63), 2**63 - 1)  # what SQLite binds; a larger int raised OverflowError (a 500)


def _scalar(value: Any, field: str) -> Scalar:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidFilter(f"{field}: not valid Unicode (lone surrogate)", field=field) from None
        return value
    if isinstance(value, int | float):
        return _number(value, field)
    raise InvalidFilter(f"{field}: expected a string, number or boolean", field=field)


def _number(value: Any, field: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidFilter(f"{field}: range bounds must be numbers", field=field)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidFilter(f"{field}: numbers must be finite", field=field)
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        raise InvalidFilter(f"{field}: integers must fit in 64 bits", field=field, limit=INT64[1])
    return value


def _sql_value(value: Scalar) -> Any:
    # json_extract returns 1/0 for JSON true/false
    return int(value) if isinstance(value, bool) else value


def compile_filters(filters: dict[str, Any] | None, column: str = "metadata") -> tuple[str, list[Any]]:
    """Validate ``filters`` and return ``(sql, params)``; ``("1", [])`` when there is none."""
    if filters is None:
        return "1", []
    if not isinstance(filters, dict):
        raise InvalidFilter("filters must be an object of metadata key -> condition", field="filters")
    if len(filters) > MAX_KEYS:
        raise InvalidFilter(f"at most {MAX_KEYS} filter keys", field="filters", limit=MAX_KEYS)
    clauses: list[str] = []
    params: list[Any] = []
    for key, cond in filters.items():
        field = (
            f"filters.{key}" if isinstance(key, str) and key.isprintable() and key.isascii() else "filters"
        )
        if not isinstance(key, str) or not KEY_RE.fullmatch(key):
            raise InvalidFilter(f"{field}: bad metadata key", field=field, limit=KEY_RE.pattern)
        path = f'$."{key}"'
        expr = f"json_extract({column}, ?)"
        if not isinstance(cond, dict):
            clauses.append(f"{expr} = ?")
            params += [path, _sql_value(_scalar(cond, field))]
            continue
        if not cond:
            raise InvalidFilter(f"{field}: empty condition", field=field)
        for raw_op, arg in cond.items():
            op = raw_op[1:] if isinstance(raw_op, str) and raw_op.startswith("$") else raw_op
            ofield = f"{field}.{raw_op}"
            if op == "eq":
                clauses.append(f"{expr} = ?")
                params += [path, _sql_value(_scalar(arg, ofield))]
            elif op == "ne":
                clauses.append(f"({expr} IS NULL OR {expr} != ?)")
                params += [path, path, _sql_value(_scalar(arg, ofield))]
            elif op in ("in", "nin"):
                if not isinstance(arg, list) or not arg:
                    raise InvalidFilter(f"{ofield}: expected a non-empty list", field=ofield)
                if len(arg) > MAX_IN:
                    raise InvalidFilter(f"{ofield}: at most {MAX_IN} values", field=ofield, limit=MAX_IN)
                vals = [_sql_value(_scalar(v, ofield)) for v in arg]
                marks = ",".join("?" * len(vals))
                if op == "in":
                    clauses.append(f"{expr} IN ({marks})")
                    params += [path, *vals]
                else:
                    clauses.append(f"({expr} IS NULL OR {expr} NOT IN ({marks}))")
                    params += [path, path, *vals]
            elif op in RANGE_OPS:
                num = _number(arg, ofield)
                clauses.append(
                    f"(json_type({column}, ?) IN ('integer', 'real') AND {expr} {RANGE_OPS[op]} ?)"
                )
                params += [path, path, num]
            else:
                raise InvalidFilter(
                    f"{ofield}: unknown operator", field=ofield, limit=["eq", "ne", "in", "nin", *RANGE_OPS]
                )
    return " AND ".join(clauses) or "1", params


def matches(metadata: dict[str, Any], filters: dict[str, Any] | None) -> bool:
    """Pure-Python evaluation of the same filter semantics (used by tests and small in-memory checks)."""
    compile_filters(filters)  # validates
    for key, cond in (filters or {}).items():
        val = metadata.get(key)
        conds = cond if isinstance(cond, dict) else {"eq": cond}
        for raw_op, arg in conds.items():
            op = raw_op.lstrip("$")
            if op == "eq" and not _eq(val, arg):
                return False
            if op == "ne" and _eq(val, arg):
                return False
            if op == "in" and not any(_eq(val, a) for a in arg):
                return False
            if op == "nin" and any(_eq(val, a) for a in arg):
                return False
            if op in RANGE_OPS:
                if isinstance(val, bool) or not isinstance(val, int | float):
                    return False
                ok = {"gt": val > arg, "gte": val >= arg, "lt": val < arg, "lte": val <= arg}[op]
                if not ok:
                    return False
    return True


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return (int(a) if isinstance(a, bool) else a) == (int(b) if isinstance(b, bool) else b)
    if isinstance(a, str) != isinstance(b, str):
        return False
    return bool(a == b)
