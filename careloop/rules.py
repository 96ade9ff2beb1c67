"""The routing rules file: YAML in, validated :class:`Rule` models out.

Format (see README, "Rules"):

    rules:
      - name: medication-to-prescribers
        when: {type: medication.changed}
        notify: [neurology, developmental_pediatrics, parent, guardian]
        channels: [sms, email]

``when`` holds ``type`` and any data fields of that type; a list means "any of". ``notify``
holds roles, member ids, ``attendees`` (a check-in's attendees), ``team`` (every member but
the child) or ``everyone``. ``channels`` are ``sms``, ``email`` and ``calendar``.
``bypass_quiet_hours: true`` sends at once even in a member's quiet hours (never into a digest).

Acknowledgement and escalation (see README, "Escalation until someone answers"):

      - name: serious-concerns-to-whole-team
        ...
        acknowledge_within: 15m          # optional; urgent concerns need one within 15m anyway
        escalate_to:                     # steps, in order, while nobody has acknowledged
          - {roles: [parent, guardian], after: 15m}
          - {roles: [neurology], after: 30m}

``acknowledge_within`` is a duration (``90s``, ``15m``, ``2h``, ``1d``). ``escalate_to`` steps
name ``roles`` as ``notify`` does (roles, member ids, ``team``, ``everyone``) and ``after``, the
time since the event was routed (default: the step before it plus ``acknowledge_within``);
the ``after`` values only grow, and none comes before ``acknowledge_within``.

Each rule is a pydantic model; every problem in a file is reported at once, one line each,
named by the rule (``rule 'meds': when.change values ['paused'] are not among [...]``).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from careloop.events import CHECKIN_TYPES, EVENT_DATA, EventType
from careloop.vocabulary import ROLES, ChannelKind

CHANNELS = tuple(ChannelKind)
"""Channels a rule may name."""

TARGET_KEYWORDS = ("attendees", "team", "everyone")
"""Targets that are not a role or a member id."""

ESCALATION_TARGET_KEYWORDS = ("team", "everyone")
"""Targets an escalation step may name besides roles and member ids (not ``attendees``)."""

DEFAULT_ACKNOWLEDGE_WITHIN = 15 * 60.0
"""Seconds an urgent concern waits for an acknowledgement when no rule says otherwise."""

MAX_DURATION = 7 * 86400.0
"""The longest ``acknowledge_within`` or ``after`` a rule may give (a week)."""

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

PROBLEM_TYPE = "rules"
"""The pydantic error type of careloop's own messages (one or more lines each)."""


class RulesError(ValueError):
    """A rules file is not valid; the message names the rule and what is wrong with it."""

    def __init__(self, errors: list[str], source: str = "rules"):
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


def _problems(*messages: str) -> PydanticCustomError:
    return PydanticCustomError(PROBLEM_TYPE, "\n".join(messages))


def parse_duration(value, name: str) -> float:
    """A rule's duration (``90s``, ``15m``, ``2h``, ``1d``) in seconds; raises a problem naming
    ``name`` otherwise (a bare number is refused: minutes or seconds?)."""
    found = _DURATION.match(value.strip()) if isinstance(value, str) else None
    seconds = float(found.group(1)) * _UNITS[found.group(2)] if found else 0.0
    if not found or not 0 < seconds <= MAX_DURATION:
        raise _problems(f"{name} must be a duration such as 15m, 2h or 90s, up to 7d (not {value!r})")
    return seconds


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, list) else (value,)


def _field_annotation(event_type: str, field: str):
    return EVENT_DATA[event_type].model_fields[field].annotation


def _allowed_values(event_type: str, field: str) -> tuple | None:
    """The enum values of a data field, or None where any value goes."""
    annotation = _field_annotation(event_type, field)
    values: list = []
    for arg in (*typing.get_args(annotation), annotation):
        if typing.get_origin(arg) is typing.Literal:
            values.extend(typing.get_args(arg))
    return tuple(values) or None


def _is_list_field(event_type: str, field: str) -> bool:
    """Whether a data field holds a list (such as ``attendees``), which ``when`` cannot match."""
    annotation = _field_annotation(event_type, field)
    return any(typing.get_origin(a) is list for a in (annotation, *typing.get_args(annotation)))


