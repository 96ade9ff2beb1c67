"""Input no route should ever see, refused before validation so it is a 4xx and not a 500:
NUL characters (PostgreSQL text cannot hold them; no careloop id contains one), bodies that
are not JSON, and JSON nested past the parser's recursion limit."""

from __future__ import annotations

from apiflask import APIFlask, abort
from flask import request

NUL_MESSAGE = "must not contain NUL characters"
UNCHECKED_BLUEPRINTS = ("twilio",)
"""Form-encoded, signed by Twilio: its own route validates it."""


def _nul_path(value, path: str = "") -> str | None:
    """The dotted path (pydantic's style: ``data.attendees.0``) of the first NUL, if any."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return name.replace("\x00", "\\0")
            found = _nul_path(item, name)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_path(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


def init_app(app: APIFlask) -> None:
    @app.before_request
    def _refuse_unusable_input():
        if any(isinstance(v, str) and "\x00" in v for v in (request.view_args or {}).values()):
            abort(404, "not found")
        for name, value in request.args.items(multi=True):
            if "\x00" in name or "\x00" in value:
                abort(422, "Validation error", detail={"query": {name.replace("\x00", "\\0"): [NUL_MESSAGE]}})
        if request.blueprint in UNCHECKED_BLUEPRINTS or not request.get_data(cache=True):
            return
        try:
            body = request.get_json(force=True, silent=True)
        except RecursionError:
            abort(400, "the request body is nested too deeply")
        if body is None and request.get_data(cache=True).strip() != b"null":
            abort(400, "the request body is not valid JSON")
        path = _nul_path(body)
        if path:
            abort(422, "Validation error", detail={"json": {path: [NUL_MESSAGE]}})
