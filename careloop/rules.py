"""The routing rules file: YAML in, plain validated data out.

Format (see README, "Rules"):

    rules:
      - name: medication-to-prescribers
        when: {type: medication.changed}
        notify: [neurology, developmental_pediatrics, parent, guardian]
        channels: [sms, email]

``when`` holds ``type`` and any data fields of that type; a list means "any of". ``notify``
holds roles, member ids, ``attendees`` (a check-in's attendees), ``team`` (every member but
the child) or ``everyone``. ``channels`` are ``sms``, ``email`` and ``calendar``.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from careloop.events import CHECKIN_TYPES, EVENT_DATA, ROLES

CHANNELS = ("sms", "email", "calendar")
"""Channels a rule may name."""

TARGET_KEYWORDS = ("attendees", "team", "everyone")
"""Targets that are not a role or a member id."""


class RulesError(ValueError):
    """A rules file is not valid; the message names the rule and what is wrong with it."""

    def __init__(self, errors: list[str], source: str = "rules"):
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


@dataclass(frozen=True)
class Rule:
    name: str
    types: tuple[str, ...]
    match: tuple[tuple[str, tuple[typing.Any, ...]], ...]
    notify: tuple[str, ...]
    channels: tuple[str, ...]


@dataclass(frozen=True)
class Rules:
    rules: tuple[Rule, ...]


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, list) else (value,)


def _allowed_values(event_type: str, field: str) -> tuple | None:
    """The enum values of a data field, or None where any value goes."""
    annotation = EVENT_DATA[event_type].model_fields[field].annotation
    values: list = []
    for arg in typing.get_args(annotation) or (annotation,):
        if typing.get_origin(arg) is typing.Literal:
            values.extend(typing.get_args(arg))
    if typing.get_origin(annotation) is typing.Literal:
        values.extend(typing.get_args(annotation))
    return tuple(values) or None


def _is_list_field(event_type: str, field: str) -> bool:
    """Whether a data field holds a list (such as ``attendees``), which ``when`` cannot match."""
    annotation = EVENT_DATA[event_type].model_fields[field].annotation
    return typing.get_origin(annotation) is list or any(
        typing.get_origin(arg) is list for arg in typing.get_args(annotation)
    )


def _bad_typed_values(event_type: str, field: str, values: tuple) -> list:
    """The values that can never equal the field's data (e.g. text where a number belongs)."""
    adapter = TypeAdapter(EVENT_DATA[event_type].model_fields[field].annotation)
    bad = []
    for value in values:
        try:
            adapter.validate_python(value, strict=True)
        except ValidationError:
            bad.append(value)
    return bad


def _parse_rule(index: int, raw, seen: set[str]) -> tuple[Rule | None, list[str]]:
    if not isinstance(raw, dict):
        return None, [f"rule #{index + 1}: must be a mapping"]
    name = raw.get("name")
    label = f"rule {name!r}" if isinstance(name, str) and name else f"rule #{index + 1}"
    errors: list[str] = []
    if not isinstance(name, str) or not name.strip():
        errors.append(f"{label}: name is required")
    elif name in seen:
        errors.append(f"{label}: name is used twice")
    else:
        seen.add(name)
    unknown = set(raw) - {"name", "when", "notify", "channels", "description"}
    if unknown:
        errors.append(f"{label}: unknown keys {sorted(unknown, key=str)}")
    if "description" in raw and not isinstance(raw["description"], str):
        errors.append(f"{label}: description must be text")

    when = raw.get("when")
    if not isinstance(when, dict) or "type" not in when:
        errors.append(f"{label}: when.type is required")
        when = {}
    types = _as_tuple(when.get("type")) if when else ()
    if when and not types:
        errors.append(f"{label}: when.type must name at least one event type")
    bad_types = [t for t in types if not isinstance(t, str) or t not in EVENT_DATA]
    if bad_types:
        errors.append(f"{label}: when.type has unknown event types {bad_types}")
        types = tuple(t for t in types if isinstance(t, str) and t in EVENT_DATA)
    match = []
    for field, value in when.items():
        if field == "type":
            continue
        values = _as_tuple(value)
        missing = [t for t in types if field not in EVENT_DATA[t].model_fields]
        if missing:
            errors.append(f"{label}: when.{field} is not a data field of {missing}")
            continue
        if not values:
            errors.append(f"{label}: when.{field} must list at least one value")
            continue
        if any(_is_list_field(t, field) for t in types):
            errors.append(f"{label}: when.{field} is a list and cannot be matched on")
            continue
        for event_type in types:
            allowed = _allowed_values(event_type, field)
            if allowed is not None:
                bad = [v for v in values if v not in allowed]
                if bad:
                    errors.append(f"{label}: when.{field} values {bad} are not among {list(allowed)}")
                    break
            else:
                bad = _bad_typed_values(event_type, field, values)
                if bad:
                    errors.append(f"{label}: when.{field} values {bad} are not valid for {event_type}")
                    break
        match.append((field, values))

    notify = raw.get("notify")
    if not isinstance(notify, list) or not notify:
        errors.append(f"{label}: notify must be a non-empty list")
        notify = []
    for target in notify:
        if not isinstance(target, str):
            errors.append(f"{label}: notify entries must be strings, not {target!r}")
        elif target not in ROLES and target not in TARGET_KEYWORDS and not target.startswith("mem_"):
            errors.append(f"{label}: notify has unknown role or target {target!r}")
    if "attendees" in notify and any(t not in CHECKIN_TYPES for t in types):
        errors.append(f"{label}: notify 'attendees' only applies to check-in events")

    channels = raw.get("channels")
    if not isinstance(channels, list) or not channels:
        errors.append(f"{label}: channels must be a non-empty list")
        channels = []
    bad_channels = [c for c in channels if c not in CHANNELS]
    if bad_channels:
        errors.append(f"{label}: channels has unknown channels {bad_channels} (use {list(CHANNELS)})")
    if "calendar" in channels and any(t not in CHECKIN_TYPES for t in types):
        errors.append(f"{label}: the calendar channel only applies to check-in events")

    if errors:
        return None, errors
    return (
        Rule(
            name=name,
            types=types,
            match=tuple(match),
            notify=tuple(notify),
            channels=tuple(dict.fromkeys(channels)),
        ),
        [],
    )


def parse_rules(document, source: str = "rules") -> Rules:
    """Validate a parsed YAML document. Raises RulesError listing every problem by rule."""
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        raise RulesError(["the file must be a mapping with a 'rules' list"], source)
    rules, errors, seen = [], [], set()
    for index, raw in enumerate(document["rules"]):
        rule, rule_errors = _parse_rule(index, raw, seen)
        errors.extend(rule_errors)
        if rule:
            rules.append(rule)
    if errors:
        raise RulesError(errors, source)
    return Rules(rules=tuple(rules))


def load_rules(path: str | Path) -> Rules:
    """Read and validate a rules file. Raises RulesError (also for unreadable or bad YAML)."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RulesError([f"cannot read: {exc.strerror}"], str(path)) from exc
    except UnicodeDecodeError as exc:
        raise RulesError([f"cannot read: not UTF-8 text ({exc.reason})"], str(path)) from exc
    except yaml.YAMLError as exc:
        raise RulesError([f"not valid YAML: {exc}"], str(path)) from exc
    return parse_rules(document, str(path))