def _field_problem(types: tuple[str, ...], field: str, values: tuple) -> str | None:
    """What is wrong with matching data field ``field`` against ``values``, if anything."""
    missing = [t for t in types if field not in EVENT_DATA[t].model_fields]
    if missing:
        return f"when.{field} is not a data field of {missing}"
    if not values:
        return f"when.{field} must list at least one value"
    if any(_is_list_field(t, field) for t in types):
        return f"when.{field} is a list and cannot be matched on"
    for event_type in types:
        allowed = _allowed_values(event_type, field)
        if allowed is not None:
            bad = [v for v in values if v not in allowed]
            if bad:
                return f"when.{field} values {bad} are not among {list(allowed)}"
            continue
        adapter = TypeAdapter(_field_annotation(event_type, field))
        bad = []
        for value in values:
            try:
                adapter.validate_python(value, strict=True)
            except ValidationError:
                bad.append(value)
        if bad:
            return f"when.{field} values {bad} are not valid for {event_type}"
    return None


class When(BaseModel):
    """Which events a rule matches: any of ``types``, with every data field in ``match``
    equal to one of its values."""

    model_config = ConfigDict(frozen=True)

    types: tuple[EventType, ...]
    match: tuple[tuple[str, tuple[typing.Any, ...]], ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _from_file(cls, raw):
        if isinstance(raw, When):
            return raw
        if not isinstance(raw, dict) or "type" not in raw:
            raise _problems("when.type is required")
        problems = []
        types = _as_tuple(raw["type"])
        if not types:
            problems.append("when.type must name at least one event type")
        unknown = [t for t in types if not isinstance(t, str) or t not in EVENT_DATA]
        if unknown:
            problems.append(f"when.type has unknown event types {unknown}")
            types = tuple(t for t in types if t not in unknown)
        match = []
        for name, value in raw.items():
            if name == "type":
                continue
            values = _as_tuple(value)
            problem = _field_problem(types, name, values)
            if problem:
                problems.append(problem)
            else:
                match.append((name, values))
        if problems:
            raise _problems(*problems)
        return {"types": types, "match": tuple(match)}

    def matches(self, event_type: str, data: dict) -> bool:
        """Whether an event of ``event_type`` with ``data`` is one this clause names."""
        if event_type not in self.types:
            return False
        return all(data.get(name) in values for name, values in self.match)

    def may_match_urgent(self) -> bool:
        """Whether an urgent concern can match this clause (only those need an acknowledgement
        when a rule does not say ``acknowledge_within``)."""
        if EventType.CONCERN_RAISED not in self.types:
            return False
        return all("urgent" in values for name, values in self.match if name == "severity")


class EscalationStep(BaseModel):
    """One step of a rule's ``escalate_to``: whom to alert, on every channel they have, when
    nobody has acknowledged the event ``after`` seconds after it was routed."""

    model_config = ConfigDict(frozen=True)

    roles: tuple[str, ...]
    after: float


class Rule(BaseModel):
    """One routing rule, as the file gives it and as routing reads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str | None = None
    when: When
    notify: tuple[str, ...]
    channels: tuple[ChannelKind, ...]
    bypass_quiet_hours: bool = False
    """Its messages go at once, in quiet hours too and never into a digest (``urgent``
    concerns always do)."""
    acknowledge_within: float | None = None
    """Seconds within which someone must acknowledge the events it matches (None: only urgent
    concerns need an acknowledgement, within :data:`DEFAULT_ACKNOWLEDGE_WITHIN`)."""
    escalate_to: tuple[EscalationStep, ...] = ()
    """Whom to alert, step by step, while nobody has acknowledged (``after`` resolved)."""

    @property
    def types(self) -> tuple[EventType, ...]:
        return self.when.types

    @property
    def match(self) -> tuple[tuple[str, tuple[typing.Any, ...]], ...]:
        return self.when.match

    @field_validator("name", mode="before")
    @classmethod
    def _named(cls, value):
        if not isinstance(value, str) or not value.strip():
            raise _problems("name is required")
        return value

    @field_validator("bypass_quiet_hours", mode="before")
    @classmethod
    def _flag(cls, value):
        if not isinstance(value, bool):
            raise _problems("bypass_quiet_hours must be true or false")
        return value

    @field_validator("acknowledge_within", mode="before")
    @classmethod
    def _window(cls, value):
        return None if value is None else parse_duration(value, "acknowledge_within")

    @field_validator("escalate_to", mode="before")
    @classmethod
    def _steps(cls, value, info):
        if not isinstance(value, list) or not value:
            raise _problems(
                "escalate_to must be a non-empty list of steps such as {roles: [neurology], after: 15m}"
            )
        when, window = info.data.get("when"), info.data.get("acknowledge_within")
        problems = []
        window_valid = "acknowledge_within" in info.data  # else it is reported on its own
        if window is None and window_valid and when is not None and not when.may_match_urgent():
            problems.append(
                "escalate_to needs acknowledge_within here: without it only urgent concerns "
                "wait for an acknowledgement, and this rule never matches one"
            )
        steps, previous = [], 0.0
        for number, raw in enumerate(value, start=1):
            label = f"escalate_to step {number}"
            if not isinstance(raw, dict):
                problems.append(f"{label} must be a mapping with roles and after")
                continue
            unknown = sorted(set(raw) - {"roles", "after"}, key=str)
            if unknown:
                problems.append(f"{label} has unknown keys {unknown} (use roles and after)")
            roles = raw.get("roles")
            if not isinstance(roles, list) or not roles:
                problems.append(f"{label}: roles must be a non-empty list")
                roles = []
            for target in roles:
                known = isinstance(target, str) and (
                    target in ROLES or target in ESCALATION_TARGET_KEYWORDS or target.startswith("mem_")
                )
                if not known:
                    problems.append(f"{label}: roles has unknown role or target {target!r}")
            if "after" in raw:
                try:
                    after = parse_duration(raw["after"], f"{label}: after")
                except PydanticCustomError as exc:
                    problems.append(str(exc))
                    continue
            else:
                after = previous + (window or DEFAULT_ACKNOWLEDGE_WITHIN)
            if after <= previous:
                problems.append(f"{label}: after must come later than the step before it")
            elif number == 1 and window is not None and after < window:
                problems.append(f"{label}: after must not come before acknowledge_within")
            previous = max(previous, after)
            steps.append(EscalationStep(roles=tuple(r for r in roles if isinstance(r, str)), after=after))
        if problems:
            raise _problems(*problems)
        return tuple(steps)

    @field_validator("description", mode="before")
    @classmethod
    def _text(cls, value):
        if value is not None and not isinstance(value, str):
            raise _problems("description must be text")
        return value

    @field_validator("notify", mode="before")
    @classmethod
    def _targets(cls, value, info):
        if not isinstance(value, list) or not value:
            raise _problems("notify must be a non-empty list")
        problems = []
        for target in value:
            if not isinstance(target, str):
                problems.append(f"notify entries must be strings, not {target!r}")
            elif target not in ROLES and target not in TARGET_KEYWORDS and not target.startswith("mem_"):
                problems.append(f"notify has unknown role or target {target!r}")
        when = info.data.get("when")
        if "attendees" in value and when and any(t not in CHECKIN_TYPES for t in when.types):
            problems.append("notify 'attendees' only applies to check-in events")
        if problems:
            raise _problems(*problems)
        return tuple(value)

    @field_validator("channels", mode="before")
    @classmethod
    def _channels(cls, value, info):
        if not isinstance(value, list) or not value:
            raise _problems("channels must be a non-empty list")
        problems = []
        unknown = [c for c in value if c not in CHANNELS]
        if unknown:
            problems.append(f"channels has unknown channels {unknown} (use {[c.value for c in CHANNELS]})")
        when = info.data.get("when")
        if ChannelKind.CALENDAR in value and when and any(t not in CHECKIN_TYPES for t in when.types):
            problems.append("the calendar channel only applies to check-in events")
        if problems:
            raise _problems(*problems)
        return tuple(dict.fromkeys(value))


@dataclass(frozen=True)
class Rules:
    """A rules file's rules, in file order, indexed for routing: by event type, and within a
    type by the value of the first data field a rule matches on. Routing an event reads only
    the rules that could match it, however many rules the file has."""

    rules: tuple[Rule, ...]
    _always: dict[str, tuple[tuple[int, Rule], ...]] = field(init=False, repr=False, compare=False)
    _keyed: dict[str, dict[str, dict[Any, tuple[tuple[int, Rule], ...]]]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        always: dict[str, list[tuple[int, Rule]]] = {}
        keyed: dict[str, dict[str, dict[Any, list[tuple[int, Rule]]]]] = {}
        for position, rule in enumerate(self.rules):
            for event_type in rule.types:
                if not rule.match:
                    always.setdefault(event_type, []).append((position, rule))
                    continue
                name, values = rule.match[0]
                by_value = keyed.setdefault(event_type, {}).setdefault(name, {})
                for value in values:
                    by_value.setdefault(value, []).append((position, rule))
        object.__setattr__(self, "_always", {t: tuple(r) for t, r in always.items()})
        object.__setattr__(
            self,
            "_keyed",
            {t: {n: {v: tuple(r) for v, r in by.items()} for n, by in f.items()} for t, f in keyed.items()},
        )

    def candidates(self, event_type: str, data: dict) -> list[Rule]:
        """The rules that could match an event of this type with this data, in file order
        (each still has to match: only its type and first field were looked up)."""
        found = list(self._always.get(event_type, ()))
        for name, by_value in self._keyed.get(event_type, {}).items():
            value = data.get(name)
            if isinstance(value, Hashable):
                found += by_value.get(value, ())
        return [rule for _, rule in sorted(found, key=lambda pair: pair[0])]


_MISSING = {
    "name": "name is required",
    "when": "when.type is required",
    "notify": "notify must be a non-empty list",
    "channels": "channels must be a non-empty list",
}
_ORDER = (
    "name",
    "unknown keys",
    "description",
    "when",
    "notify",
    "channels",
    "bypass_quiet_hours",
    "acknowledge_within",
    "escalate_to",
)


def _messages(error: ValidationError) -> list[str]:
    """careloop's messages for one rule's validation errors, in the order of the rule's keys."""
    found: dict[str, list[str]] = {}
    unknown_keys = []
    for item in error.errors():
        key = item["loc"][0] if item["loc"] else ""
        if item["type"] in ("extra_forbidden", "invalid_key"):  # a key no rule has (or not text)
            unknown_keys.append(key)
        elif item["type"] == PROBLEM_TYPE:
            found.setdefault(str(key), []).extend(item["msg"].split("\n"))
        elif item["type"] == "missing" and key in _MISSING:
            found.setdefault(str(key), []).append(_MISSING[str(key)])
        else:  # a shape pydantic refused before careloop's validators saw it
            found.setdefault(str(key), []).append(f"{key}: {item['msg']}")
    if unknown_keys:
        found["unknown keys"] = [f"unknown keys {sorted(unknown_keys, key=str)}"]
    return [message for key in _ORDER for message in found.get(key, [])]


def parse_rules(document, source: str = "rules") -> Rules:
    """Validate a parsed YAML document. Raises RulesError listing every problem by rule."""
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        raise RulesError(["the file must be a mapping with a 'rules' list"], source)
    rules, errors, seen = [], [], set()
    for index, raw in enumerate(document["rules"]):
        if not isinstance(raw, dict):
            errors.append(f"rule #{index + 1}: must be a mapping")
            continue
        name = raw.get("name")
        label = f"rule {name!r}" if isinstance(name, str) and name else f"rule #{index + 1}"
        messages = []
        if isinstance(name, str) and name.strip():
            if name in seen:
                messages.append("name is used twice")
            seen.add(name)
        try:
            rule = Rule.model_validate(raw)
        except ValidationError as exc:
            messages += _messages(exc)
        else:
            if not messages:
                rules.append(rule)
        errors += [f"{label}: {message}" for message in messages]
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
