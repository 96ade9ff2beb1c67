"""The ``mapping`` source kind: a clinic's own JSON (an IEP system, a school's tool), read by a
declarative field mapping saved with the source.

A mapping is a list of rules; the first whose ``when`` matches the body makes one event of the
rule's ``type``, each ``data`` field taken from a path in the body (JSONPath-lite: ``$.student.id``,
``$.goals[0].title``, ``$.team[*].id``, ``$['odd key']``; ``student.id`` means ``$.student.id``),
a constant, or a template (``"IEP goal: {$.goal.title}"``), optionally through an enum map
(``{"achieved": "met", "*": "progress"}``) with a ``default`` when the body has nothing there. The
notebook is the source's, or chosen by ``notebook_by`` (a path) through ``notebooks`` (value →
notebook id), as a FHIR source's ``patients`` does.

Two checks, both naming the exact field: :func:`problems` when the source is saved (a rule whose
type has no such field, a required field left unmapped, a constant, map value or default the
event type can never accept, a rule nobody reaches), and :func:`apply` when a body arrives (a
missing value, a value not in the map, data the event type refuses). Nothing here reads the
database or knows about webhooks: ``careloop.inbound`` turns a :class:`Mapped` into an event.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_serializer,
    model_validator,
)

from careloop.events import EVENT_DATA, EventType, MemberId, Timestamp
from careloop.text import identifier

MAX_RULES = 20
"""Rules one mapping may hold."""

MAX_MAP_ENTRIES = 500
"""Entries in one enum map, and in ``notebooks``."""

MAX_PATH = 300
"""Characters in one path."""

MAX_TEXT = 2000
"""Characters in a constant string or a template."""

WILDCARD_LIMIT = 100
"""Values one ``[*]`` path may gather (an attendee list is at most 100 members)."""

OTHERWISE = "*"
"""The enum map key that catches every value the map does not name."""

Scalar = StrictStr | StrictInt | StrictFloat | StrictBool
ConstValue = (
    Annotated[StrictStr, Field(max_length=MAX_TEXT)]
    | StrictInt
    | StrictFloat
    | StrictBool
    | Annotated[list[Annotated[StrictStr, Field(max_length=MAX_TEXT)]], Field(max_length=WILDCARD_LIMIT)]
)
"""A constant: a string, number, boolean, or a list of strings (attendees)."""

MapKey = Annotated[str, Field(min_length=1, max_length=200)]


# --- paths ---------------------------------------------------------------------------------

_STEP = re.compile(
    r"""\.(?P<name>[A-Za-z_][A-Za-z0-9_-]*)   # .name
      | \[(?P<index>-?[0-9]{1,6})\]            # [0], [-1]
      | \[(?P<quote>['"])(?P<key>(?:(?!(?P=quote)).){1,200})(?P=quote)\]   # ['any key']
      | (?P<all>\[\*\])                         # [*]
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Path:
    """A parsed JSONPath-lite path: names, indexes and ``[*]`` from the document's root."""

    text: str
    steps: tuple[str | int | None, ...]
    """A name, an index, or None for ``[*]``."""

    @property
    def many(self) -> bool:
        """Whether it may find several values (it has a ``[*]``)."""
        return None in self.steps

    def find(self, document: object) -> list[object]:
        """The values the path finds in ``document`` (null counts as nothing)."""
        found = [document]
        for step in self.steps:
            following: list[object] = []
            for value in found:
                if step is None:
                    if isinstance(value, list):
                        following.extend(value)
                elif isinstance(step, int):
                    if isinstance(value, list) and -len(value) <= step < len(value):
                        following.append(value[step])
                elif isinstance(value, dict) and step in value:
                    following.append(value[step])
            found = following
        return [value for value in found if value is not None][:WILDCARD_LIMIT]


def parse_path(text: str) -> Path:
    """``$.a.b[0]``, ``$['a b'][*]``, or the dotted ``a.b`` (read as ``$.a.b``). Raises ValueError."""
    rest = text if text.startswith("$") else "$." + text
    position, steps = 1, []
    while position < len(rest):
        match = _STEP.match(rest, position)
        if match is None:
            raise ValueError(
                f"is not a path at character {position + 1 - (len(rest) - len(text))}: write $.name, "
                "$.list[0], $.list[*] or $['a key']"
            )
        if match["name"] is not None:
            steps.append(match["name"])
        elif match["index"] is not None:
            steps.append(int(match["index"]))
        elif match["key"] is not None:
            steps.append(match["key"])
        else:
            steps.append(None)
        position = match.end()
    if not steps and not text.startswith("$"):
        raise ValueError("is not a path")
    return Path(text, tuple(steps))


def _check_path(text: str) -> str:
    parse_path(text)
    return text


JsonPath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PATH,
        description="JSONPath-lite: `$.student.id`, `$.goals[0].title`, `$.team[*].id`, `$['a key']`; "
        "a dotted `student.id` means `$.student.id`",
        examples=["$.student.id"],
    ),
    AfterValidator(_check_path),
]


# --- the mapping's schema -----------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _given_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A mapping is shown as it was saved: what was not given is left out, not null.
        return {name: value for name, value in handler(self).items() if value is not None}


def _shorthand(value: object) -> object:
    """``"$.a.b"`` is ``{"path": "$.a.b"}``; any other string, number, boolean or list is a constant."""
    if isinstance(value, str) and value.startswith("$"):
        return {"path": value}
    if isinstance(value, str | int | float | bool | list):
        return {"const": value}
    return value


class ValueSpec(_Spec):
    """Where one value comes from: exactly one of ``path``, ``const`` or ``template``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"path": "$.goal.state", "map": {"achieved": "met", "*": "progress"}},
                {"const": "family"},
                {"template": "{$.goal.area}: {$.goal.title}"},
            ]
        },
    )

    path: JsonPath | None = None
    const: ConstValue | None = Field(None, description="a fixed value (null is not one)")
    template: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)] | None = Field(
        None, description="text with `{$.path}` placeholders, each replaced by the value found there"
    )
    map: Annotated[dict[MapKey, ConstValue], Field(min_length=1, max_length=MAX_MAP_ENTRIES)] | None = Field(
        None,
        description="an enum map from the value found (as text: `1`, `true`) to the value careloop "
        f'takes; `"{OTHERWISE}"` catches every other value; a value it does not name is unmappable',
    )
    default: ConstValue | None = Field(None, description="the value when the body has none there")

    @model_validator(mode="after")
    def _one_source(self) -> ValueSpec:
        given = [name for name in ("path", "const", "template") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of path, const or template")
        if self.const is not None and (self.map is not None or self.default is not None):
            raise ValueError("a const takes no map or default")
        return self


Value = Annotated[
    ValueSpec,
    BeforeValidator(
        _shorthand,
        json_schema_input_type=ValueSpec | str | int | float | bool | list[str],  # type: ignore[arg-type]
    ),
]
"""A value spec, or its shorthand: a ``$…`` string is a path, anything else a constant."""


class When(_Spec):
    """Which bodies a rule is for: the value at ``path`` equals one value, is one of several, or
    exists (or not)."""

    path: JsonPath
    equals: Scalar | None = None
    one_of: Annotated[list[Scalar], Field(min_length=1, max_length=MAX_MAP_ENTRIES)] | None = None
    exists: StrictBool | None = None

    @model_validator(mode="after")
    def _one_test(self) -> When:
        if sum(test is not None for test in (self.equals, self.one_of, self.exists)) != 1:
            raise ValueError("give exactly one of equals, one_of or exists")
        return self

    def matches(self, document: object) -> bool:
        found = parse_path(self.path).find(document)
        if self.exists is not None:
            return bool(found) == self.exists
        wanted = [self.equals] if self.one_of is None else self.one_of
        return any(_same(value, other) for value in found for other in wanted)


def _same(a: object, b: object) -> bool:
    # JSON's true is not 1: compare type and value.
    return type(a) is type(b) and a == b or (_number(a) and _number(b) and a == b)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class EventRule(_Spec):
    """One kind of body and the event it becomes."""

    when: When | None = Field(None, description="which bodies it is for; absent: every body")
    type: Literal[tuple(t.value for t in EventType)] = Field(description="the event it makes")  # type: ignore[valid-type]
    data: Annotated[dict[Annotated[str, Field(max_length=100)], Value], Field(max_length=30)] = Field(
        description="the event's data fields, each from a path, a constant or a template"
    )
    occurred_at: Value | None = Field(None, description="when it happened (absent: when received)")
    author_member_id: Value | None = Field(None, description="the member who wrote it")


class MappingSpec(_Spec):
    """A ``mapping`` source's field mapping (see ``careloop.mapping_inbound``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {
                            "when": {"path": "$.kind", "equals": "goal_progress"},
                            "type": "goal.updated",
                            "data": {
                                "goal": "$.goal.title",
                                "status": {
                                    "path": "$.goal.state",
                                    "map": {"achieved": "met", "*": "progress"},
                                },
                                "note": "$.comment",
                            },
                            "occurred_at": "$.recorded_at",
                        }
                    ],
                    "notebook_by": "$.student.id",
                    "notebooks": {"S-1042": "nb_4f1c2a9e8b7d6c5a4f3e"},
                }
            ]
        },
    )  # fmt: skip

    events: Annotated[list[EventRule], Field(min_length=1, max_length=MAX_RULES)] = Field(
        description="rules, tried in order: the first whose `when` matches makes the event"
    )
    notebook_by: JsonPath | None = Field(
        None, description="the path whose value chooses the notebook through `notebooks`"
    )
    notebooks: (
        Annotated[dict[MapKey, identifier()], Field(min_length=1, max_length=MAX_MAP_ENTRIES)] | None  # type: ignore[valid-type]
    ) = Field(None, description="the value at `notebook_by` (as text) → notebook id")


