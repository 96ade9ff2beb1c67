"""Every error is JSON: {"error", "message", "fields"?}. Validation errors name each field
(``fields``: name → messages); nothing else is ever added, so the documented error body is
exactly what comes back."""

from __future__ import annotations

import logging

from apiflask import APIFlask
from apiflask.exceptions import HTTPError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import ClientDisconnected, HTTPException

from careloop.events import EVENT_DATA

log = logging.getLogger("careloop.service")

DATABASE_RETRY_AFTER = 5
"""Seconds a client is asked to wait (Retry-After) while the database is unavailable."""

ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def _field_name(name: str, messages: list[str]) -> str:
    # A discriminated union puts the event type in front of the path ("medication.changed.data.dose").
    for event_type in EVENT_DATA:
        if name.startswith(event_type + "."):
            return name[len(event_type) + 1 :]
    if name in ("", "_schema"):  # pydantic's root location; apiflask calls it "_schema"
        return "type" if any("tag" in m or "discriminator" in m for m in messages) else "body"
    return name


def _fields(detail) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    if not isinstance(detail, dict):
        return fields
    for location, errors in detail.items():
        if not isinstance(errors, dict):
            continue
        for name, messages in errors.items():
            messages = messages if isinstance(messages, list) else [str(messages)]
            key = _field_name(str(name), messages)
            if location == "headers":
                key = "header." + key
            elif location == "query":
                key = "query." + key
            fields.setdefault(key, []).extend(messages)
    return fields


def error_body(status: int, message: str, detail: dict | None = None) -> dict:
    """The JSON body of a 4xx/5xx answer; ``detail`` as apiflask gives it (location → field →
    messages), e.g. ``{"json": {"data.severity": ["…"]}}``."""
    body = {"error": ERROR_NAMES.get(status, "error"), "message": message}
    fields = _fields(detail)
    if fields:
        body["fields"] = fields
    return body


def validation_detail(errors: list[dict]) -> dict[str, list[str]]:
    """pydantic's errors as apiflask reports a request body's (dotted path → messages), so a
    body validated by hand is answered exactly as one validated by ``@input``."""
    detail: dict[str, list[str]] = {}
    for error in errors:
        path = ".".join(str(part) for part in error["loc"]) or "_schema"
        detail.setdefault(path, []).append(error["msg"])
    return detail


def init_app(app: APIFlask) -> None:
    @app.error_processor
    def _api_error(error: HTTPError):
        return error_body(error.status_code, error.message, error.detail), error.status_code, error.headers

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        if isinstance(error, ClientDisconnected):  # the body stopped coming (WEB_READ_TIMEOUT)
            return {"error": ERROR_NAMES[408], "message": "the request body did not arrive in time"}, 408
        code = error.code or 500
        # Keep what the error says about the resource (a 405's Allow), not its HTML content type.
        headers = [(k, v) for k, v in error.get_headers() if k.lower() != "content-type"]
        return {"error": ERROR_NAMES.get(code, "error"), "message": error.description}, code, headers

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(PoolTimeoutError)
    def _database_unavailable(error: Exception):
        # The database is restarting or out of reach: the request changed nothing (its
        # transaction never committed), so the client can simply send it again.
        log.warning("database unavailable: %s", type(error).__name__)
        body = {"error": "unavailable", "message": "the database is unavailable; try again shortly"}
        return body, 503, {"Retry-After": str(DATABASE_RETRY_AFTER)}

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error")
        return {"error": "internal_error", "message": "something went wrong; it has been logged"}, 500
