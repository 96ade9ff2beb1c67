"""What ``/openapi.json`` says beyond what apiflask derives from each route, so that the
document describes every answer careloop can give (schemathesis holds it to that):

- a JSON request body is required, may be refused as 400 (not JSON careloop reads: see
  ``guards``) and any body as 413 (over ``MAX_CONTENT_LENGTH``);
- every path id has the shape of a careloop id (other paths match no route: 404);
- ``createEvent`` takes an ``Idempotency-Key`` header and answers with ``Location`` and, for a
  replay, ``Idempotent-Replayed``.
"""

from __future__ import annotations

from apiflask import APIFlask

from careloop.service.checkins import REPLY_BODY
from careloop.service.events import IDEMPOTENCY_KEY
from careloop.service.guards import ID_PATTERN
from careloop.service.sources import HL7_ACK, WEBHOOK_BODY, WEBHOOK_HEADERS

ERROR = {"$ref": "#/components/schemas/HTTPError"}

BODY_ERRORS = {
    "400": "The body is not JSON careloop reads: missing, not JSON, a key given twice, NaN or "
    "Infinity, or nested too deeply",
    "413": "The body is larger than careloop takes",
    "415": "The body is not `application/json`",
}

CREATE_EVENT_HEADERS = {
    "Location": {"description": "the event's URL", "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "`true` when this answers a repeat of an earlier request (same Idempotency-Key)",
        "schema": {"type": "string", "enum": ["true"]},
    },
}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def complete(spec: dict) -> dict:
    for operations in spec["paths"].values():
        for operation in operations.values():
            if operation.get("operationId") == "receiveWebhook":  # read raw, verified before parsing
                operation.setdefault("parameters", []).extend(WEBHOOK_HEADERS)
                operation["requestBody"] = WEBHOOK_BODY
                replayed = operation["responses"]["200"]
                replayed["content"] = operation["responses"]["202"]["content"]
                replayed["headers"] = {"Idempotent-Replayed": CREATE_EVENT_HEADERS["Idempotent-Replayed"]}
                for status in ("200", "202", "415", "422"):  # an hl7v2 source answers with an ACK
                    answered = operation["responses"].setdefault(status, _error(""))
                    answered["content"] = {**answered.get("content", {}), **HL7_ACK}
            if operation.get("operationId") == "replyToCheckin":  # read raw: an iTIP REPLY
                operation["requestBody"] = REPLY_BODY
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "checkin_id":  # the sender's own id
                    parameter["schema"] = {"type": "string", "minLength": 1, "maxLength": 200}
                elif parameter["in"] == "path" and parameter["name"].endswith("_id"):
                    parameter["schema"] = {"type": "string", "pattern": ID_PATTERN, "maxLength": 40}
            body = operation.get("requestBody")
            if body is not None:
                body["required"] = True
                kinds = body.get("content", {})
                for status, description in BODY_ERRORS.items():
                    if status in ("400", "415") and "application/json" not in kinds:
                        continue
                    operation["responses"].setdefault(status, _error(description))
            if operation.get("operationId") == "createEvent":
                operation.setdefault("parameters", []).append(IDEMPOTENCY_KEY)
                operation["responses"]["202"]["headers"] = CREATE_EVENT_HEADERS
    return spec


def init_app(app: APIFlask) -> None:
    app.spec_processor(complete)