# --- save time ----------------------------------------------------------------------------


@cache
def _adapter(event_type: str, field: str) -> TypeAdapter:
    """A validator of one data field alone (its model validators, which look at several, aside)."""
    info = EVENT_DATA[event_type].model_fields[field]
    if not info.metadata:
        return TypeAdapter(info.annotation)
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)])


def _is_list(event_type: str, field: str) -> bool:
    annotation = EVENT_DATA[event_type].model_fields[field].annotation
    return getattr(annotation, "__origin__", None) is list


def _refusal(adapter: TypeAdapter, value: object) -> str | None:
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        return "; ".join(error["msg"] for error in exc.errors(include_input=False, include_url=False))
    return None


def _value_problems(spec: ValueSpec, adapter: TypeAdapter, many: bool, where: str) -> dict[str, list[str]]:
    """What a value spec can never give that ``adapter`` accepts (``many``: a list field)."""
    found: dict[str, list[str]] = {}

    def check(value: object, at: str, element: bool = False) -> None:
        why = _refusal(adapter, [value] if element else value)
        if why:
            found.setdefault(at, []).append(f"can never be valid here: {why}")

    if spec.const is not None:
        check(spec.const, f"{where}.const")
    if spec.path is not None:
        path = parse_path(spec.path)
        if path.many and not many:
            found.setdefault(f"{where}.path", []).append("takes one value, but [*] may find several")
    for key, value in (spec.map or {}).items():
        check(value, f"{where}.map.{key}", element=many and not isinstance(value, list))
    if spec.default is not None:
        check(spec.default, f"{where}.default", element=many and not isinstance(spec.default, list))
    return found


