"""Input no route should ever see, refused as a 4xx and never a 500.

- Request bodies are strict JSON (RFC 8259): not JSON at all, nested past the parser's limit,
  ``NaN``/``Infinity``, or a key given twice in one object (``"severity": "low", "severity":
  "urgent"`` would silently keep the last) → 400 naming what is wrong. The body is parsed when
  a route asks for it, that is after authentication and the admin check, so a caller that may
  not use a route learns nothing from its body.
- NUL characters in the path or the query (PostgreSQL text cannot hold them; no careloop id
  contains one) → 404 or 422.
"""

from __future__ import annotations

import json

from apiflask import APIFlask, abort
from flask import Request, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream

NUL_MESSAGE = "must not contain NUL characters"


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


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON, reading request bodies strictly (see the module docstring)."""

    def loads(self, s: str | bytes, **kwargs):
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

    def on_json_loading_failed(self, e: ValueError | None):
        if isinstance(e, BodyError) and e.field:
            abort(400, "the request body gives a key twice", detail={"json": {e.field: [e.message]}})
        abort(400, e.message if isinstance(e, BodyError) else "the request body is not valid JSON")


def init_app(app: APIFlask) -> None:
    app.request_class = CareloopRequest
    app.json = StrictJSONProvider(app)

    @app.before_request
    def _refuse_nul():
        if any(isinstance(v, str) and "\x00" in v for v in (request.view_args or {}).values()):
            abort(404, "not found")
        for name, value in request.args.items(multi=True):
            if "\x00" in name or "\x00" in value:
                abort(422, "Validation error", detail={"query": {name.replace("\x00", "\\0"): [NUL_MESSAGE]}})
