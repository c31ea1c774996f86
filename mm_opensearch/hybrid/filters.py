"""Client filters -> OpenSearch filter clauses, restricted to an allow-list of fields.

Filters come from untrusted callers (the HTTP API), so only three shapes are accepted and only on
fields the operator listed in ``Settings.filter_fields``:

    {"gender": "Women"}                      -> term
    {"brand": ["Nike", "Puma"]}              -> terms
    {"price": {"gte": 100, "lt": 500}}       -> range (gt, gte, lt, lte)

Anything else is a :class:`ConfigError` naming the field, what was wrong and what is allowed; the
same clauses go to the lexical leg and (as lucene efficient filtering) the k-NN leg.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from mm_opensearch.errors import ConfigError

__all__ = ["MAX_TERMS", "MAX_VALUE_CHARS", "RANGE_OPERATORS", "build_filters", "parse_filter_expressions"]

MAX_TERMS = 1024
MAX_VALUE_CHARS = 256  # keyword fields are mapped with ignore_above=256: longer values never match
RANGE_OPERATORS = ("gt", "gte", "lt", "lte")
_EXPRESSION = re.compile(r"^\s*(?P<field>[^=<>!\s]+)\s*(?P<op>>=|<=|>|<|=)\s*(?P<value>.*?)\s*$")
_CLI_RANGE_OPS = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}


def _check_text(field: str, value: str) -> str:
    if len(value) > MAX_VALUE_CHARS:
        msg = f"filter '{field}': value is {len(value)} characters long, at most {MAX_VALUE_CHARS} are allowed"
        raise ConfigError(msg)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        msg = f"filter '{field}': value is not valid Unicode text (unpaired surrogate); send UTF-8 text"
        raise ConfigError(msg) from e
    return value


def _scalar(field: str, value: Any) -> str | int | float | bool:
    if isinstance(value, str):
        return _check_text(field, value)
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            msg = f"filter '{field}': {value} is not a finite number"
            raise ConfigError(msg)
        return value
    msg = (
        f"filter '{field}': a value must be a string, number or boolean, got {type(value).__name__}; "
        'use "field": value, "field": [v1, v2] or "field": {"gte": a, "lt": b}'
    )
    raise ConfigError(msg)


def _range(field: str, bounds: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(bounds) - set(RANGE_OPERATORS))
    if unknown or not bounds:
        msg = (
            f"filter '{field}': range operators must be some of {list(RANGE_OPERATORS)}, got {sorted(bounds)}"
        )
        raise ConfigError(msg)
    clause: dict[str, Any] = {}
    for op, bound in bounds.items():
        if isinstance(bound, bool) or not isinstance(bound, str | int | float):
            msg = f"filter '{field}': range bound '{op}' must be a number or a date string, got {type(bound).__name__}"
            raise ConfigError(msg)
        clause[op] = _scalar(field, bound)
    return {"range": {field: clause}}


def _clause(field: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return _range(field, value)
    if isinstance(value, list | tuple):
        if not value:
            msg = f"filter '{field}': the list of values is empty; give at least one value or drop the filter"
            raise ConfigError(msg)
        if len(value) > MAX_TERMS:
            msg = f"filter '{field}': {len(value)} values given, at most {MAX_TERMS} are allowed"
            raise ConfigError(msg)
        return {"terms": {field: [_scalar(field, v) for v in value]}}
    return {"term": {field: _scalar(field, value)}}


def build_filters(filters: Mapping[str, Any] | None, allowed: Sequence[str]) -> list[dict[str, Any]]:
    """Filter clauses for ``filters``, in a stable (sorted) order so equal requests build equal bodies."""
    if not filters:
        return []
    unknown = sorted(name for name in filters if name not in allowed)
    if unknown:
        msg = (
            f"filter field(s) {unknown} are not filterable; allowed fields are {sorted(allowed)} "
            "(the operator sets them with MMOS_FILTER_FIELDS)"
        )
        raise ConfigError(msg)
    return [_clause(name, filters[name]) for name in sorted(filters)]


def _cli_value(text: str) -> str | int | float:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parse_filter_expressions(expressions: Sequence[str]) -> dict[str, Any]:
    """Filters from command-line expressions: ``gender=Women``, ``brand=Nike,Puma``, ``price<500``.

    Repeating a field with range operators combines them (``price>=100 price<500``).
    """
    filters: dict[str, Any] = {}
    for expression in expressions:
        match = _EXPRESSION.match(expression)
        if match is None or not match["value"]:
            msg = f"filter '{expression}' is malformed; write field=value, field=v1,v2 or field>=number"
            raise ConfigError(msg)
        field, op, value = match["field"], match["op"], match["value"]
        if op == "=":
            parts = [part.strip() for part in value.split(",") if part.strip()]
            filters[field] = parts[0] if len(parts) == 1 else parts
            continue
        bounds = filters.setdefault(field, {})
        if not isinstance(bounds, dict):
            msg = f"filter '{field}' is given both as a value and as a range; use one of the two"
            raise ConfigError(msg)
        bounds[_CLI_RANGE_OPS[op]] = _cli_value(value)
    return filters