OCCURRED_AT = TypeAdapter(Timestamp)
AUTHOR = TypeAdapter(MemberId)


def problems(spec: MappingSpec, prefix: str = "mapping") -> dict[str, list[str]]:
    """What makes a mapping unable ever to produce a valid event, by the dotted field of the
    mapping at fault (``mapping.events.0.data.status.map.done``); empty when there is nothing."""
    found: dict[str, list[str]] = {}

    def add(more: dict[str, list[str]]) -> None:
        for key, messages in more.items():
            found.setdefault(key, []).extend(messages)

    for number, rule in enumerate(spec.events):
        where = f"{prefix}.events.{number}"
        model = EVENT_DATA[rule.type]
        for name, value in rule.data.items():
            if name not in model.model_fields:
                fields = ", ".join(model.model_fields)
                add({f"{where}.data.{name}": [f"is not a field of {rule.type} (its fields: {fields})"]})
                continue
            add(
                _value_problems(
                    value, _adapter(rule.type, name), _is_list(rule.type, name), f"{where}.data.{name}"
                )
            )
        for name, info in model.model_fields.items():
            if info.is_required() and name not in rule.data:
                add(
                    {
                        f"{where}.data.{name}": [
                            f"is required by {rule.type}: map it from a path or give a constant"
                        ]
                    }
                )
        if rule.occurred_at is not None:
            add(_value_problems(rule.occurred_at, OCCURRED_AT, False, f"{where}.occurred_at"))
        if rule.author_member_id is not None:
            add(_value_problems(rule.author_member_id, AUTHOR, False, f"{where}.author_member_id"))
        if rule.when is None and number < len(spec.events) - 1:
            add(
                {
                    f"{prefix}.events.{number + 1}": [
                        f"is never reached: rule {number} has no when and takes every body"
                    ]
                }
            )
    if (spec.notebook_by is None) != (spec.notebooks is None):
        missing = "notebooks" if spec.notebooks is None else "notebook_by"
        add({f"{prefix}.{missing}": ["notebook_by and notebooks go together"]})
    elif spec.notebook_by is not None and parse_path(spec.notebook_by).many:
        add({f"{prefix}.notebook_by": ["must find one value, not [*]"]})
    return found  # fmt: skip


# --- receive time -------------------------------------------------------------------------


class MappingError(Exception):
    """A body the mapping cannot turn into an event; ``fields``: messages by the event's field
    (``data.status``), each naming the path it came from. Never the body's values."""

    def __init__(self, reason: str, fields: dict[str, list[str]]):
        super().__init__(reason)
        self.reason = reason
        self.fields = fields


@dataclass(frozen=True)
class Mapped:
    """The event one body means."""

    notebook_id: str
    event_type: str
    data: dict
    occurred_at: Any = None
    author_member_id: str | None = None


class _Missing(Exception):
    pass


