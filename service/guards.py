"""Input no route should ever see, refused as a 4xx and never a 500.

- Request bodies are strict JSON (RFC 8259): not JSON at all, nested past the parser's limit,
  ``NaN``/``Infinity``, or a key given twice in one object (``"severity": "low", "severity":
  "urgent"`` would silently keep the last) → 400 naming what is wrong. The body is parsed when
  a route asks for it, that is after authentication and the admin check, so a caller that may
  not use a route learns nothing from its body.
- Path segments that cannot be a careloop id match no route (404); every query is checked
  by its route's schema (a NUL, which PostgreSQL text cannot hold, included).
"""

from __future__ import annotations

import json

from apiflask import APIFlask, abort
from flask import Request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import BaseConverter
from werkzeug.wsgi import LimitedStream


class BodyError(ValueError):
    """A request body careloop does not read as JSON (→ 400); ``field`` names where, if known."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class _Object(dict):
    """A JSON object that remembers the first key it was given twice."""

    repeated: str | None = None


def _object(pairs: list[tuple[str, object]]) -> _Object:
    obj = _Object()
    for key, value in pairs:
        if key in obj and obj.repeated is None:
            obj.repeated = key
        obj[key] = value
    return obj


def _not_a_number(name: str):
    raise BodyError(f"{name} is not a JSON number")


def _first_repeated_key(document: object) -> str | None:
    """The dotted path (pydantic's style) of the first key given twice, if any (iterative:
    documents may be nested nearly as deep as the parser allows)."""
    stack: list[tuple[object, str]] = [(document, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, _Object) and value.repeated is not None:
            return f"{path}.{value.repeated}" if path else value.repeated
        if isinstance(value, dict):
            children = list(value.items())
        else:
            children = list(enumerate(value)) if isinstance(value, list) else []
        for key, item in reversed(children):
            stack.append((item, f"{path}.{key}" if path else str(key)))
    return None


def strict_loads(s: str | bytes, **kwargs):
    """JSON as careloop reads a request body (see the module docstring; ``careloop import``
    reads each row so too).

    Raises:
        BodyError: naming what is wrong (and the key given twice, as ``field``).
    """
    if not s.strip():
        raise BodyError("a JSON request body is required")
    try:
        document = json.loads(s, object_pairs_hook=_object, parse_constant=_not_a_number, **kwargs)
    except RecursionError as exc:
        raise BodyError("the request body is nested too deeply") from exc
    except BodyError:
        raise
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise BodyError("the request body is not valid JSON") from exc
    repeated = _first_repeated_key(document)
    if repeated is not None:
        raise BodyError("this key is given more than once", field=repeated)
    return document


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON, reading request bodies strictly (see the module docstring)."""

    def loads(self, s: str | bytes, **kwargs):
        return strict_loads(s, **kwargs)


JSON_MEDIA_TYPE = "application/json"
"""What a JSON body's Content-Type must say (Flask also reads ``application/…+json``)."""


class CareloopRequest(Request):
    """Flask's request, answering a body it cannot read with careloop's JSON 400, and a
    streamed body over the size limit with 413 (werkzeug would cut it at the limit and hand
    on the truncated start, read as "not valid JSON")."""

    def get_data(self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False):
        data = super().get_data(cache=cache, as_text=as_text, parse_form_data=parse_form_data)
        stream = self.stream
        # Without a Content-Length (chunked), the stream is cut at MAX_CONTENT_LENGTH: a body
        # that reached it did not fit.
        if self.content_length is None and isinstance(stream, LimitedStream) and stream.is_exhausted:
            raise RequestEntityTooLarge()
        return data

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True):
        if not self.is_json and not silent:
            # apiflask reads bodies with force=True; a body careloop reads must say it is JSON.
            self.on_json_loading_failed(None)
        document = super().get_json(force=force, silent=silent, cache=cache)
        if document is None and not silent:
            # Every careloop body is an object; apiflask would read a bare `null` as `{}`.
            abort(422, "Validation error", detail={"json": {"": ["a JSON object is required, not null"]}})
        return document

    def on_json_loading_failed(self, e: ValueError | None):
        if e is None:  # Flask's way of saying the Content-Type is not JSON
            abort(415, f"the request body must be {JSON_MEDIA_TYPE}, not {self.mimetype or 'untyped'}")
        if isinstance(e, BodyError) and e.field:
            abort(400, "the request body gives a key twice", detail={"json": {e.field: [e.message]}})
        abort(400, e.message if isinstance(e, BodyError) else "the request body is not valid JSON")


ID_PATTERN = r"^[A-Za-z0-9_-]{1,40}$"
"""The shape of a careloop id in a path (``nb_…``, ``mem_…``, ``evt_…``, ``dlv_…``)."""


class IdConverter(BaseConverter):
    """``<id:notebook_id>``: a path segment that can be a careloop id. Any other segment (a NUL,
    a slash, 3,000 characters) matches no route and is a 404 like any unknown URL, before
    authentication and before anything looks it up."""

    regex = ID_PATTERN[1:-1]


def init_app(app: APIFlask) -> None:
    """Install the strict JSON reading and the ``id`` path converter (before any route)."""
    app.request_class = CareloopRequest
    app.json = StrictJSONProvider(app)
    app.url_map.converters["id"] = IdConverter
