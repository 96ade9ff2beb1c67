"""The need-to-know policy file: which details of an event each care-team role may see.

Rules decide *who is told*; the policy decides *what they may see* — on their member page,
and in their email where the notebook turns on ``email_detail``. Texts and email subjects
never carry details, whatever the policy says. Format (see README, "Security and privacy"):

    roles:
      parent: everything
      school:
        - when: {type: goal.updated}
        - when: {type: concern.raised, area: school}
        - when: {type: medication.changed}
          fields: [change]          # optional: only these data fields

``when`` matches events exactly as a rule's ``when`` does (it is the same model). Every
role must be listed: ``everything``, or a list of grants (an empty list shows that role no
details at all). An event no grant matches is shown as its kind, author, time and who was
told — never its data. Problems are reported all at once, one line each, named by role.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from careloop.events import EVENT_DATA
from careloop.rules import PROBLEM_TYPE, When
from careloop.vocabulary import ROLES

EVERYTHING = "everything"
"""A role that sees every event in full (parents and guardians by default)."""


class PolicyError(ValueError):
    """A policy file is not valid; the message names the role and what is wrong."""

    def __init__(self, errors: list[str], source: str = "policy"):
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


class Grant(BaseModel):
    """Events matching ``when`` are shown to the role: all their data, or only ``fields``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    when: When
    fields: tuple[str, ...] | None = None

    @field_validator("fields", mode="before")
    @classmethod
    def _fields(cls, value, info):
        if value is None:
            return None
        if not isinstance(value, list) or not value or not all(isinstance(f, str) for f in value):
            raise PydanticCustomError(PROBLEM_TYPE, "fields must be a non-empty list of data field names")
        when = info.data.get("when")
        if when is not None:
            for event_type in when.types:
                unknown = [f for f in value if f not in EVENT_DATA[event_type].model_fields]
                if unknown:
                    raise PydanticCustomError(
                        PROBLEM_TYPE, f"fields {unknown} are not data fields of {event_type.value}"
                    )
        return tuple(value)


@dataclass(frozen=True)
class Policy:
    """Role → ``None`` (everything) or its grants."""

    roles: dict[str, tuple[Grant, ...] | None]

    def visible_fields(self, role: str, event_type: str, data: dict) -> tuple[str, ...]:
        """The data fields of this event that a member with ``role`` may see, in the event
        type's own order; empty when they may see only that it happened. A role the policy
        does not know (it cannot happen with a checked file) sees nothing."""
        all_fields = tuple(EVENT_DATA[event_type].model_fields)
        if role not in self.roles:
            return ()
        grants = self.roles[role]
        if grants is None:
            return all_fields
        shown: set[str] = set()
        for grant in grants:
            if grant.when.matches(event_type, data):
                shown.update(grant.fields or all_fields)
        return tuple(f for f in all_fields if f in shown)


def _grant_messages(error: ValidationError) -> list[str]:
    messages, unknown = [], []
    for item in error.errors():
        key = item["loc"][0] if item["loc"] else ""
        if item["type"] in ("extra_forbidden", "invalid_key"):
            unknown.append(key)
        elif item["type"] == PROBLEM_TYPE:
            messages.extend(item["msg"].split("\n"))
        elif item["type"] == "missing" and key == "when":
            messages.append("when.type is required")
        else:
            messages.append(f"{key}: {item['msg']}")
    if unknown:
        messages.insert(0, f"unknown keys {sorted(unknown, key=str)} (a grant has 'when' and 'fields')")
    return messages


def parse_policy(document, source: str = "policy") -> Policy:
    """Validate a parsed YAML document. Raises PolicyError listing every problem by role."""
    if not isinstance(document, dict) or not isinstance(document.get("roles"), dict):
        raise PolicyError(["the file must be a mapping with a 'roles' mapping"], source)
    errors: list[str] = []
    unknown_top = sorted(str(k) for k in document if k != "roles")
    if unknown_top:
        errors.append(f"unknown keys {unknown_top} (the file has only 'roles')")
    roles: dict[str, tuple[Grant, ...] | None] = {}
    for key, raw in document["roles"].items():
        role = str(key)
        if role not in ROLES:
            errors.append(f"role {role!r} is not a care-team role (roles: {', '.join(ROLES)})")
            continue
        if raw == EVERYTHING:
            roles[role] = None
            continue
        if not isinstance(raw, list):
            errors.append(f"role {role!r}: must be '{EVERYTHING}' or a list of grants")
            continue
        grants = []
        for index, item in enumerate(raw):
            label = f"role {role!r}: grant #{index + 1}"
            if not isinstance(item, dict):
                errors.append(f"{label}: must be a mapping with 'when'")
                continue
            try:
                grants.append(Grant.model_validate(item))
            except ValidationError as exc:
                errors += [f"{label}: {message}" for message in _grant_messages(exc)]
        roles[role] = tuple(grants)
    listed = {str(key) for key in document["roles"]}
    missing = [str(role) for role in ROLES if str(role) not in listed]
    if missing:
        errors.append(
            f"roles {missing} are missing: list every role ('{EVERYTHING}', or grants; [] shows no details)"
        )
    if errors:
        raise PolicyError(errors, source)
    return Policy(roles=roles)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file. Raises PolicyError (also for unreadable or bad YAML)."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError([f"cannot read: {exc.strerror}"], str(path)) from exc
    except UnicodeDecodeError as exc:
        raise PolicyError([f"cannot read: not UTF-8 text ({exc.reason})"], str(path)) from exc
    except yaml.YAMLError as exc:
        raise PolicyError([f"not valid YAML: {exc}"], str(path)) from exc
    return parse_policy(document, str(path))