def _as_key(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    return None


_PLACEHOLDER = re.compile(r"\{(\$[^{}]*)\}")


def _resolve(spec: ValueSpec, document: object) -> object:
    """The value ``spec`` gives for ``document``. Raises _Missing, or ValueError (the reason)."""
    if spec.const is not None:
        return spec.const
    if spec.template is not None:

        def fill(match: re.Match) -> str:
            values = parse_path(match[1]).find(document)
            key = _as_key(values[0]) if len(values) == 1 else None
            if key is None:
                raise _Missing
            return key

        try:
            return _PLACEHOLDER.sub(fill, spec.template)
        except _Missing:
            if spec.default is not None:
                return spec.default
            raise
    path = parse_path(spec.path)
    found = path.find(document)
    if not found:
        if spec.default is not None:
            return spec.default
        raise _Missing
    value: object = found if path.many else found[0]
    if spec.map is None:
        return value
    if isinstance(value, list):
        return [_mapped(spec.map, item) for item in value]
    return _mapped(spec.map, value)


def _mapped(table: dict[str, object], value: object) -> object:
    key = _as_key(value)
    if key is not None and key in table:
        return table[key]
    if OTHERWISE in table:
        return table[OTHERWISE]
    raise ValueError('the value found is not in the map (add it, or a "*" entry)')


def _source_of(spec: ValueSpec) -> str:
    return spec.path or spec.template or "the constant"


def apply(spec: MappingSpec, default_notebook_id: str | None, document: object) -> Mapped:
    """The event ``document`` means under ``spec``. Raises MappingError naming the field."""
    if spec.notebook_by is not None and spec.notebooks is not None:
        found = parse_path(spec.notebook_by).find(document)
        if not found:
            message = f"{spec.notebook_by} is not in the body: the notebook cannot be chosen"
            raise MappingError(message, {"notebook_by": [message]})
        key = _as_key(found[0])
        notebook_id = spec.notebooks.get(key) if key is not None else None
        if notebook_id is None:
            message = f"the value at {spec.notebook_by} is in no notebooks entry (unknown patient)"
            raise MappingError(message, {"notebook_by": [message]})
    elif default_notebook_id is not None:
        notebook_id = default_notebook_id
    else:
        raise MappingError("the source has no notebook", {"notebook_id": ["the source has no notebook"]})
    rule = next((r for r in spec.events if r.when is None or r.when.matches(document)), None)
    if rule is None:
        tried = "; ".join(f"{r.when.path}" for r in spec.events if r.when is not None)
        message = f"no rule's when matches the body (rules look at {tried})"
        raise MappingError("no rule matches the body", {"when": [message]})

    fields: dict[str, list[str]] = {}
    data: dict[str, object] = {}
    for name, value_spec in rule.data.items():
        if name not in EVENT_DATA[rule.type].model_fields:  # a mapping saved before a check refused it
            fields.setdefault(f"data.{name}", []).append(f"is not a field of {rule.type}")
            continue
        try:
            data[name] = _resolve(value_spec, document)
        except _Missing:
            if EVENT_DATA[rule.type].model_fields[name].is_required():
                fields.setdefault(f"data.{name}", []).append(
                    f"from {_source_of(value_spec)}: not in the body"
                )
        except ValueError as exc:
            fields.setdefault(f"data.{name}", []).append(f"from {_source_of(value_spec)}: {exc}")
    if not fields:
        try:
            data = EVENT_DATA[rule.type].model_validate(data).model_dump(mode="json", exclude_none=True)
        except ValidationError as exc:
            for error in exc.errors(include_input=False, include_url=False):
                location = [str(part) for part in error["loc"]]
                spec_for = rule.data.get(location[0]) if location else None
                origin = f" (from {_source_of(spec_for)})" if spec_for is not None else ""
                key = ".".join(["data", *location]) if location else "data"
                fields.setdefault(key, []).append(error["msg"] + origin)
    extras = {}
    for name, value_spec, adapter in (
        ("occurred_at", rule.occurred_at, OCCURRED_AT),
        ("author_member_id", rule.author_member_id, AUTHOR),
    ):
        if value_spec is None:
            continue
        try:
            extras[name] = adapter.validate_python(_resolve(value_spec, document))
        except _Missing:
            continue
        except ValidationError as exc:
            messages = [e["msg"] for e in exc.errors(include_input=False, include_url=False)]
            fields.setdefault(name, []).extend(f"{m} (from {_source_of(value_spec)})" for m in messages)
        except ValueError as exc:
            fields.setdefault(name, []).append(f"from {_source_of(value_spec)}: {exc}")
    if fields:
        raise MappingError(f"the body does not map to a valid {rule.type} event", fields)
    return Mapped(notebook_id=notebook_id, event_type=rule.type, data=data, **extras)
