"""Client filters -> OpenSearch filter clauses, restricted to an allow-list of fields.

Filters come from untrusted callers (the HTTP API), so only three shapes are accepted and only on
fields the operator listed in ``Settings.filter_fields``:

    {"gender": "Women"}                      -> term
    {"brand": ["Nike", "Puma"]}              -> terms
    {"price": {"gte": 100, "lt": 500}}       -> range (gt, gte, lt, lte)

Anything else is a :class:`ConfigError` naming the field, what was wrong and what is allowed; the
same clauses go to the lexical leg and (as lucene efficient filtering) the k-NN leg.

Given the index's field types (:func:`field_types` of its mapping), values are also checked
against them: OpenSearch answers ``{"price": "abc"}`` on a number field with a 400 parse error for
the whole search, which a caller should see as their mistake with the field and its type named.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mm_opensearch.errors import ConfigError

__all__ = [
    "MAX_TERMS",
    "MAX_VALUE_CHARS",
    "RANGE_OPERATORS",
    "build_filters",
    "field_types",
    "parse_filter_expressions",
]

MAX_TERMS = 1024
MAX_VALUE_CHARS = 256  # keyword fields are mapped with ignore_above=256: longer values never match
RANGE_OPERATORS = ("gt", "gte", "lt", "lte")
_EXPRESSION = re.compile(r"^\s*(?P<field>[^=<>!\s]+)\s*(?P<op>>=|<=|>|<|=)\s*(?P<value>.*?)\s*$")
_CLI_RANGE_OPS = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}
_WHOLE_NUMBER_TYPES = frozenset({"long", "integer", "short", "byte", "unsigned_long"})
_NUMBER_TYPES = _WHOLE_NUMBER_TYPES | {"double", "float", "half_float", "scaled_float"}


def field_types(mapping: Mapping[str, Any]) -> dict[str, str]:
    """``{dotted field path: mapping type}`` of an index mapping, multi-fields and aliases included."""
    types: dict[str, str] = {}
    aliases: dict[str, str] = {}

    def walk(properties: Mapping[str, Any], prefix: str) -> None:
        for name, spec in properties.items():
            path = f"{prefix}{name}"
            if "properties" in spec:
                walk(spec["properties"], f"{path}.")
                continue
            kind = spec.get("type", "object")
            if kind == "alias":
                aliases[path] = spec.get("path", "")
            types[path] = kind
            for sub, sub_spec in spec.get("fields", {}).items():
                types[f"{path}.{sub}"] = sub_spec.get("type", "object")

    walk(mapping.get("properties", {}), "")
    for alias, target in aliases.items():
        types[alias] = types.get(target, "alias")
    return types


def _shown(value: str | int | float | bool) -> str:
    """A value as the caller wrote it (JSON: ``true``, ``"abc"``), for messages."""
    return json.dumps(value, ensure_ascii=False)


def _as_number(value: str | int | float | bool) -> float | None:
    """The number a value stands for (numbers, numeric strings), None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and number not in (float("inf"), float("-inf")) else None


def _check_type(field: str, kind: str | None, value: str | int | float | bool, *, exact: bool) -> None:
    """Refuse a value the field's type cannot take (``exact``: a term, which must equal a stored value)."""
    shown = _shown(value)
    if kind in _NUMBER_TYPES:
        number = _as_number(value)
        if number is None:
            msg = f"filter '{field}': {shown} is not a number, and '{field}' is a number field ({kind}); give a number"
            raise ConfigError(msg)
        if exact and kind in _WHOLE_NUMBER_TYPES and not number.is_integer():
            msg = (
                f"filter '{field}': {shown} is not a whole number, and '{field}' is a {kind} field; "
                "give a whole number"
            )
            raise ConfigError(msg)
    elif kind == "boolean" and not (isinstance(value, bool) or value in ("true", "false")):
        msg = f"filter '{field}': {shown} is not a boolean, and '{field}' is a boolean field; give true or false"
        raise ConfigError(msg)
    elif kind == "date" and isinstance(value, bool):
        msg = (
            f"filter '{field}': {shown} is not a date, and '{field}' is a date field; give a date string "
            '(e.g. "2024-01-31" or "now-1d") or epoch milliseconds'
        )
        raise ConfigError(msg)


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


def _range(field: str, bounds: Mapping[str, Any], kind: str | None) -> dict[str, Any]:
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
        _check_type(field, kind, clause[op], exact=False)
    return {"range": {field: clause}}


def _term(field: str, value: Any, kind: str | None) -> str | int | float | bool:
    scalar = _scalar(field, value)
    _check_type(field, kind, scalar, exact=True)
    return scalar


def _clause(field: str, value: Any, kind: str | None) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return _range(field, value, kind)
    if isinstance(value, list | tuple):
        if not value:
            msg = f"filter '{field}': the list of values is empty; give at least one value or drop the filter"
            raise ConfigError(msg)
        if len(value) > MAX_TERMS:
            msg = f"filter '{field}': {len(value)} values given, at most {MAX_TERMS} are allowed"
            raise ConfigError(msg)
        return {"terms": {field: [_term(field, v, kind) for v in value]}}
    return {"term": {field: _term(field, value, kind)}}


def build_filters(
    filters: Mapping[str, Any] | None, allowed: Sequence[str], types: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Filter clauses for ``filters``, in a stable (sorted) order so equal requests build equal bodies.

    ``types`` (:func:`field_types` of the index mapping) refuses values a field cannot take; a
    field it does not list (unmapped yet) takes any scalar.
    """
    if not filters:
        return []
    unknown = sorted(name for name in filters if name not in allowed)
    if unknown:
        msg = (
            f"filter field(s) {unknown} are not filterable; allowed fields are {sorted(allowed)} "
            "(the operator sets them with MMOS_FILTER_FIELDS)"
        )
        raise ConfigError(msg)
    types = types or {}
    return [_clause(name, filters[name], types.get(name)) for name in sorted(filters)]


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
