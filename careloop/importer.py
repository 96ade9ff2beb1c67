"""``careloop import``: a notebook's history from a CSV or JSON-lines file.

Each row is checked by the API's own request model (``EventIn``) and recorded by the intake
core (``careloop.intake.record_event``), so a row is accepted or refused exactly as
``POST /v1/notebooks/{id}/events`` would accept or refuse it, with the same field names.

Rows are idempotent: a row without an ``idempotency_key`` gets one made from its content
(``import:<sha256>``), so importing the same file twice records nothing new.

History is not news: imported events are recorded as already routed (no one is told) unless
``route`` is asked for, when they go to the queue like events posted to the API.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import update

from careloop import metrics
from careloop.db import session_scope
from careloop.events import EVENT_KINDS
from careloop.handover import hand_over_events
from careloop.intake import ROUTE_TOPIC, FieldError, IdempotencyConflict, record_event
from careloop.models import Event, Notebook, OutboxEntry, utcnow
from careloop.runtime import Runtime
from careloop.service.guards import BodyError, strict_loads
from careloop.service.schemas import EventIn

KEY_PREFIX = "import:"
"""How the idempotency keys made for rows without one start."""

COLUMNS = ("type", "data", "occurred_at", "author_member_id", "idempotency_key")
"""The columns (CSV) or keys (JSON lines) of a row; CSV may also spell data fields as
``data.<field>`` columns."""


class ImportFileError(ValueError):
    """The file as a whole cannot be read (not CSV, not JSON lines, no ``type`` column)."""


@dataclass
class Row:
    """One row as read: its line in the file, and the request it stands for (or why not)."""

    line: int
    payload: dict | None
    problem: str | None = None


@dataclass
class Summary:
    """What became of the rows: accepted (recorded now), already imported (an earlier import
    recorded them), rejected (line → reasons)."""

    accepted: int = 0
    replayed: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)


def read_rows(path: Path) -> list[Row]:
    """The rows of a ``.csv`` file, or of JSON lines (any other name: ``.jsonl``, ``.ndjson``).

    Raises:
        ImportFileError: when the file cannot be read as either.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportFileError(f"{path}: cannot be read as UTF-8 text ({type(exc).__name__})") from None
    if path.suffix.lower() == ".csv":
        return list(_csv_rows(text))
    return list(_json_rows(text))


def _csv_rows(text: str) -> Iterator[Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    names = reader.fieldnames or []
    if "type" not in names:
        raise ImportFileError("the CSV file has no 'type' column (its first line names the columns)")
    unknown = [n for n in names if n not in COLUMNS and not n.startswith("data.")]
    if unknown:
        raise ImportFileError(f"unknown CSV columns {unknown}: use {list(COLUMNS)} or data.<field>")
    for values in reader:
        line = reader.line_num
        if None in values:
            yield Row(line, None, "more cells than columns")
            continue
        payload: dict = {}
        data: dict = {}
        for name, value in values.items():
            if value is None or value == "":
                continue
            if name == "data":
                try:
                    data.update(_object(value))
                except ValueError as exc:
                    yield Row(line, None, f"data: {exc}")
                    break
            elif name.startswith("data."):
                data[name[len("data.") :]] = value
            else:
                payload[name] = value
        else:
            yield Row(line, {**payload, "data": data})


def _object(text: str) -> dict:
    """A JSON object read as the API reads a body: no key twice, no NaN or Infinity."""
    try:
        value = strict_loads(text)
    except BodyError as exc:
        if exc.field:
            raise ValueError(f"gives the key {exc.field!r} more than once") from None
        raise ValueError("is not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def _json_rows(text: str) -> Iterator[Row]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield Row(line, _object(raw))
        except ValueError as exc:
            yield Row(line, None, f"the line {exc}")


def _reasons(error: ValidationError) -> str:
    """pydantic's errors as ``field: message`` (the API's field names), never the value given."""
    reasons = []
    for item in error.errors(include_input=False, include_url=False):
        loc = [str(part) for part in item["loc"]]
        if loc and loc[0] in EVENT_KINDS:  # the union's tag, as the API leaves it out
            loc = loc[1:]
        reasons.append(f"{'.'.join(loc) or 'type'}: {item['msg']}")
    return "; ".join(reasons)


def _idempotency_key(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return KEY_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


def import_rows(
    runtime: Runtime,
    notebook_id: str,
    rows: list[Row],
    route: bool = False,
    advance: Callable[[], None] = lambda: None,
) -> Summary:
    """Record the rows' events in the notebook, each on its own (one refused row stops nothing).

    ``route``: hand the new events to the queue (the team is told); otherwise they are recorded
    as routed with no deliveries. ``advance`` is called after each row (a progress bar).

    Raises:
        LookupError: when the notebook does not exist.
    """
    summary = Summary()
    with session_scope(runtime.database_url) as session:
        notebook = session.get(Notebook, notebook_id)
        if notebook is None:
            raise LookupError(notebook_id)
        for row in rows:
            event_id = _import_row(session, notebook, row, summary)
            if event_id and not route:
                _as_history(session, event_id)  # at once: the relay never sees it pending
            advance()
        if summary.event_ids and route:
            hand_over_events(session, runtime.dispatcher, summary.event_ids)
    return summary


def _import_row(session, notebook: Notebook, row: Row, summary: Summary) -> str | None:
    """Record one row; returns the new event's id (None: refused, or imported before)."""
    if row.payload is None:
        summary.rejected.append((row.line, row.problem or "unreadable"))
        return None
    payload = dict(row.payload)
    key = payload.pop("idempotency_key", None)
    try:
        item = EventIn.model_validate(payload).root
    except ValidationError as exc:
        summary.rejected.append((row.line, _reasons(exc)))
        return None
    request = {
        "event_type": item.type,
        "data": item.data.model_dump(mode="json", exclude_none=True),
        "occurred_at": item.occurred_at,
        "author_member_id": item.author_member_id,
    }
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 200 or not key.isprintable()):
        summary.rejected.append((row.line, "idempotency_key: must be 1 to 200 printable characters"))
        return None
    try:
        event, created = record_event(
            session, notebook, **request, idempotency_key=key or _idempotency_key(request)
        )
    except FieldError as exc:
        summary.rejected.append((row.line, f"{exc.field}: {exc.message}"))
        return None
    except IdempotencyConflict:
        summary.rejected.append((row.line, "idempotency_key: used before for a different event"))
        return None
    if not created:
        summary.replayed += 1
        return None
    summary.accepted += 1
    summary.event_ids.append(event.id)
    metrics.event_accepted(event.type, "import")
    return event.id


def _as_history(session, event_id: str) -> None:
    """Imported history: routed to no one, nothing left for the relay to hand over."""
    now = utcnow()
    session.execute(update(Event).where(Event.id == event_id).values(routed_at=now))
    session.execute(
        update(OutboxEntry)
        .where(OutboxEntry.topic == ROUTE_TOPIC, OutboxEntry.ref_id == event_id)
        .values(done_at=now)
    )
    session.commit()
