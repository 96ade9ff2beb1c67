"""The holes an attacker's probe found in the HTTP API (issue #9), one regression test or
table per defect, in the embedded mode on SQLite and PostgreSQL (the ``db_url`` fixture).

The serving defects (migrations at first start, slow clients, gunicorn's own pages) are
tested against a real gunicorn in ``test_serving.py``; the late Twilio callback in
``test_twilio_status.py``; schemathesis runs in ``test_schemathesis.py``.
"""

from __future__ import annotations

import base64

import pytest

from tests.conftest import drain
from tests.test_api import assert_422_names, bearer, mint


@pytest.fixture
def app(app):
    yield app
    drain(app)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# -- 1. a crafted cursor ----------------------------------------------------------------------

CRAFTED_CURSORS = {
    "nested 2500 deep": _b64(b"[" * 2500),
    "nested objects": _b64(b'{"a":' * 3000),
    "deep and closed": _b64(b"[" * 900 + b"]" * 900),
    "not JSON": _b64(b"\xff\xfe"),
    "a number": _b64(b"1e999999"),
    "three items": _b64(b'["2025-03-01T12:00:00+00:00", "evt_x", 3]'),
    "an id that is not text": _b64(b'["2025-03-01T12:00:00+00:00", ["evt_x"]]'),
    "very long": "A" * 5000,
}


@pytest.mark.parametrize("label", list(CRAFTED_CURSORS))
@pytest.mark.parametrize("listing", ["/v1/deliveries", "/v1/notebooks/{nb}/events"])
def test_every_malformed_cursor_is_a_422_naming_it(client, admin, api, team, listing, label):
    """Any key may page; no cursor it crafts is a 500 (``RecursionError`` in the decoder)."""
    nb, _ = team
    key = bearer(mint(api, nb["id"])["key"])
    for headers in (admin, key):
        response = client.get(
            listing.format(nb=nb["id"]), headers=headers, query_string={"cursor": CRAFTED_CURSORS[label]}
        )
        assert_422_names(response, "query.cursor")


# -- 3. forged lines --------------------------------------------------------------------------

FORGED = "Eve\r\nBcc: victim@evil.example\r\nATTENDEE;CN=Mallory:mailto:m@evil.example"
CONTROL_VALUES = [FORGED, "Eve\nBcc: x@evil.example", "tab\there", "esc \x1b[31m", "nel \x85", "ls \u2028 x"]


def _one_line_fields(nb: str, mom: str, value: str):
    """(method, url, body, field) for every one-line text field of the API."""
    events = f"/v1/notebooks/{nb}/events"
    checkin = {
        "checkin_id": "c-1",
        "title": "IEP",
        "start": "2026-03-01T10:00:00Z",
        "end": "2026-03-01T11:00:00Z",
        "attendees": [mom],
    }

    def event(event_type, data, field):
        return ("post", events, {"type": event_type, "data": data}, "data." + field)

    return [
        ("post", "/v1/notebooks", {"name": value, "child_name": "M", "timezone": "UTC"}, "name"),
        ("post", "/v1/notebooks", {"name": "n", "child_name": value, "timezone": "UTC"}, "child_name"),
        ("post", f"/v1/notebooks/{nb}/keys", {"name": value}, "name"),
        ("post", f"/v1/notebooks/{nb}/members", {"name": value, "role": "parent"}, "name"),
        ("patch", f"/v1/members/{mom}", {"name": value}, "name"),
        event("medication.changed", {"medication": value, "change": "started"}, "medication"),
        event("medication.changed", {"medication": "m", "change": "started", "dose": value}, "dose"),
        event("therapy.logged", {"discipline": "speech_therapy", "activity": value}, "activity"),
        event("goal.updated", {"goal": value, "status": "new"}, "goal"),
        event("checkin.scheduled", {**checkin, "title": value}, "title"),
        event("checkin.scheduled", {**checkin, "location": value}, "location"),
        event("checkin.scheduled", {**checkin, "checkin_id": value}, "checkin_id"),
    ]


@pytest.mark.parametrize("value", CONTROL_VALUES, ids=["crlf-headers", "lf", "tab", "esc", "nel", "u2028"])
def test_control_characters_in_one_line_fields_are_422_naming_the_field(app, client, admin, api, value):
    nb = api.notebook()
    mom = api.member(nb["id"], "Dana", "parent", email="dana@example.org")
    before = api.get(f"/v1/notebooks/{nb['id']}/members")
    for method, url, body, field in _one_line_fields(nb["id"], mom["id"], value):
        assert_422_names(getattr(client, method)(url, json=body, headers=admin), field)
    assert api.get(f"/v1/notebooks/{nb['id']}/members") == before
    assert api.get(f"/v1/notebooks/{nb['id']}/events")["items"] == []


