"""The monitor's options as ``symmon ipi`` flags and i-PI PES keywords, generated from
:class:`~symmon.monitoring.options.MonitorOptions`: every field is one flag
(``l_max`` -> ``--l-max``) and one PES keyword (``l_max``), its help is the field's
``:param:`` text and its default the field's default, so an option exists once and
every option is reachable from i-PI.

Text forms (command line and PES): integers and numbers as written; ``every`` ``auto``
or N; booleans ``true/false`` (a bare flag on the command line); per-quantity maps
(``thresholds``, ``model_errors``) ``QUANTITY=VALUE`` items, repeatable on the command
line, joined by ``;`` in a PES keyword (``thresholds`` also takes one number for every
quantity); ``metadata`` ``KEY=VALUE`` items, VALUE read as JSON where it parses.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import MISSING, fields
from typing import Callable, Dict, List, Mapping

from ...monitoring.options import (LOG_MODES, MODES, VIOLATION_ACTIONS, MonitorOptions,
                                   parse_every)

#: options whose text is one of a fixed set
CHOICES = {"mode": MODES, "on_violation": VIOLATION_ACTIONS, "log_mode": LOG_MODES}
#: older spellings of the command line, kept as aliases
ALIASES = {"thresholds": ("--threshold",), "model_errors": ("--model-error",)}
#: separator of the items of a map in one PES keyword (i-PI splits its parameters at ",")
PES_ITEM_SEPARATOR = ";"


def as_bool(value) -> bool:
    """``true/false/1/0/yes/no/on/off`` (any case) or a bool."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "1", "yes", "on"):
            return True
        if word in ("false", "0", "no", "off", "", "none"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    return bool(value)


def _integer(text) -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {text!r}") from None


def _items(value) -> List[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [item for item in str(value).split(PES_ITEM_SEPARATOR) if item.strip()]


def _pairs(value, what: str) -> Dict[str, str]:
    pairs = {}
    for item in _items(value):
        key, equals, text = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"expected {what}, got {item!r}")
        pairs[key.strip()] = text.strip()
    return pairs


def _quantity_map(number_for_all: bool) -> Callable:
    def parse(value):
        if isinstance(value, Mapping):
            return dict(value)
        items = _items(value)
        what = "QUANTITY=VALUE, e.g. forces=0.05" + (", or one number for every quantity"
                                                     if number_for_all else "")
        if number_for_all and len(items) == 1 and "=" not in items[0]:
            try:
                return float(items[0])
            except ValueError:
                raise ValueError(f"expected {what}, got {items[0]!r}") from None
        return {q: _number(v) for q, v in _pairs(value, what).items()}
    return parse


def _json_map(value):
    if isinstance(value, Mapping):
        return dict(value)
    out = {}
    for key, text in _pairs(value, "KEY=VALUE").items():
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def parser_of(field) -> Callable:
    """The text -> value function of a :class:`MonitorOptions` field (from its type)."""
    kind = str(field.type).replace(" ", "")
    if field.name == "every":
        return lambda value: value if isinstance(value, int) else parse_every(str(value))
    if "Mapping[str,float]" in kind:
        return _quantity_map(number_for_all="float" in kind.replace("Mapping[str,float]", ""))
    if "Mapping" in kind:
        return _json_map
    if kind == "bool":
        return as_bool
    if "int" in kind:
        return _integer
    if "float" in kind:
        return _number
    if kind == "str":
        return str
    raise TypeError(f"MonitorOptions.{field.name}: no text form for type {field.type!r}; "
                    "add one in symmon/frontends/ipi/options.py")


def option_fields():
    return fields(MonitorOptions)


def help_texts() -> Dict[str, str]:
    """``{field: its :param: text}`` from the MonitorOptions docstring, on one line."""
    doc = MonitorOptions.__doc__ or ""
    found = re.findall(r":param (\w+):(.*?)(?=\n\s*:param |\Z)", doc, flags=re.S)
    return {name: " ".join(re.sub(r":\w+:`~?([^`]*)`", r"\1", text).replace("``", "").split())
            for name, text in found}


def default_of(field):
    if field.default is not MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not MISSING else None


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_monitor_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`MonitorOptions` field (argparse default ``None``: not given,
    the option's own default applies)."""
    group = parser.add_argument_group(
        "monitor options (as SymmetryMonitor's keywords; docs: MonitorOptions)")
    helps = help_texts()
    for field in option_fields():
        kind = str(field.type).replace(" ", "")
        default = default_of(field)
        text = helps.get(field.name, "").replace("%", "%%")
        shown = "" if default in (None, {}) or "(default" in text else f" (default {default})"
        names = (flag_of(field.name),) + ALIASES.get(field.name, ())
        if kind == "bool":
            group.add_argument(*names, dest=field.name, action="store_true", default=None,
                               help=text + shown)
        elif "Mapping" in kind:
            metavar = "KEY=VALUE" if field.name == "metadata" else "QUANTITY=VALUE"
            group.add_argument(*names, dest=field.name, action="append", default=None,
                               metavar=metavar, help=text + " (repeatable)")
        else:
            group.add_argument(*names, dest=field.name, type=_argument_type(field),
                               choices=CHOICES.get(field.name), default=None,
                               metavar=None if field.name in CHOICES else _metavar(kind, field),
                               help=text + shown)


def _metavar(kind: str, field) -> str:
    if field.name == "every":
        return "auto|N"
    return "N" if "int" in kind else "X" if "float" in kind else "TEXT"


def _argument_type(field):
    parse = parser_of(field)

    def argument(text):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    argument.__name__ = field.name
    return argument


def options_from_arguments(args) -> dict:
    """The monitor options given on the command line (parsed), by field name."""
    given = {}
    for field in option_fields():
        value = getattr(args, field.name, None)
        if value is None:
            continue
        if isinstance(value, list):  # repeatable map items
            try:
                value = parser_of(field)(value)
            except ValueError as error:
                raise ValueError(f"{flag_of(field.name)}: {error}") from None
        given[field.name] = value
    return given


def options_from_keywords(keywords: dict) -> dict:
    """Pop the :class:`MonitorOptions` keywords from ``keywords`` (a PES's parameters,
    values as i-PI read them: text, numbers or booleans) and return them parsed."""
    given = {}
    for field in option_fields():
        if field.name in keywords:
            value = keywords.pop(field.name)
            try:
                given[field.name] = parser_of(field)(value)
            except ValueError as error:
                raise ValueError(f"symmon PES parameter {field.name}: {error}") from None
    return given


def option_names() -> List[str]:
    return [field.name for field in option_fields()]
