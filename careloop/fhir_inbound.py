"""The ``fhir`` source kind: FHIR R4/R4B resources and topic-based subscription notifications in.

A ``fhir`` source posts one resource, a Bundle of them (transaction, batch, collection,
searchset, history), or a subscription notification: a ``history`` (R4/R4B backport) or
``subscription-notification`` (R4B/R5) Bundle whose first entry is a SubscriptionStatus, or
the R4 backport's Parameters. Bodies are read with ``fhir.resources``' R4B models, never by
hand; what they mean:

==========================================  ===========================================
FHIR                                        careloop event
==========================================  ===========================================
MedicationRequest, MedicationStatement      ``medication.changed``: ``started`` (active),
                                            ``dose_changed`` (active, replacing an earlier
                                            one), ``stopped`` (stopped, cancelled,
                                            completed, on-hold, not-taken)
Appointment booked                          ``checkin.scheduled``, or ``checkin.updated``
                                            when the check-in is already scheduled
Appointment cancelled / entered-in-error    ``checkin.cancelled``
Flag (active)                               ``concern.raised``
Communication                               ``note.added`` (a patient's in the child's
                                            voice, a related person's in the family's)
==========================================  ===========================================

Which notebook: the source's own ``notebook_id``, or its ``patients`` map from ``Patient/<id>``
or ``<system>|<value>`` (an identifier) to a notebook. Appointment participants become the
check-in's attendees when their actor is contained or included in the body with an email or
phone (``telecom``) that is a member's. Handshake, heartbeat and query-status notifications
are answered and recorded with no events; every notification's event numbers are kept on the
inbound record (:meth:`FhirEvents.details`) with the gap before them, if any.

Anything else (an unknown patient, a resource careloop does not map, invalid FHIR) raises
:class:`FhirUnmappable` (a :class:`~careloop.intake.FieldError`): the request is kept as a
rejected inbound record with the reason and answered 422. This module sits below
``careloop.inbound``, which lists :class:`FhirEvents` in its ``KIND_HANDLERS``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from careloop.contacts import normalize_email, normalize_phone
from careloop.events import EARLIEST_YEAR, EVENT_DATA, LATEST_YEAR, EventType
from careloop.intake import FieldError
from careloop.models import Checkin, InboundRecord, Member, Source

KIND = "fhir"
MEDIA_TYPES = ("application/fhir+json", "application/json")
"""FHIR's own JSON media type, and plain JSON (what many senders use)."""

PATIENT_KEY_PATTERN = r"^(Patient/[A-Za-z0-9.-]{1,64}|[^\s|]{1,200}\|[^|\x00-\x1f\x7f]{1,200})$"
"""A key of a source's ``patients`` map: ``Patient/<id>``, or ``<system>|<value>`` of an identifier."""

MAX_PATIENTS = 1000
"""Patients one source may map to notebooks."""

BUNDLE_TYPES = ("transaction", "batch", "collection", "searchset", "history", "subscription-notification")
"""Bundles whose entries are read (a document or message Bundle is refused)."""

NOTIFICATION_BUNDLE_TYPES = ("history", "subscription-notification")
SILENT_NOTIFICATIONS = ("handshake", "heartbeat", "query-status")
"""Notifications that carry no events: answered and recorded, never turned into events."""

SUPPORTING_TYPES = frozenset(
    (
        "Patient Practitioner PractitionerRole RelatedPerson Person Organization Location Medication "
        "Device Encounter HealthcareService Provenance OperationOutcome"
    ).split()
)
"""Resources a Bundle may include for the mapped ones to refer to; they make no event themselves."""

FLAG_PRIORITY = "http://hl7.org/fhir/StructureDefinition/flag-priority"
"""The core extension giving a Flag's priority (codes PN, PL, PM, PH)."""
FLAG_SEVERITY = {"PN": "low", "PL": "low", "PM": "medium", "PH": "high"}
MEDICATION_STARTED = ("active", "intended")
MEDICATION_STOPPED = ("stopped", "cancelled", "completed", "on-hold", "not-taken")
APPOINTMENT_CANCELLED = ("cancelled", "entered-in-error")
VOICES = {"Patient": "child", "RelatedPerson": "family"}
"""A Communication's voice by its sender: the patient is the child, a related person family;
anyone else (a practitioner, a device, an organization) is the team."""

RECENT_NOTIFICATIONS = 1000
"""Earlier notification records read to find the highest event number seen (gap detection)."""


class FhirUnmappable(FieldError):
    """A FHIR body careloop cannot turn into events; ``field`` is the path it is about."""


@dataclass(frozen=True)
class Draft:
    """One event a body means (the shape of ``careloop.inbound.EventDraft``)."""

    notebook_id: str
    event_type: str
    data: dict
    occurred_at: datetime | None = None
    author_member_id: str | None = None


@dataclass(frozen=True)
class Notification:
    """What a subscription notification's status says."""

    type: str
    subscription: str | None
    topic: str | None
    events_since_start: int | None
    event_numbers: list[int]

    @property
    def numbers(self) -> list[int]:
        """The event numbers it reports: its events', or (none listed) the count so far."""
        if self.event_numbers:
            return self.event_numbers
        return [self.events_since_start] if self.events_since_start is not None else []


# --- reading the body -------------------------------------------------------------------------


def _document(body: bytes) -> dict:
    def constant(name: str):
        raise ValueError(name)

    try:
        document = json.loads(body, parse_constant=constant)
    except (ValueError, RecursionError):
        raise FhirUnmappable("body", "is not FHIR JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        raise FhirUnmappable("resourceType", "is missing: the body is not a FHIR resource")
    return document


def _integer64_as_string(document: dict) -> None:
    """R5 writes a SubscriptionStatus' counters as JSON numbers, R4B as strings: read either."""
    entries = document.get("entry") if document.get("resourceType") == "Bundle" else None
    first = entries[0] if isinstance(entries, list) and entries and isinstance(entries[0], dict) else {}
    status = first.get("resource")
    if not isinstance(status, dict) or status.get("resourceType") != "SubscriptionStatus":
        return
    if isinstance(status.get("eventsSinceSubscriptionStart"), int):
        status["eventsSinceSubscriptionStart"] = str(status["eventsSinceSubscriptionStart"])
    for event in status.get("notificationEvent") or []:
        if isinstance(event, dict) and isinstance(event.get("eventNumber"), int):
            event["eventNumber"] = str(event["eventNumber"])


def parse(body: bytes):
    """The body as a ``fhir.resources`` R4B model. Raises FhirUnmappable naming the field."""
    document = _document(body)
    resource_type = document["resourceType"]
    try:
        model = get_fhir_model_class(resource_type)
    except ValueError:
        raise FhirUnmappable("resourceType", f"{resource_type!r} is not a FHIR resource type") from None
    _integer64_as_string(document)
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problem = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in problem["loc"]) or "body"
        raise FhirUnmappable(where, f"is not valid FHIR R4B {resource_type}: {problem['msg']}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError):
        # fhir.resources' own lookups fail this way on some shapes (a contained or entry
        # resource of an unknown type is a KeyError).
        raise FhirUnmappable("body", f"is not valid FHIR R4B {resource_type}") from None


def _notification(bundle) -> Notification | None:
    """The notification a Bundle is, if it is one (its first entry a SubscriptionStatus or the
    R4 backport's Parameters)."""
    if bundle.type not in NOTIFICATION_BUNDLE_TYPES or not bundle.entry or bundle.entry[0].resource is None:
        return None
    status = bundle.entry[0].resource
    kind = status.get_resource_type()
    if kind == "SubscriptionStatus":
        return Notification(
            type=status.type,
            subscription=status.subscription.reference if status.subscription else None,
            topic=status.topic,
            events_since_start=_count(status.eventsSinceSubscriptionStart),
            event_numbers=[
                n for n in (_count(e.eventNumber) for e in status.notificationEvent or []) if n is not None
            ],
        )
    if kind == "Parameters":
        values = {p.name: p for p in status.parameter or []}
        if "type" not in values:
            return None  # a history Bundle that happens to start with Parameters
        events = [p for p in status.parameter or [] if p.name == "notification-event"]
        numbers = []
        for event in events:
            part = next((q for q in event.part or [] if q.name == "event-number"), None)
            number = _count(_parameter_value(part)) if part else None
            if number is not None:
                numbers.append(number)
        subscription = values.get("subscription")
        return Notification(
            type=str(_parameter_value(values["type"])),
            subscription=subscription.valueReference.reference
            if subscription and subscription.valueReference
            else None,
            topic=_parameter_value(values["topic"]) if "topic" in values else None,
            events_since_start=_count(_parameter_value(values.get("events-since-subscription-start"))),
            event_numbers=numbers,
        )
    return None


def _parameter_value(parameter) -> Any:
    if parameter is None:
        return None
    for name in ("valueCode", "valueString", "valueCanonical", "valueUri", "valueInteger",
                 "valueUnsignedInt", "valuePositiveInt", "valueDecimal"):  # fmt: skip
        value = getattr(parameter, name, None)
        if value is not None:
            return value
    return None


def _count(value) -> int | None:
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


# --- resolving references ---------------------------------------------------------------------


def _local(reference: str | None) -> str | None:
    """``Type/id`` of a reference, relative or absolute, without its ``_history`` part."""
    if not reference or reference.startswith("#"):
        return None
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else None


@dataclass
class _Body:
    """What one request's resources may refer to: entries by full URL and by ``Type/id``."""

    included: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, entries) -> _Body:
        found = cls()
        for entry in entries:
            resource = entry.resource
            if resource is None:
                continue
            if entry.fullUrl:
                found.included[entry.fullUrl] = resource
                local = _local(entry.fullUrl)
                if local and not entry.fullUrl.startswith("urn:"):
                    found.included.setdefault(local, resource)
            if resource.id:
                found.included.setdefault(f"{resource.get_resource_type()}/{resource.id}", resource)
        return found

    def resolve(self, reference, container) -> Any | None:
        """The resource ``reference`` points at, if it is contained in ``container`` or included."""
        target = getattr(reference, "reference", None)
        if not target:
            return None
        if target.startswith("#"):
            return next((r for r in container.contained or [] if r.id == target[1:]), None)
        return self.included.get(target) or self.included.get(_local(target) or "")


# --- the kind ---------------------------------------------------------------------------------


class FhirEvents:
    """``fhir``: FHIR R4/R4B resources, Bundles and subscription notifications (see the module
    docstring). A ``careloop.inbound.SourceKind``."""

    kind: ClassVar[str] = KIND
    media_types: ClassVar[tuple[str, ...]] = MEDIA_TYPES

    def details(self, source: Source, body: bytes) -> dict | None:
        """A notification's type, subscription, event numbers and the gap before them (the
        numbers no record of this source's has carried since the highest one before), for the
        inbound record; None for a body that is not a notification or does not parse."""
        try:
            resource = parse(body)
        except FieldError:
            return None
        if resource.get_resource_type() != "Bundle":
            return None
        notification = _notification(resource)
        if notification is None:
            return None
        found = {
            "type": notification.type,
            "subscription": notification.subscription,
            "topic": notification.topic,
            "events_since_start": notification.events_since_start,
            "event_numbers": notification.event_numbers,
            "gap": None,
            "late": False,
        }
        highest = _highest_seen(object_session(source), source, notification.subscription)
        numbers = notification.numbers
        if highest is not None and numbers:
            first = min(numbers)
            if notification.type in SILENT_NOTIFICATIONS:  # the count so far: the last one is due
                if max(numbers) > highest:
                    found["gap"] = {"first": highest + 1, "last": max(numbers)}
            elif first > highest + 1:
                found["gap"] = {"first": highest + 1, "last": first - 1}
            elif first <= highest:
                found["late"] = True
        return {"notification": found}

    def events(self, source: Source, body: bytes) -> list[Draft]:
        """The events ``body`` means. Raises FhirUnmappable."""
        session = object_session(source)
        resource = parse(body)
        if resource.get_resource_type() != "Bundle":
            return _Mapper(session, source, _Body()).resource(resource, None, "")
        bundle = resource
        notification = _notification(bundle)
        entries = list(bundle.entry or [])
        if notification is not None:
            if notification.type in SILENT_NOTIFICATIONS:
                return []
            entries = entries[1:]
        elif bundle.type not in BUNDLE_TYPES:
            raise FhirUnmappable("type", f"a {bundle.type} Bundle is not one careloop reads")
        mapper = _Mapper(session, source, _Body.of(entries))
        drafts: list[Draft] = []
        offset = 1 if notification is not None else 0
        for index, entry in enumerate(entries, start=offset):
            drafts.extend(mapper.entry(entry, f"entry.{index}"))
        if not drafts:
            if notification is not None:
                raise FhirUnmappable(
                    "entry",
                    "the notification carries no resources careloop maps (send full-resource payloads)",
                )
            raise FhirUnmappable("entry", "the Bundle holds no resource careloop maps")
        return drafts


def _highest_seen(session: Session | None, source: Source, subscription: str | None) -> int | None:
    if session is None:
        return None
    rows = session.scalars(
        select(InboundRecord.details)
        .where(InboundRecord.source_id == source.id, InboundRecord.details.is_not(None))
        .order_by(InboundRecord.received_at.desc())
        .limit(RECENT_NOTIFICATIONS)
    ).all()
    highest = None
    for details in rows:
        seen = (details or {}).get("notification") or {}
        if seen.get("subscription") != subscription:
            continue
        numbers = list(seen.get("event_numbers") or [])
        if seen.get("events_since_start") is not None:
            numbers.append(seen["events_since_start"])
        if numbers:
            highest = max([*numbers, highest if highest is not None else -1])
    return highest


class _Mapper:
    """Maps one request's resources to drafts, remembering what it has scheduled so far (an
    Appointment booked and then changed in one Bundle is scheduled, then updated)."""

    def __init__(self, session: Session | None, source: Source, body: _Body):
        self.session = session
        self.source = source
        self.body = body
        self.scheduled: dict[tuple[str, str], bool] = {}
        self.members: dict[str, list[Member]] = {}

    # entries and resources

    def entry(self, entry, path: str) -> list[Draft]:
        request = entry.request
        method = (request.method or "").upper() if request else ""
        if entry.resource is None:
            local = _local(request.url) if request and request.url else None
            if method == "DELETE" and local and local.startswith("Appointment/"):
                return self._cancel_deleted(local, path)
            raise FhirUnmappable(f"{path}.resource", "is missing (careloop needs the resource itself)")
        if entry.search is not None and entry.search.mode in ("include", "outcome"):
            return []
        return self.resource(entry.resource, method, f"{path}.resource.")

    def resource(self, resource, method: str | None, path: str) -> list[Draft]:
        kind = resource.get_resource_type()
        mapper = {
            "MedicationRequest": self._medication,
            "MedicationStatement": self._medication,
            "Appointment": self._appointment,
            "Flag": self._flag,
            "Communication": self._communication,
        }.get(kind)
        if mapper is not None:
            return mapper(resource, method or "", path)
        if path and kind in SUPPORTING_TYPES:
            return []
        raise FhirUnmappable(
            f"{path}resourceType",
            f"{kind} is not a resource careloop maps "
            "(MedicationRequest, MedicationStatement, Appointment, Flag, Communication)",
        )

    # the mappings

    def _medication(self, resource, method: str, path: str) -> list[Draft]:
        notebook_id = self._notebook(resource, resource.subject, f"{path}subject")
        status = resource.status
        if status in MEDICATION_STOPPED:
            change = "stopped"
        elif status in MEDICATION_STARTED:
            revised = (
                getattr(resource, "priorPrescription", None) is not None
                or method in ("PUT", "PATCH")
                or (resource.meta is not None and resource.meta.versionId not in (None, "1"))
            )
            change = "dose_changed" if revised else "started"
        else:
            raise FhirUnmappable(
                f"{path}status", f"a {status} {resource.get_resource_type()} changes no medication"
            )
        dosages = getattr(resource, "dosageInstruction", None) or getattr(resource, "dosage", None) or []
        notes = [n.text for n in resource.note or [] if n.text]
        if status == "on-hold":
            notes.insert(0, "On hold.")
        data = {
            "medication": self._medication_name(resource, path),
            "change": change,
            "dose": _line(_dosage(dosages), 200),
            "note": _prose("\n".join(notes), 2000),
        }
        when = getattr(resource, "authoredOn", None) or getattr(resource, "dateAsserted", None)
        when = when or getattr(resource, "effectiveDateTime", None)
        return [self._draft(notebook_id, EventType.MEDICATION_CHANGED, data, path, _instant(when))]

    def _medication_name(self, resource, path: str) -> str:
        concept = resource.medicationCodeableConcept
        if concept is None and resource.medicationReference is not None:
            medication = self.body.resolve(resource.medicationReference, resource)
            concept = getattr(medication, "code", None)
            name = _line(_concept(concept) or resource.medicationReference.display, 200)
        else:
            name = _line(_concept(concept), 200)
        if not name:
            raise FhirUnmappable(f"{path}medication", "names no medication careloop can show")
        return name

    def _appointment(self, resource, method: str, path: str) -> list[Draft]:
        patient = next(
            (p.actor for p in resource.participant or [] if p.actor and _is(p.actor, "Patient")), None
        )
        notebook_id = self._notebook(resource, patient, f"{path}participant")
        checkin_id = _appointment_key(resource, path)
        if resource.status in APPOINTMENT_CANCELLED or method == "DELETE":
            self.scheduled[(notebook_id, checkin_id)] = False
            return [self._draft(notebook_id, EventType.CHECKIN_CANCELLED, {"checkin_id": checkin_id}, path)]
        if resource.status != "booked":
            raise FhirUnmappable(
                f"{path}status", f"an appointment that is {resource.status} is neither booked nor cancelled"
            )
        if resource.start is None:
            raise FhirUnmappable(f"{path}start", "is required for a booked appointment")
        end = resource.end or (
            resource.start + timedelta(minutes=resource.minutesDuration) if resource.minutesDuration else None
        )
        if end is None:
            raise FhirUnmappable(f"{path}end", "is required for a booked appointment (or minutesDuration)")
        attendees = self._attendees(resource, notebook_id)
        if not attendees:
            raise FhirUnmappable(
                f"{path}participant",
                "has no participant whose contained or included actor has a member's email or phone",
            )
        data = {
            "checkin_id": checkin_id,
            "title": _line(
                resource.description
                or next((_concept(c) for c in resource.serviceType or [] if _concept(c)), None)
                or _concept(resource.appointmentType)
                or "Appointment",
                200,
            ),
            "start": resource.start.isoformat(),
            "end": end.isoformat(),
            "location": _line(self._location(resource), 200),
            "attendees": attendees,
        }
        event_type = (
            EventType.CHECKIN_UPDATED
            if self._is_scheduled(notebook_id, checkin_id)
            else EventType.CHECKIN_SCHEDULED
        )
        self.scheduled[(notebook_id, checkin_id)] = True
        return [self._draft(notebook_id, event_type, data, path)]

    def _cancel_deleted(self, local: str, path: str) -> list[Draft]:
        if not self.source.notebook_id:
            raise FhirUnmappable(
                f"{path}.request.url",
                "a deleted Appointment names no patient (only a one-notebook source reads it)",
            )
        self.scheduled[(self.source.notebook_id, local)] = False
        return [
            self._draft(self.source.notebook_id, EventType.CHECKIN_CANCELLED, {"checkin_id": local}, path)
        ]

    def _flag(self, resource, method: str, path: str) -> list[Draft]:
        notebook_id = self._notebook(resource, resource.subject, f"{path}subject")
        if resource.status != "active":
            raise FhirUnmappable(f"{path}status", f"a Flag that is {resource.status} raises no concern")
        summary = _prose(_concept(resource.code), 2000)
        if not summary:
            raise FhirUnmappable(f"{path}code", "says nothing careloop can show")
        data = {"summary": summary, "severity": _flag_severity(resource)}
        when = _instant(resource.period.start) if resource.period else None
        return [self._draft(notebook_id, EventType.CONCERN_RAISED, data, path, when)]

    def _communication(self, resource, method: str, path: str) -> list[Draft]:
        notebook_id = self._notebook(resource, resource.subject, f"{path}subject")
        if resource.status in ("entered-in-error", "not-done"):
            raise FhirUnmappable(f"{path}status", f"a Communication that is {resource.status} adds no note")
        texts = [p.contentString for p in resource.payload or [] if p.contentString]
        text = _prose("\n\n".join(texts), 2000)
        if not text:
            raise FhirUnmappable(f"{path}payload", "has no text (contentString) careloop can show")
        sender = resource.sender
        voice = next((v for t, v in VOICES.items() if sender is not None and _is(sender, t)), "team")
        author = self._member_of(self.body.resolve(sender, resource), notebook_id) if sender else None
        data = {"text": text, "voice": voice}
        return [self._draft(notebook_id, EventType.NOTE_ADDED, data, path, _instant(resource.sent), author)]

    # notebooks, members, check-ins

    def _notebook(self, resource, patient, path: str) -> str:
        if self.source.notebook_id:
            return self.source.notebook_id
        patients = (self.source.config or {}).get("patients") or {}
        if patient is None:
            raise FhirUnmappable(path, "names no patient, and this source maps patients to notebooks")
        keys = []
        local = _local(patient.reference)
        if local:
            keys.append(local)
        if patient.identifier is not None and patient.identifier.system and patient.identifier.value:
            keys.append(f"{patient.identifier.system}|{patient.identifier.value}")
        found = self.body.resolve(patient, resource)
        if found is not None:
            if found.id:
                keys.append(f"Patient/{found.id}")
            keys += [f"{i.system}|{i.value}" for i in found.identifier or [] if i.system and i.value]
        for key in keys:
            if key in patients:
                return patients[key]
        named = local or (keys[0] if keys else "its patient")
        raise FhirUnmappable(path, f"names a patient this source does not map to a notebook ({named})")

    def _active_members(self, notebook_id: str) -> list[Member]:
        if notebook_id not in self.members:
            self.members[notebook_id] = (
                list(
                    self.session.scalars(
                        select(Member).where(Member.notebook_id == notebook_id, Member.active.is_(True))
                    )
                )
                if self.session is not None
                else []
            )
        return self.members[notebook_id]

    def _member_of(self, actor, notebook_id: str) -> str | None:
        """The member whose email or phone is one of ``actor``'s telecoms, if any."""
        emails, phones = set(), set()
        for telecom in getattr(actor, "telecom", None) or []:
            if not telecom.value:
                continue
            if telecom.system == "email":
                emails.add(_email(telecom.value))
            elif telecom.system in ("phone", "sms"):
                phones.add(_phone(telecom.value))
        for member in self._active_members(notebook_id):
            if (member.email and member.email.lower() in emails) or (member.phone and member.phone in phones):
                return member.id
        return None

    def _attendees(self, resource, notebook_id: str) -> list[str]:
        found: list[str] = []
        for participant in resource.participant or []:
            if participant.status == "declined" or participant.actor is None:
                continue
            member_id = self._member_of(self.body.resolve(participant.actor, resource), notebook_id)
            if member_id and member_id not in found:
                found.append(member_id)
        return found

    def _location(self, resource) -> str | None:
        for participant in resource.participant or []:
            if participant.actor is not None and _is(participant.actor, "Location"):
                place = self.body.resolve(participant.actor, resource)
                return getattr(place, "name", None) or participant.actor.display
        return None

    def _is_scheduled(self, notebook_id: str, checkin_id: str) -> bool:
        if (notebook_id, checkin_id) in self.scheduled:
            return self.scheduled[(notebook_id, checkin_id)]
        if self.session is None:
            return False
        row = self.session.scalars(
            select(Checkin.cancelled).where(
                Checkin.notebook_id == notebook_id, Checkin.checkin_id == checkin_id
            )
        ).first()
        return row is not None and not row

    def _draft(
        self,
        notebook_id: str,
        event_type: EventType,
        data: dict,
        path: str,
        occurred_at: datetime | None = None,
        author: str | None = None,
    ) -> Draft:
        try:
            checked = EVENT_DATA[event_type].model_validate({k: v for k, v in data.items() if v is not None})
        except ValidationError as exc:
            problem = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(part) for part in problem["loc"])
            message = f"maps to a {event_type} whose {where or 'data'} {problem['msg']}"
            raise FhirUnmappable(path.rstrip(".") or "body", message) from None
        return Draft(
            notebook_id=notebook_id,
            event_type=str(event_type),
            data=checked.model_dump(mode="json", exclude_none=True),
            occurred_at=occurred_at,
            author_member_id=author,
        )


# --- small readers ----------------------------------------------------------------------------


def _is(reference, *types: str) -> bool:
    local = _local(reference.reference) if reference.reference else None
    return (local is not None and local.split("/")[0] in types) or reference.type in types


def _appointment_key(resource, path: str) -> str:
    if resource.id:
        return f"Appointment/{resource.id}"
    identifier = next((i for i in resource.identifier or [] if i.value), None)
    if identifier is None:
        raise FhirUnmappable(
            f"{path}id", "an Appointment needs an id or identifier so its changes can follow it"
        )
    key = f"{identifier.system}|{identifier.value}" if identifier.system else identifier.value
    return _line(key, 200) or "Appointment"


def _concept(concept) -> str | None:
    if concept is None:
        return None
    if concept.text:
        return concept.text
    for coding in concept.coding or []:
        if coding.display or coding.code:
            return coding.display or coding.code
    return None


def _dosage(dosages) -> str | None:
    for dosage in dosages:
        if dosage.text:
            return dosage.text
        for rate in dosage.doseAndRate or []:
            quantity, span = rate.doseQuantity, rate.doseRange
            if quantity is not None and quantity.value is not None:
                return f"{quantity.value:g} {quantity.unit or quantity.code or ''}".strip()
            low, high = (span.low, span.high) if span is not None else (None, None)
            if low is not None and high is not None and low.value is not None and high.value is not None:
                return f"{low.value:g}-{high.value:g} {high.unit or high.code or ''}".strip()
    return None


def _flag_severity(resource) -> str:
    for extension in resource.extension or []:
        if extension.url == FLAG_PRIORITY and extension.valueCodeableConcept is not None:
            for coding in extension.valueCodeableConcept.coding or []:
                if coding.code in FLAG_SEVERITY:
                    return FLAG_SEVERITY[coding.code]
    safety = any(c.code == "safety" for category in resource.category or [] for c in category.coding or [])
    return "high" if safety else "medium"


def _instant(value) -> datetime | None:
    """A date-time with its offset, as an event's ``occurred_at`` (a bare date is not one)."""
    aware = isinstance(value, datetime) and value.tzinfo is not None
    return value if aware and EARLIEST_YEAR <= value.year <= LATEST_YEAR else None


def _line(value: str | None, limit: int) -> str | None:
    if not value:
        return None
    text = re.sub(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029]+", " ", str(value)).strip()
    return text[:limit].strip() or None


def _prose(value: str | None, limit: int) -> str | None:
    if not value:
        return None
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]", " ", str(value)).strip()
    return text[:limit].strip() or None


def _email(value: str) -> str:
    try:
        return normalize_email(value.strip()).lower()
    except ValueError:
        return value.strip().lower()


def _phone(value: str) -> str:
    compact = re.sub(r"[\s().-]", "", value)
    try:
        return normalize_phone(compact)
    except ValueError:
        return compact