def test_prose_keeps_line_breaks_and_tabs_but_no_other_control_character(app, client, admin, api):
    nb = api.notebook()
    kept = api.event(nb["id"], "note.added", {"text": "First line\r\n\tsecond line", "voice": "family"})
    assert api.get(f"/v1/events/{kept['id']}")["data"]["text"] == "First line\r\n\tsecond line"
    for value in ("bell \x07", "esc \x1b[2J", "nul-free but \x7f", "c1 \x9b"):
        body = {"type": "concern.raised", "data": {"summary": value, "severity": "low"}}
        response = client.post(f"/v1/notebooks/{nb['id']}/events", json=body, headers=admin)
        assert_422_names(response, "data.summary")


def test_the_console_outbox_never_prints_a_line_a_value_forged(app, api, capsys):
    """A name stored before this check existed (written straight into the database here) is
    printed escaped: the console shows one line per message, never a `Bcc:` line of its own."""
    from sqlalchemy import update

    from careloop.models import Member

    nb = api.notebook()
    eve = api.member(nb["id"], "Eve", "parent", email="eve@example.org", phone="+15555550111")
    with app.extensions["careloop"].sessions() as session:
        session.execute(update(Member).where(Member.id == eve["id"]).values(name=FORGED))
        session.commit()
    attendee = {"checkin_id": "c-9", "title": "IEP", "start": "2026-03-01T10:00:00Z",
                "end": "2026-03-01T11:00:00Z", "attendees": [eve["id"]]}  # fmt: skip
    api.event(nb["id"], "medication.changed", {"medication": "Keppra", "change": "started"})
    api.event(nb["id"], "checkin.scheduled", attendee)
    drain(app)
    printed = capsys.readouterr().out.splitlines()
    assert len([line for line in printed if line.startswith(("[sms]", "[email]", "[calendar]"))]) == 3
    assert not [line for line in printed if line.startswith(("Bcc:", "ATTENDEE"))], printed
    assert any("Eve\\r\\nBcc: victim@evil.example" in line for line in printed), printed


def test_log_lines_escape_what_they_are_given():
    import logging

    from careloop.text import LogFormatter

    record = logging.LogRecord("careloop.test", logging.INFO, __file__, 1, "member %s", (FORGED,), None)
    line = LogFormatter("%(levelname)s %(message)s").format(record)
    assert line.splitlines() == [line]
    assert line == "INFO member " + FORGED.replace("\r", "\\r").replace("\n", "\\n")


# -- 6. contact details that can never be delivered -------------------------------------------


@pytest.mark.parametrize(
    "contact, field",
    [
        ({"phone": "+1555555010\uff11"}, "phone"),  # a fullwidth digit: \d matched it, Twilio does not
        ({"phone": "+" + "\u0661\u0665" * 5}, "phone"),  # Arabic-Indic digits
        ({"phone": "+99912345678"}, "phone"),  # no such country code
        ({"phone": "+1555555"}, "phone"),  # too short for North America
        ({"phone": "+33 1 23 45 67 89"}, "phone"),
        ({"email": "\u00fc@example.org"}, "email"),  # needs SMTPUTF8, which careloop does not speak
        ({"email": "Dana <dana@example.org>"}, "email"),
        ({"email": "dana@localhost"}, "email"),
        ({"email": '"dana rivera"@example.org'}, "email"),
    ],
)
def test_contact_details_no_channel_could_use_are_422(client, admin, api, contact, field):
    nb = api.notebook()
    url = f"/v1/notebooks/{nb['id']}/members"
    response = client.post(url, json={"name": "Dana", "role": "parent", **contact}, headers=admin)
    assert_422_names(response, field)
    member = api.member(nb["id"], "Sam", "parent")
    assert_422_names(client.patch(f"/v1/members/{member['id']}", json=contact, headers=admin), field)
    assert [m["id"] for m in api.get(url)["items"]] == [member["id"]]


def test_contact_details_are_stored_as_the_channels_use_them(api):
    nb = api.notebook()
    member = api.member(nb["id"], "Kai", "parent", email="kai@B\u00fccher.Example", phone="+442071234567")
    assert (member["email"], member["phone"]) == ("kai@xn--bcher-kva.example", "+442071234567")


def test_the_outbox_refuses_what_twilio_or_smtp_would(app, api, settings):
    """A contact stored before the API checked it (written into the database here) fails at
    the channel with a reason, as Twilio or the SMTP server would refuse it: the outbox no longer
    records a text to a number Twilio cannot read as sent."""
    from pathlib import Path

    from sqlalchemy import update

    from careloop.models import Member

    nb = api.notebook()
    mom = api.member(nb["id"], "Dana", "parent", email="dana@example.org", phone="+15555550101")
    with app.extensions["careloop"].sessions() as session:
        unusable = {"phone": "+1555555010\uff11", "email": "\u00fc@example.org"}
        session.execute(update(Member).where(Member.id == mom["id"]).values(**unusable))
        session.commit()
    event = api.event(nb["id"], "medication.changed", {"medication": "Keppra", "change": "started"})
    drain(app)
    deliveries = {d["channel"]: d for d in api.get(f"/v1/events/{event['id']}")["deliveries"]}
    assert {c: d["status"] for c, d in deliveries.items()} == {"sms": "failed", "email": "failed"}
    assert deliveries["sms"]["attempts"] == 1 and "phone" in deliveries["sms"]["error"]
    assert "email" in deliveries["email"]["error"]
    outbox = Path(settings.outbox_dir)
    assert not (outbox / "sms.log").exists() and not list(outbox.glob("email/*.eml"))


# -- 7. loose input ---------------------------------------------------------------------------


NOTE = b'{"text": "t", "voice": "child"}'


@pytest.mark.parametrize(
    "raw, key",
    [
        (b'{"type": "concern.raised", "data": {"summary": "s", "severity": "low", "severity": "urgent"}}',
         "data.severity"),
        (b'{"type": "note.added", "type": "concern.raised", "data": ' + NOTE + b"}", "type"),
        (b'{"type": "note.added", "data": ' + NOTE + b', "data": ' + NOTE + b"}", "data"),
    ],
    ids=["in data", "top level", "an object twice"],
)  # fmt: skip
def test_duplicate_json_keys_are_400_naming_the_key(app, client, admin, api, raw, key):
    nb = api.notebook()
    headers = {**admin, "Content-Type": "application/json"}
    response = client.post(f"/v1/notebooks/{nb['id']}/events", data=raw, headers=headers)
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert body["error"] == "bad_request" and key in body["fields"], body
    assert api.get(f"/v1/notebooks/{nb['id']}/events")["items"] == []


@pytest.mark.parametrize("raw", [b'{"name": NaN}', b'{"name": "n", "x": Infinity}', b"-Infinity"])
def test_non_standard_json_numbers_are_400(client, admin, raw):
    response = client.post("/v1/notebooks", data=raw, headers={**admin, "Content-Type": "application/json"})
    assert response.status_code == 400 and response.get_json()["error"] == "bad_request"


@pytest.mark.parametrize("value", ["0", "1700000000", "0.5", "-1", "1e9", "2026", "2026-03-01"])
def test_times_are_iso_date_times_never_numbers_in_a_string(client, admin, api, value):
    nb = api.notebook()
    body = {"type": "note.added", "data": {"text": "t", "voice": "child"}, "occurred_at": value}
    assert_422_names(client.post(f"/v1/notebooks/{nb['id']}/events", json=body, headers=admin), "occurred_at")
    response = client.get(f"/v1/notebooks/{nb['id']}/events", headers=admin, query_string={"since": value})
    assert_422_names(response, "query.since")


@pytest.mark.parametrize(
    "value, ok",
    [
        ("2199-12-31T23:59:59-14:00", True),  # 2200-01-01 in UTC: still in range
        ("1901-01-01T00:00:00+14:00", True),  # 1900-12-31 in UTC
        ("2200-12-31T23:59:59-14:00", False),  # 2201 in UTC: was stored
        ("2200-01-01T00:00:00Z", False),
        ("1900-01-01T00:00:00-05:00", False),
        ("1899-12-31T23:00:00-05:00", False),  # 1900 in UTC, but not as written
    ],
)
def test_the_year_range_keeps_every_stored_instant_within_1900_to_2200(client, admin, api, value, ok):
    nb = api.notebook()
    body = {"type": "note.added", "data": {"text": "t", "voice": "child"}, "occurred_at": value}
    response = client.post(f"/v1/notebooks/{nb['id']}/events", json=body, headers=admin)
    if not ok:
        assert_422_names(response, "occurred_at")
        return
    assert response.status_code == 202, response.get_json()
    stored = api.get(f"/v1/events/{response.get_json()['id']}")["occurred_at"]
    assert "1900-" <= stored[:5] <= "2200-", stored


NOT_ZONES = ["localtime", "posixrules", "Factory", "right/UTC", "posix/Europe/Paris", "UTC "]


@pytest.mark.parametrize("zone", NOT_ZONES)
def test_only_iana_time_zone_names_are_accepted(client, admin, api, zone):
    body = {"name": "n", "child_name": "c", "timezone": zone}
    response = client.post("/v1/notebooks", json=body, headers=admin)
    assert_422_names(response, "timezone")
    nb = api.notebook()
    url = f"/v1/notebooks/{nb['id']}/members"
    response = client.post(url, json={"name": "n", "role": "parent", "timezone": zone}, headers=admin)
    assert_422_names(response, "timezone")


def test_iana_names_and_their_links_are_accepted(api):
    for zone in ("America/Chicago", "UTC", "Etc/UTC", "Asia/Kolkata", "US/Eastern", "Pacific/Chatham"):
        assert api.notebook(timezone=zone)["timezone"] == zone


# -- 8. small leaks ---------------------------------------------------------------------------


def test_provider_ids_show_no_server_paths(app, client, api, settings):
    nb = api.notebook()
    api.member(nb["id"], "Dana", "parent", email="dana@example.org", phone="+15555550101")
    event = api.event(nb["id"], "medication.changed", {"medication": "Keppra", "change": "started"})
    drain(app)
    key = bearer(mint(api, nb["id"])["key"])
    deliveries = client.get(f"/v1/events/{event['id']}", headers=key).get_json()["deliveries"]
    ids = {d["channel"]: d["provider_id"] for d in deliveries}
    assert ids["sms"] == "outbox:sms.log" and ids["email"].startswith("outbox:email/dlv_"), ids
    listed = client.get("/v1/deliveries", headers=key).get_data(as_text=True)
    assert str(settings.outbox_dir) not in listed and "/tmp" not in listed


def test_the_api_description_names_the_public_url_whatever_the_host_header(client, settings):
    for host in ("evil.example", "127.0.0.1:9"):
        spec = client.get("/openapi.json", headers={"Host": host}).get_json()
        assert spec["servers"] == [{"url": settings.public_url}]


def test_the_docs_page_loads_nothing_from_elsewhere(client):
    import re

    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and not [a for a in assets if "//" in a], assets
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert served.mimetype in ("text/css", "text/javascript", "application/javascript", "image/png")
        assert len(served.data) > 500 and "max-age" in served.headers["Cache-Control"]


def test_responses_holding_health_data_are_never_cached(app, client, admin, api):
    nb = api.notebook()
    member = api.member(nb["id"], "Dana", "parent", email="dana@example.org")
    event = api.event(nb["id"], "note.added", {"text": "t", "voice": "family"})
    drain(app)
    for url in (f"/v1/notebooks/{nb['id']}", f"/v1/notebooks/{nb['id']}/members",
                f"/v1/notebooks/{nb['id']}/events", f"/v1/events/{event['id']}", "/v1/deliveries",
                f"/v1/members/{member['id']}", "/v1/nothing"):  # fmt: skip
        response = client.get(url, headers=admin)
        assert response.headers.get("Cache-Control") == "no-store", (url, response.status_code)
    created = client.post(f"/v1/notebooks/{nb['id']}/keys", json={"name": "k"}, headers=admin)
    assert created.headers.get("Cache-Control") == "no-store"


def test_healthz_names_no_exception(db_url, tmp_path):
    from tests.conftest import build_app, make_settings

    app, _ = build_app(make_settings(db_url, tmp_path, redis_url="redis://127.0.0.1:1/0"))
    body = app.test_client().get("/healthz").get_json()
    assert body == {"status": "degraded", "database": "ok", "queue": "unreachable", "queue_mode": "rq"}


def test_a_new_sqlite_database_is_readable_by_its_owner_only(tmp_path):
    import os

    from tests.conftest import build_app, make_settings

    path = tmp_path / "fresh.db"
    app, api = build_app(make_settings(f"sqlite:///{path}", tmp_path))
    api.notebook()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("fresh.db")]
    assert {p.name for p in files} >= {"fresh.db"}
    assert {p.name: oct(os.stat(p).st_mode & 0o777) for p in files} == {p.name: "0o600" for p in files}


# -- 9. what the API says about itself --------------------------------------------------------


@pytest.mark.parametrize(
    "raw", [b"\x00", b'{"name": "x", "name": "y"}', b'{"name": 5, "child_name": "c", "timezone": "UTC"}', b""]
)
@pytest.mark.parametrize(
    "url, role, status, error",
    [
        ("/v1/notebooks", "family", 403, "forbidden"),
        # Issue #10: family keys mint their notebook's keys; a clinician's key may not, and is
        # answered as if there were no notebook (tests/test_access.py), before its body too.
        ("/v1/notebooks/{nb}/keys", "clinician", 404, "not_found"),
    ],
)
def test_admin_routes_answer_a_notebook_key_403_before_reading_its_body(
    client, api, url, role, status, error, raw
):
    nb = api.notebook()
    key = bearer(api.post(f"/v1/notebooks/{nb['id']}/keys", {"name": "k", "role": role})["key"])
    headers = {**key, "Content-Type": "application/json"}
    response = client.post(url.format(nb=nb["id"]), data=raw, headers=headers)
    assert response.status_code == status and response.get_json()["error"] == error
    anonymous = client.post(url.format(nb=nb["id"]), data=raw, headers={"Content-Type": "application/json"})
    assert anonymous.status_code == 401


def test_405_names_the_methods_allowed(client, admin):
    response = client.delete("/v1/notebooks", headers=admin)
    assert response.status_code == 405 and response.get_json()["error"] == "method_not_allowed"
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"POST"}


@pytest.mark.parametrize("key", ["\u00e9" * 100, "\u00e9" * 150, "tab\there", "x" * 201])
def test_an_idempotency_key_is_printable_ascii_counted_as_it_says(client, admin, api, key):
    """The message says characters; a header is bytes: a key of printable ASCII is both."""
    nb = api.notebook()
    body = {"type": "note.added", "data": {"text": "t", "voice": "child"}}
    headers = {**admin, "Idempotency-Key": key.encode("utf-8").decode("latin-1")}
    response = client.post(f"/v1/notebooks/{nb['id']}/events", json=body, headers=headers)
    document = assert_422_names(response, "header.Idempotency-Key")
    assert "200 printable ASCII characters" in document["fields"]["header.Idempotency-Key"][0]


def test_the_api_description_documents_every_answer_it_gives(client):
    spec = client.get("/openapi.json").get_json()
    operations = {op["operationId"]: op for ops in spec["paths"].values() for op in ops.values()}
    for name, op in operations.items():
        body = op.get("requestBody")
        if body:
            assert body["required"] is True, name
            assert "413" in op["responses"], name
            if "application/json" in body["content"]:
                assert "400" in op["responses"], name
        for parameter in op.get("parameters", []):
            if parameter["in"] == "path" and parameter["name"] == "checkin_id":  # the sender's own id
                assert parameter["schema"] == {"type": "string", "minLength": 1, "maxLength": 200}, name
            elif parameter["in"] == "path":
                assert parameter["schema"]["pattern"] == "^[A-Za-z0-9_-]{1,40}$", (name, parameter)
    assert "422" in operations["twilioStatus"]["responses"]
    assert {p["name"] for p in operations["twilioStatus"]["parameters"]} >= {"delivery", "attempt"}
    assert "Idempotency-Key" in {p["name"] for p in operations["createEvent"]["parameters"]}
    accepted = operations["createEvent"]["responses"]["202"]
    assert set(accepted["headers"]) == {"Location", "Idempotent-Replayed"}
    for schema in ("HTTPError", "ValidationError"):
        assert set(spec["components"]["schemas"][schema]["properties"]) == {"error", "message", "fields"}


def test_the_api_description_links_each_answer_to_the_next_request(client):
    spec = client.get("/openapi.json").get_json()
    operations = {op["operationId"]: op for ops in spec["paths"].values() for op in ops.values()}
    links = {
        (name, link["operationId"])
        for name, op in operations.items()
        for response in op["responses"].values()
        for link in response.get("links", {}).values()
    }
    assert all(target in operations for _, target in links)
    assert {
        ("createNotebook", "listMembers"),
        ("createNotebook", "createEvent"),
        ("createMember", "updateMember"),
        ("createEvent", "getEvent"),
        ("getEvent", "getDelivery"),
        ("listDeliveries", "retryDelivery"),
    } <= links


def test_paths_that_cannot_name_a_resource_are_404_before_authentication(client):
    for path in ("/v1/notebooks/%00", "/v1/events/" + "x" * 41, "/v1/deliveries/a.b/retry"):
        for method in ("get", "post"):
            response = getattr(client, method)(path)
            assert response.status_code in (404, 405) and response.is_json, (path, response.status_code)
