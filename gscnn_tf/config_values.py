"""Setting a tree of dataclasses from nested dicts (parsed YAML), the rules `gscnn_tf.config`
loads by: values checked against each field's annotation (ints taken as floats, a whole float
as an int, numbers as strings), unknown keys rejected naming the key, the source and the
closest valid key, and `a.b=value` overrides parsed into nested dicts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

import yaml

from gscnn_tf.errors import ConfigError

__all__ = ["apply_values", "parse_override"]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Checks `value` against the annotation `tp`, converting ints to floats and the like."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        expected = f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got " \
                   f"{value!r} ({type(value).__name__})"
        if bool in args and isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ConfigError(f"{expected}; write true or false")
        for arg in args:
            try:
                return _convert(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(expected)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def apply_values(node: Any, values: dict, prefix: str, source: str) -> None:
    """Recursively sets `values` (a nested dict) on the dataclass `node`."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{prefix or '<root>'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(type(node))
    names = [f.name for f in dataclasses.fields(node)]
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.0)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"{source}: unknown key '{dotted}'{hint} (valid: {', '.join(names)})")
        current = getattr(node, key)
        if dataclasses.is_dataclass(current):
            apply_values(current, value, f"{dotted}.", source)
        else:
            setattr(node, key, _convert(value, hints[key], f"{source}: '{dotted}'"))


def parse_override(text: str) -> dict:
    """`"a.b=value"` -> `{"a": {"b": value}}`, the value parsed as YAML ("" when empty)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected the form a.b=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"override '{text}': the value of '{key.strip()}' is not valid YAML "
                          f"({problem}); expected a YAML value such as 3, 0.5, true, [1, 2] "
                          f"or a string (quote it when it holds ':', '[' or '#')") from e
    nested: dict = {}
    cursor = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested
