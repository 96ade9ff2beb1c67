"""The v1 HTTP contract (issues #2 and #3), table-driven, in the embedded mode: the app's
in-process queue, the file outbox, and (for real delivery failures) the aiosmtpd peer.
Every test runs on SQLite and on PostgreSQL (the ``db_url`` fixture)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from careloop.models import ApiKey, Delivery
from careloop.vocabulary import ROLES
from tests.conftest import ADMIN_KEY, Api, checkin_data, close_app, drain, make_settings

EVENT_TYPES = (
    "medication.changed",
    "concern.raised",
    "therapy.logged",
    "goal.updated",
    "checkin.scheduled",
    "checkin.updated",
    "checkin.cancelled",
    "note.added",
)
DELIVERY_FIELDS = {
    "id",
    "member_id",
    "channel",
    "status",
    "attempts",
    "provider_id",
    "error",
    "created_at",
    "updated_at",
    "sent_at",
}
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


# -- helpers ----------------------------------------------------------------------------------


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def assert_json_error(response, status: int, error: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.is_json, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body, dict) and isinstance(body.get("message"), str), body
    if error:
        assert body["error"] == error, body
    return body


def assert_422_names(response, field: str | tuple[str, ...]) -> dict:
    body = assert_json_error(response, 422, "validation_error")
    wanted = (field,) if isinstance(field, str) else field
    assert any(f in body.get("fields", {}) for f in wanted), (wanted, body)
    return body


def post_event(client, notebook_id, body, headers=None, key=None):
    extra = {"Idempotency-Key": key} if key is not None else {}
    return client.post(f"/v1/notebooks/{notebook_id}/events", json=body, headers={**(headers or {}), **extra})


def event_ids(client, headers, notebook_id, **query) -> list[str]:
    response = client.get(f"/v1/notebooks/{notebook_id}/events", headers=headers, query_string=query)
    assert response.status_code == 200, response.get_json()
    return [item["id"] for item in response.get_json()["items"]]


def db_session(app):
    return app.extensions["careloop"].sessions()


def outbox_effects(settings) -> tuple[int, int]:
    """(SMS lines, email/calendar files) the file outbox holds: what actually 'went out'."""
    root = Path(settings.outbox_dir)
    sms = root / "sms.log"
    lines = len(sms.read_text().splitlines()) if sms.exists() else 0
    files = len(list(root.glob("email/*.eml"))) + len(list(root.glob("calendar/*.eml")))
    return lines, files


def mint(api, notebook_id, name="family phone") -> dict:
    return api.post(f"/v1/notebooks/{notebook_id}/keys", {"name": name})


def valid_bodies(members: dict, checkin_id: str = "iep-1") -> dict[str, dict]:
    """One valid request body per event type (the check-in ones share ``checkin_id``)."""
    attendees = [members["mom"]["id"], members["slp"]["id"]]
    return {
        "medication.changed": {
            "type": "medication.changed",
            "data": {"medication": "Levetiracetam", "change": "dose_changed", "dose": "250 mg twice daily"},
            "author_member_id": members["neuro"]["id"],
        },
        "concern.raised": {
            "type": "concern.raised",
            "data": {"summary": "Choking on thin liquids", "severity": "high", "area": "swallowing"},
            "occurred_at": "2025-03-01T08:15:00-06:00",
        },
        "therapy.logged": {
            "type": "therapy.logged",
            "data": {"discipline": "physical_therapy", "activity": "Stairs with rail", "minutes": 45},
        },
        "goal.updated": {"type": "goal.updated", "data": {"goal": "Walk 10 m unaided", "status": "progress"}},
        "checkin.scheduled": {"type": "checkin.scheduled", "data": checkin_data(attendees, checkin_id)},
        "checkin.updated": {
            "type": "checkin.updated",
            "data": checkin_data(attendees, checkin_id, title="IEP meeting (moved)", hours_from_now=72),
        },
        "checkin.cancelled": {"type": "checkin.cancelled", "data": {"checkin_id": checkin_id}},
        "note.added": {"type": "note.added", "data": {"text": "I climbed the big stairs!", "voice": "child"}},
    }


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def app(app):
    """conftest's app, settled before it is torn down: a routing job still running in the
    in-process thread would otherwise race the next test's TRUNCATE (a deadlock on PostgreSQL)."""
    yield app
    drain(app)


@pytest.fixture
def other(api):
    """A second notebook with a member and a routed event that has deliveries."""
    nb = api.notebook(child_name="Leo Park", timezone="Europe/Berlin")
    mom = api.member(nb["id"], "Mina Park", "parent", email="mina@example.org", phone="+15555550201")
    neuro = api.member(nb["id"], "Dr. Roth", "neurology", email="roth@example.org")
    event = api.event(nb["id"], "medication.changed", {"medication": "Baclofen", "change": "started"})
    return {"notebook": nb, "mom": mom, "neuro": neuro, "event": event}


@pytest.fixture
def smtp_app(db_url, tmp_path, smtp):
    """Embedded mode with email and calendar through the aiosmtpd peer (SMS to the outbox)."""
    from careloop.service import create_app
    settings = make_settings(db_url, tmp_path, smtp_host=smtp.host, smtp_port=smtp.port, smtp_starttls=False)
    app = create_app({"TESTING": True}, settings=settings)
    yield app
    drain(app)
    close_app(app)


@pytest.fixture
def smtp_api(smtp_app, admin):
    return Api(smtp_app.test_client(), admin)


# -- authentication ---------------------------------------------------------------------------

PROTECTED = [
    ("post", "/v1/notebooks"),
    ("get", "/v1/notebooks/{nb}"),
    ("post", "/v1/notebooks/{nb}/keys"),
    ("get", "/v1/notebooks/{nb}/members"),
    ("post", "/v1/notebooks/{nb}/members"),
    ("patch", "/v1/members/{member}"),
    ("patch", "/v1/notebooks/{nb}"),
    ("post", "/v1/members/{member}/links/revoke"),
    ("get", "/v1/notebooks/{nb}/events"),
    ("post", "/v1/notebooks/{nb}/events"),
    ("get", "/v1/events/{event}"),
    ("get", "/v1/deliveries"),
    ("get", "/v1/deliveries/{delivery}"),
    ("post", "/v1/deliveries/{delivery}/retry"),
]
BAD_AUTH = {
    "none": {},
    "wrong admin key": bearer("not-the-admin-key"),
    "forged notebook key": bearer("clk_" + "A" * 43),
    "empty bearer": {"Authorization": "Bearer "},
    "basic scheme": {"Authorization": "Basic " + ADMIN_KEY},
    "key without scheme": {"Authorization": ADMIN_KEY},
    "admin key with a suffix": bearer(ADMIN_KEY + "x"),
}


@pytest.mark.parametrize("how", list(BAD_AUTH))
def test_no_or_bad_key_is_401_json_everywhere(app, client, api, other, how):
    drain(app)
    with db_session(app) as session:
        delivery_id = session.scalars(select(Delivery.id)).first()
    ids = {
        "nb": other["notebook"]["id"],
        "member": other["mom"]["id"],
        "event": other["event"]["id"],
        "delivery": delivery_id,
    }
    for method, url in PROTECTED:
        response = getattr(client, method)(url.format(**ids), json={}, headers=BAD_AUTH[how])
        body = assert_json_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), (method, url, body)


def test_revoked_key_is_401(app, client, api, other):
    key = mint(api, other["notebook"]["id"])
    url = f"/v1/notebooks/{other['notebook']['id']}"
    assert client.get(url, headers=bearer(key["key"])).status_code == 200
    with db_session(app) as session:
        session.execute(update(ApiKey).where(ApiKey.id == key["id"]).values(revoked_at=datetime.now(UTC)))
        session.commit()
    assert_json_error(client.get(url, headers=bearer(key["key"])), 401, "unauthorized")


def test_minted_key_is_shown_once_and_stored_only_as_a_hash(app, client, api, other):
    nb_id = other["notebook"]["id"]
    first, second = mint(api, nb_id, "mom's phone"), mint(api, nb_id, "school")
    assert set(first) >= {"id", "key"} and first["name"] == "mom's phone"
    assert first["key"].startswith("clk_") and len(first["key"]) >= 40
    assert first["key"] != second["key"] and first["id"] != second["id"]
    # Shown once: nothing else the API answers carries it.
    for url in (f"/v1/notebooks/{nb_id}", f"/v1/notebooks/{nb_id}/members"):
        assert first["key"] not in client.get(url, headers=bearer(first["key"])).get_data(as_text=True)
    # Stored hashed: no column of any api_keys row holds the secret, its hash is there.
    with db_session(app) as session:
        rows = [dict(r._mapping) for r in session.execute(text("SELECT * FROM api_keys"))]
    assert len(rows) == 2
    dumped = json.dumps(rows, default=str)
    for minted in (first, second):
        assert minted["key"] not in dumped
        secret_part = minted["key"].removeprefix("clk_")
        assert secret_part not in dumped
        assert hashlib.sha256(minted["key"].encode()).hexdigest() in dumped


def test_key_name_is_validated(client, admin, api, other):
    url = f"/v1/notebooks/{other['notebook']['id']}/keys"
    assert_422_names(client.post(url, json={}, headers=admin), "name")
    assert_422_names(client.post(url, json={"name": "x", "scope": "all"}, headers=admin), "scope")
    assert_json_error(client.post("/v1/notebooks/nb_missing/keys", json={"name": "x"}, headers=admin), 404)


def _cross_notebook_requests(own: dict, foreign: dict, delivery_id: str):
    """(label, method, url, body) for another notebook's resources."""
    nb = foreign["notebook"]["id"]
    return [
        ("notebook", "get", f"/v1/notebooks/{nb}", None),
        ("members list", "get", f"/v1/notebooks/{nb}/members", None),
        ("member create", "post", f"/v1/notebooks/{nb}/members", {"name": "Eve", "role": "other"}),
        ("events list", "get", f"/v1/notebooks/{nb}/events", None),
        (
            "event post",
            "post",
            f"/v1/notebooks/{nb}/events",
            {"type": "note.added", "data": {"text": "hi", "voice": "family"}},
        ),
        ("event get", "get", f"/v1/events/{foreign['event']['id']}", None),
        ("member patch", "patch", f"/v1/members/{foreign['mom']['id']}", {"name": "Hacked"}),
        ("notebook patch", "patch", f"/v1/notebooks/{nb}", {"email_detail": True}),
        ("member links revoke", "post", f"/v1/members/{foreign['mom']['id']}/links/revoke", None),
        ("delivery get", "get", f"/v1/deliveries/{delivery_id}", None),
        ("delivery retry", "post", f"/v1/deliveries/{delivery_id}/retry", None),
        ("deliveries of it", "get", f"/v1/deliveries?notebook_id={nb}", None),
    ]


def test_notebook_key_reaches_its_notebook_only(app, client, api, team, other):
    own_nb, members = team
    own_event = api.event(own_nb["id"], "medication.changed", {"medication": "Keppra", "change": "started"})
    drain(app)
    with db_session(app) as session:
        foreign_delivery = session.scalars(
            select(Delivery.id).where(Delivery.notebook_id == other["notebook"]["id"])
        ).first()
        own_delivery = session.scalars(
            select(Delivery.id).where(Delivery.notebook_id == own_nb["id"], Delivery.status == "sent")
        ).first()
    assert foreign_delivery and own_delivery
    key = bearer(mint(api, own_nb["id"])["key"])

    # Its own notebook answers (so a 404 below is about scope, not a broken key).
    own = {"notebook": own_nb, "mom": members["mom"], "event": own_event}
    for label, method, url, body in _cross_notebook_requests({}, own, own_delivery):
        response = getattr(client, method)(url, json=body, headers=key)
        assert response.status_code in (200, 201, 202), (label, response.status_code, response.get_json())

    before = api.get(f"/v1/notebooks/{other['notebook']['id']}/members")
    for label, method, url, body in _cross_notebook_requests(own, other, foreign_delivery):
        response = getattr(client, method)(url, json=body, headers=key)
        assert response.status_code == 404, (label, response.status_code)
        assert_json_error(response, 404, "not_found")
    # ...and none of those changed anything there.
    assert api.get(f"/v1/notebooks/{other['notebook']['id']}/members") == before
    assert event_ids(client, {"Authorization": f"Bearer {ADMIN_KEY}"}, other["notebook"]["id"]) == [
        other["event"]["id"]
    ]


NEW_NOTEBOOK = {"name": "Mine", "child_name": "Kid", "timezone": "UTC"}


@pytest.mark.parametrize(
    "role, method, url, body, status",
    [
        # Only the admin creates notebooks: 403, before the body is read.
        ("family", "post", "/v1/notebooks", NEW_NOTEBOOK, 403),
        ("clinician", "post", "/v1/notebooks", NEW_NOTEBOOK, 403),
        # Issue #10: a family key mints keys for its own notebook (tests/test_access.py); no other
        # role does, and no key does for another notebook — 404, as if there were no notebook.
        ("clinician", "post", "/v1/notebooks/{own}/keys", {"name": "another"}, 404),
        ("integration", "post", "/v1/notebooks/{own}/keys", {"name": "another"}, 404),
        ("family", "post", "/v1/notebooks/{foreign}/keys", {"name": "theirs"}, 404),
    ],
)
def test_notebook_key_cannot_create_notebooks_or_mint_keys(
    app, client, api, team, other, role, method, url, body, status
):
    own_nb, _ = team
    key = bearer(api.post(f"/v1/notebooks/{own_nb['id']}/keys", {"name": "k", "role": role})["key"])
    response = getattr(client, method)(
        url.format(own=own_nb["id"], foreign=other["notebook"]["id"]), json=body, headers=key
    )
    assert_json_error(response, status, "forbidden" if status == 403 else "not_found")
    with db_session(app) as session:
        assert session.scalar(text("SELECT count(*) FROM notebooks")) == 2
        assert session.scalar(text("SELECT count(*) FROM api_keys")) == 1


# -- notebooks --------------------------------------------------------------------------------


def test_create_and_get_notebook(client, admin, api):
    created = api.post(
        "/v1/notebooks", {"name": "Maya's notebook", "child_name": "Maya", "timezone": "Asia/Tokyo"}
    )
    assert created["id"].startswith("nb_")
    got = api.get(f"/v1/notebooks/{created['id']}")
    assert got == created
    assert (got["name"], got["child_name"], got["timezone"]) == ("Maya's notebook", "Maya", "Asia/Tokyo")
    assert got["email_detail"] is False, "emails carry no details unless the notebook says so"
    assert_json_error(client.get("/v1/notebooks/nb_doesnotexist", headers=admin), 404, "not_found")


def test_email_detail_is_set_at_creation_and_by_patch(client, admin, api):
    created = api.post(
        "/v1/notebooks",
        {"name": "n", "child_name": "Maya", "timezone": "UTC", "email_detail": True},
    )
    assert created["email_detail"] is True
    url = f"/v1/notebooks/{created['id']}"
    response = client.patch(url, json={"email_detail": False}, headers=admin)
    assert response.status_code == 200 and response.get_json()["email_detail"] is False
    response = client.patch(url, json={"timezone": "Europe/Paris"}, headers=admin)
    assert response.get_json() == {**created, "email_detail": False, "timezone": "Europe/Paris"}
    assert api.get(url) == response.get_json()
    for body, field in (
        ({"email_detail": "yes please"}, "email_detail"),
        ({"email_detail": None}, "email_detail"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"name": None}, "name"),
        ({"owner": "me"}, "owner"),
    ):
        assert_422_names(client.patch(url, json=body, headers=admin), field)
    assert api.get(url)["timezone"] == "Europe/Paris"
    assert_json_error(client.patch("/v1/notebooks/nb_missing", json={}, headers=admin), 404, "not_found")


@pytest.mark.parametrize(
    "change, field",
    [
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"timezone": ""}, "timezone"),
        ({"timezone": 5}, "timezone"),
        ({"timezone": None}, "timezone"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"child_name": ["Maya"]}, "child_name"),
        ({"owner": "me"}, "owner"),
    ],
)
def test_notebook_validation_names_the_field(app, client, admin, change, field):
    body = {"name": "Notebook", "child_name": "Maya", "timezone": "America/Chicago", **change}
    assert_422_names(client.post("/v1/notebooks", json=body, headers=admin), field)
    with db_session(app) as session:
        assert session.scalar(text("SELECT count(*) FROM notebooks")) == 0


@pytest.mark.parametrize("missing", ["name", "child_name", "timezone"])
def test_notebook_required_fields(client, admin, missing):
    body = {"name": "Notebook", "child_name": "Maya", "timezone": "America/Chicago"}
    del body[missing]
    assert_422_names(client.post("/v1/notebooks", json=body, headers=admin), missing)


# -- members ----------------------------------------------------------------------------------


def test_members_of_every_role_are_created_and_listed_in_order(api):
    nb = api.notebook()
    created = [api.member(nb["id"], f"Person {i}", role) for i, role in enumerate(ROLES)]
    assert all(m["id"].startswith("mem_") and m["notebook_id"] == nb["id"] for m in created)
    listed = api.get(f"/v1/notebooks/{nb['id']}/members")["items"]
    assert [m["id"] for m in listed] == [m["id"] for m in created]
    assert [m["role"] for m in listed] == list(ROLES)
    assert all(m["active"] is True and m["email"] is None and m["phone"] is None for m in listed)


def test_member_contact_details_are_kept(api):
    nb = api.notebook()
    body = {"email": "dana@example.org", "phone": "+442071234567", "timezone": "Europe/London"}
    member = api.member(nb["id"], "Dana", "guardian", **body)
    assert {k: member[k] for k in body} == body
    assert api.get(f"/v1/notebooks/{nb['id']}/members")["items"][0] == member


@pytest.mark.parametrize(
    "change, field",
    [
        ({"role": "doctor"}, "role"),
        ({"role": "Parent"}, "role"),
        ({"role": None}, "role"),
        ({"phone": "5555550101"}, "phone"),
        ({"phone": "+1 555 555 0101"}, "phone"),
        ({"phone": "+0155555501"}, "phone"),
        ({"phone": "+1555"}, "phone"),
        ({"phone": "+1234567890123456"}, "phone"),
        ({"phone": "+1555555010a"}, "phone"),
        ({"phone": 15555550101}, "phone"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "dana@"}, "email"),
        ({"email": "@example.org"}, "email"),
        ({"email": "dana example@example.org"}, "email"),
        ({"timezone": "Nowhere/Town"}, "timezone"),
        ({"name": ""}, "name"),
        ({"active": False}, "active"),  # not settable at creation
        ({"notebook_id": "nb_other"}, "notebook_id"),
        ({"nickname": "D"}, "nickname"),
    ],
)
def test_member_validation_names_the_field(app, client, admin, api, change, field):
    nb = api.notebook()
    body = {"name": "Dana", "role": "parent", **change}
    assert_422_names(client.post(f"/v1/notebooks/{nb['id']}/members", json=body, headers=admin), field)
    assert api.get(f"/v1/notebooks/{nb['id']}/members")["items"] == []


def test_member_create_on_unknown_notebook_is_404(client, admin):
    response = client.post(
        "/v1/notebooks/nb_missing/members", json={"name": "A", "role": "parent"}, headers=admin
    )
    assert_json_error(response, 404, "not_found")


def _patch(client, admin, member_id, body):
    return client.patch(f"/v1/members/{member_id}", json=body, headers=admin)


def test_patch_member_changes_only_what_is_sent(client, admin, team):
    _, members = team
    mom = members["mom"]
    response = _patch(client, admin, mom["id"], {"name": "Dana R.", "role": "guardian", "timezone": "UTC"})
    assert response.status_code == 200, response.get_json()
    patched = response.get_json()
    assert (patched["name"], patched["role"], patched["timezone"]) == ("Dana R.", "guardian", "UTC")
    assert (patched["email"], patched["phone"]) == (mom["email"], mom["phone"])
    response = _patch(client, admin, mom["id"], {"active": False})
    assert response.get_json()["active"] is False and response.get_json()["name"] == "Dana R."


def test_patch_null_clears_contact_details(client, admin, api, team):
    nb, members = team
    mom = members["mom"]
    response = _patch(client, admin, mom["id"], {"email": None, "phone": None})
    assert response.status_code == 200, response.get_json()
    assert (response.get_json()["email"], response.get_json()["phone"]) == (None, None)
    stored = {m["id"]: m for m in api.get(f"/v1/notebooks/{nb['id']}/members")["items"]}[mom["id"]]
    assert (stored["email"], stored["phone"], stored["name"]) == (None, None, mom["name"])


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": None}, "name"),
        ({"role": None}, "role"),
        ({"active": None}, "active"),
        ({"role": "wizard"}, "role"),
        ({"phone": "555-0101"}, "phone"),
        ({"email": "nope"}, "email"),
        ({"timezone": "Not/AZone"}, "timezone"),
        ({"notebook_id": "nb_x"}, "notebook_id"),
        ({"id": "mem_x"}, "id"),
        ({"favourite_colour": "blue"}, "favourite_colour"),
        ({"active": "maybe"}, "active"),
    ],
)
def test_patch_member_validation(client, admin, api, team, body, field):
    nb, members = team
    before = api.get(f"/v1/notebooks/{nb['id']}/members")
    assert_422_names(_patch(client, admin, members["dad"]["id"], body), field)
    assert api.get(f"/v1/notebooks/{nb['id']}/members") == before


def test_patch_unknown_member_is_404(client, admin):
    assert_json_error(_patch(client, admin, "mem_missing", {"name": "X"}), 404, "not_found")


# -- events: intake ---------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_each_event_type_is_accepted(client, admin, team, event_type):
    nb, members = team
    bodies = valid_bodies(members)
    if event_type in ("checkin.updated", "checkin.cancelled"):
        response = post_event(client, nb["id"], bodies["checkin.scheduled"], admin)
        assert response.status_code == 202, response.get_json()
    response = post_event(client, nb["id"], bodies[event_type], admin)
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["status"] == "accepted" and body["id"].startswith("evt_")
    assert response.headers["Location"] == f"/v1/events/{body['id']}"
    got = client.get(f"/v1/events/{body['id']}", headers=admin).get_json()
    assert got["type"] == event_type and got["notebook_id"] == nb["id"]
    sent_data = bodies[event_type]["data"]
    for name, value in sent_data.items():
        if name not in ("start", "end"):
            assert got["data"][name] == value, name
    if event_type == "concern.raised":
        assert got["occurred_at"] == "2025-03-01T14:15:00Z"  # stored in UTC, offset applied


def _bad_event_cases():
    """(label, build(members) -> body, field(s) the 422 must name)."""
    note = {"text": "hello", "voice": "family"}
    concern = {"summary": "Falls", "severity": "low"}

    def checkin(members, **change):
        data = checkin_data([members["mom"]["id"], members["pt"]["id"]], "bad-1")
        data.update(change)
        return {"type": "checkin.scheduled", "data": data}

    naive_start = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None, microsecond=0)
    return [
        ("unknown field in data", lambda m: {"type": "note.added", "data": {**note, "foo": 1}}, "data.foo"),
        ("unknown top-level field", lambda m: {"type": "note.added", "data": note, "foo": 1}, "foo"),
        ("unknown event type", lambda m: {"type": "medication.taken", "data": note}, "type"),
        ("event type of wrong type", lambda m: {"type": 7, "data": note}, "type"),
        ("missing type", lambda m: {"data": note}, "type"),
        ("missing data", lambda m: {"type": "note.added"}, "data"),
        ("data not an object", lambda m: {"type": "note.added", "data": "hello"}, "data"),
        ("data a list", lambda m: {"type": "note.added", "data": [note]}, "data"),
        (
            "missing required data field",
            lambda m: {"type": "note.added", "data": {"voice": "child"}},
            "data.text",
        ),
        (
            "string field given a number",
            lambda m: {"type": "medication.changed", "data": {"medication": 12, "change": "started"}},
            "data.medication",
        ),
        (
            "int field given a word",
            lambda m: {
                "type": "therapy.logged",
                "data": {"discipline": "speech_therapy", "activity": "Sounds", "minutes": "ten"},
            },
            "data.minutes",
        ),
        (
            "negative minutes",
            lambda m: {
                "type": "therapy.logged",
                "data": {"discipline": "speech_therapy", "activity": "Sounds", "minutes": -5},
            },
            "data.minutes",
        ),
        ("empty text", lambda m: {"type": "note.added", "data": {"text": "", "voice": "child"}}, "data.text"),
        (
            "blank text",
            lambda m: {"type": "note.added", "data": {"text": "  \n ", "voice": "child"}},
            "data.text",
        ),
        (
            "overlong text",
            lambda m: {"type": "note.added", "data": {"text": "x" * 2001, "voice": "child"}},
            "data.text",
        ),
        (
            "bad severity",
            lambda m: {"type": "concern.raised", "data": {**concern, "severity": "dire"}},
            "data.severity",
        ),
        ("bad area", lambda m: {"type": "concern.raised", "data": {**concern, "area": "elbow"}}, "data.area"),
        (
            "bad change",
            lambda m: {"type": "medication.changed", "data": {"medication": "X", "change": "paused"}},
            "data.change",
        ),
        (
            "bad discipline",
            lambda m: {"type": "therapy.logged", "data": {"discipline": "neurology", "activity": "x"}},
            "data.discipline",
        ),
        (
            "bad goal status",
            lambda m: {"type": "goal.updated", "data": {"goal": "g", "status": "done"}},
            "data.status",
        ),
        (
            "bad voice",
            lambda m: {"type": "note.added", "data": {"text": "t", "voice": "doctor"}},
            "data.voice",
        ),
        (
            "naive occurred_at",
            lambda m: {"type": "note.added", "data": note, "occurred_at": "2025-03-01T10:00:00"},
            "occurred_at",
        ),
        (
            "occurred_at not a date",
            lambda m: {"type": "note.added", "data": note, "occurred_at": "yesterday"},
            "occurred_at",
        ),
        (
            "occurred_at out of range in UTC",
            lambda m: {"type": "note.added", "data": note, "occurred_at": "0001-01-01T00:00:00+05:00"},
            "occurred_at",
        ),
        ("naive start", lambda m: checkin(m, start=naive_start.isoformat()), "data.start"),
        ("naive end", lambda m: checkin(m, end=(naive_start + timedelta(hours=1)).isoformat()), "data.end"),
        ("end before start", lambda m: checkin(m, end=checkin(m)["data"]["start"]), ("data.end", "data")),
        ("no attendees", lambda m: checkin(m, attendees=[]), "data.attendees"),
        ("attendees not a list", lambda m: checkin(m, attendees=m["mom"]["id"]), "data.attendees"),
        ("attendee not a member", lambda m: checkin(m, attendees=["mem_nobody"]), "data.attendees.0"),
        (
            "second attendee not a member",
            lambda m: checkin(m, attendees=[m["mom"]["id"], "mem_nobody"]),
            "data.attendees.1",
        ),
        (
            "author not a member",
            lambda m: {"type": "note.added", "data": note, "author_member_id": "mem_nobody"},
            "author_member_id",
        ),
        (
            "author of the wrong type",
            lambda m: {"type": "note.added", "data": note, "author_member_id": 42},
            "author_member_id",
        ),
        (
            "update of an unknown check-in",
            lambda m: {**checkin(m), "type": "checkin.updated"},
            "data.checkin_id",
        ),
        (
            "cancel of an unknown check-in",
            lambda m: {"type": "checkin.cancelled", "data": {"checkin_id": "never-scheduled"}},
            "data.checkin_id",
        ),
        (
            "NUL in a data string",
            lambda m: {"type": "note.added", "data": {"text": "a\x00b", "voice": "child"}},
            "data.text",
        ),
    ]


BAD_EVENTS = _bad_event_cases()


@pytest.mark.parametrize("label, build, field", BAD_EVENTS, ids=[c[0] for c in BAD_EVENTS])
def test_invalid_event_is_422_naming_the_field(app, client, admin, team, label, build, field):
    nb, members = team
    assert_422_names(post_event(client, nb["id"], build(members), admin), field)
    assert event_ids(client, admin, nb["id"]) == []


def test_attendee_from_another_notebook_is_not_a_member(client, admin, team, other):
    nb, members = team
    body = {"type": "checkin.scheduled", "data": checkin_data([members["pt"]["id"], other["mom"]["id"]])}
    assert_422_names(post_event(client, nb["id"], body, admin), "data.attendees.1")
    body = {
        "type": "note.added",
        "data": {"text": "t", "voice": "team"},
        "author_member_id": other["mom"]["id"],
    }
    assert_422_names(post_event(client, nb["id"], body, admin), "author_member_id")


def test_scheduling_the_same_checkin_twice_is_422_until_cancelled(client, admin, team):
    nb, members = team
    bodies = valid_bodies(members)
    assert post_event(client, nb["id"], bodies["checkin.scheduled"], admin).status_code == 202
    assert_422_names(post_event(client, nb["id"], bodies["checkin.scheduled"], admin), "data.checkin_id")
    assert post_event(client, nb["id"], bodies["checkin.cancelled"], admin).status_code == 202
    assert_422_names(post_event(client, nb["id"], bodies["checkin.updated"], admin), "data.checkin_id")
    assert post_event(client, nb["id"], bodies["checkin.scheduled"], admin).status_code == 202


@pytest.mark.parametrize(
    "raw, content_type",
    [
        (b'{"type": "note.added", "data": {', "application/json"),
        (b"{'type': 'note.added'}", "application/json"),
        (b'{"type": "note.added", "data": {"text": "\xe9", "voice": "child"}}', "application/json"),
        (b"[" * 50_000 + b"]" * 50_000, "application/json"),
    ],
    ids=["truncated", "single quotes", "latin-1 bytes", "nested too deep"],
)
def test_malformed_body_is_400_json(client, admin, team, raw, content_type):
    nb, _ = team
    response = client.post(
        f"/v1/notebooks/{nb['id']}/events", data=raw, headers={**admin, "Content-Type": content_type}
    )
    assert_json_error(response, 400, "bad_request")
    assert event_ids(client, admin, nb["id"]) == []


@pytest.mark.parametrize(
    "raw, content_type",
    [
        (b"type=note.added&data=x", "application/x-www-form-urlencoded"),
        (b"\xff\xfe\x00", "application/octet-stream"),
        (b'{"type": "note.added", "data": {"text": "t", "voice": "child"}}', "text/plain"),
        (b'{"type": "note.added", "data": {"text": "t", "voice": "child"}}', None),
    ],
    ids=["form encoded", "binary", "JSON sent as text", "no content type"],
)
def test_a_body_not_sent_as_json_is_415_naming_the_type_expected(client, admin, team, raw, content_type):
    nb, _ = team
    headers = {**admin, **({"Content-Type": content_type} if content_type else {})}
    response = client.post(f"/v1/notebooks/{nb['id']}/events", data=raw, headers=headers)
    assert_json_error(response, 415, "unsupported_media_type")
    assert "application/json" in response.get_json()["message"]
    assert event_ids(client, admin, nb["id"]) == []


@pytest.mark.parametrize("body", [[], [1, 2], "note.added", 42, True, [{"type": "note.added"}]])
def test_non_object_body_is_422(client, admin, team, body):
    nb, _ = team
    response = client.post(
        f"/v1/notebooks/{nb['id']}/events",
        data=json.dumps(body),
        headers={**admin, "Content-Type": "application/json"},
    )
    assert_422_names(response, "body")


def test_event_on_unknown_notebook_is_404(client, admin):
    response = post_event(
        client, "nb_missing", {"type": "note.added", "data": {"text": "t", "voice": "child"}}, admin
    )
    assert_json_error(response, 404, "not_found")


# -- idempotency ------------------------------------------------------------------------------


def _deliveries_of(app, event_id) -> list[tuple[str, str, str]]:
    with db_session(app) as session:
        rows = session.execute(
            select(Delivery.member_id, Delivery.channel, Delivery.status).where(Delivery.event_id == event_id)
        ).all()
    return sorted(tuple(r) for r in rows)


def test_same_key_and_body_returns_the_first_event_and_alerts_once(app, client, admin, settings, team):
    nb, members = team
    body = valid_bodies(members)["medication.changed"]
    first = post_event(client, nb["id"], body, admin, key="med-2025-03-01")
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    drain(app)
    deliveries = _deliveries_of(app, first.get_json()["id"])
    effects = outbox_effects(settings)
    assert deliveries and effects[0] > 0 and effects[1] > 0

    # The same body again, keys reordered: the same request.
    again = post_event(
        client, nb["id"], json.loads(json.dumps(body, sort_keys=True)), admin, key="med-2025-03-01"
    )
    assert again.status_code == 202, again.get_json()
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    drain(app)
    assert event_ids(client, admin, nb["id"]) == [first.get_json()["id"]]
    assert _deliveries_of(app, first.get_json()["id"]) == deliveries
    with db_session(app) as session:
        assert session.scalar(text("SELECT count(*) FROM deliveries")) == len(deliveries)
    assert outbox_effects(settings) == effects


def test_same_key_with_another_body_is_409(client, admin, team):
    nb, members = team
    bodies = valid_bodies(members)
    first = post_event(client, nb["id"], bodies["goal.updated"], admin, key="k-1")
    assert first.status_code == 202
    changed = {**bodies["goal.updated"], "data": {"goal": "Walk 10 m unaided", "status": "met"}}
    assert_json_error(post_event(client, nb["id"], changed, admin, key="k-1"), 409, "conflict")
    assert_json_error(post_event(client, nb["id"], bodies["note.added"], admin, key="k-1"), 409, "conflict")
    assert event_ids(client, admin, nb["id"]) == [first.get_json()["id"]]
    # Without the key, or with another one, it is a new event.
    assert post_event(client, nb["id"], changed, admin).status_code == 202
    assert post_event(client, nb["id"], changed, admin, key="k-2").status_code == 202
    assert len(event_ids(client, admin, nb["id"])) == 3


def test_idempotency_keys_are_per_notebook(client, admin, team, other):
    nb, _ = team
    body = {"type": "note.added", "data": {"text": "same", "voice": "family"}}
    a = post_event(client, nb["id"], body, admin, key="shared")
    b = post_event(client, other["notebook"]["id"], body, admin, key="shared")
    assert a.status_code == b.status_code == 202
    assert a.get_json()["id"] != b.get_json()["id"]


@pytest.mark.parametrize("key, ok", [("x" * 200, True), ("x" * 201, False), ("", False), ("   ", False)])
def test_idempotency_key_length(client, admin, team, key, ok):
    nb, _ = team
    response = post_event(
        client, nb["id"], {"type": "note.added", "data": {"text": "t", "voice": "child"}}, admin, key
    )
    if ok:
        assert response.status_code == 202, response.get_json()
    else:
        assert_422_names(response, "header.Idempotency-Key")
        assert event_ids(client, admin, nb["id"]) == []


# -- events: listing --------------------------------------------------------------------------


def _seed_history(client, admin, nb_id) -> list[tuple[str, str, datetime]]:
    """Events at known times, posted out of order, two pairs sharing a timestamp."""
    plan = [
        ("note.added", 5),
        ("goal.updated", 1),
        ("note.added", 3),
        ("therapy.logged", 3),
        ("note.added", 0),
        ("goal.updated", 7),
        ("note.added", 7),
        ("therapy.logged", 2),
    ]
    data = {
        "note.added": {"text": "t", "voice": "family"},
        "goal.updated": {"goal": "g", "status": "new"},
        "therapy.logged": {"discipline": "occupational_therapy", "activity": "a"},
    }
    seeded = []
    for event_type, hours in plan:
        when = T0 + timedelta(hours=hours)
        # Send each time in a different offset; ordering is by the instant.
        local = when.astimezone(timezone_for(hours))
        response = post_event(
            client,
            nb_id,
            {"type": event_type, "data": data[event_type], "occurred_at": local.isoformat()},
            admin,
        )
        assert response.status_code == 202, response.get_json()
        seeded.append((response.get_json()["id"], event_type, when))
    return seeded


def timezone_for(hours: int):
    from datetime import timezone

    return timezone(timedelta(hours=hours - 4))


def _newest_first(seeded):
    return [i for i, _, _ in sorted(seeded, key=lambda s: (s[2], s[0]), reverse=True)]


def test_list_is_newest_first_by_occurred_at(client, admin, team):
    nb, _ = team
    seeded = _seed_history(client, admin, nb["id"])
    response = client.get(f"/v1/notebooks/{nb['id']}/events", headers=admin)
    body = response.get_json()
    assert body["next_cursor"] is None
    assert [e["id"] for e in body["items"]] == _newest_first(seeded)
    times = [e["occurred_at"] for e in body["items"]]
    assert times == sorted(times, reverse=True) and times[0] == "2025-03-01T19:00:00Z"
    assert set(body["items"][0]) >= {"id", "type", "data", "occurred_at", "recorded_at", "status"}


@pytest.mark.parametrize("event_type", ["note.added", "goal.updated", "therapy.logged", "concern.raised"])
def test_list_filters_by_type(client, admin, team, event_type):
    nb, _ = team
    seeded = _seed_history(client, admin, nb["id"])
    wanted = [i for i in _newest_first(seeded) if dict((s[0], s[1]) for s in seeded)[i] == event_type]
    assert event_ids(client, admin, nb["id"], type=event_type) == wanted


def test_list_since_is_inclusive_and_honours_the_offset(client, admin, team):
    nb, _ = team
    seeded = _seed_history(client, admin, nb["id"])
    since = T0 + timedelta(hours=3)
    for written in (since.isoformat(), since.astimezone(timezone_for(9)).isoformat(), "2025-03-01T15:00:00Z"):
        expected = [i for i in _newest_first(seeded) if dict((s[0], s[2]) for s in seeded)[i] >= since]
        assert event_ids(client, admin, nb["id"], since=written) == expected, written
    assert len(expected) == 5
    assert event_ids(client, admin, nb["id"], since="2030-01-01T00:00:00+00:00") == []


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 8])
def test_paging_visits_every_event_exactly_once(client, admin, team, limit):
    nb, _ = team
    seeded = _seed_history(client, admin, nb["id"])
    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        body = client.get(f"/v1/notebooks/{nb['id']}/events", headers=admin, query_string=query).get_json()
        assert 0 < len(body["items"]) <= limit
        seen += [e["id"] for e in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert pages < 20, "paging does not end"
    assert seen == _newest_first(seeded)
    assert pages == -(-len(seeded) // limit)


def test_paging_with_a_type_filter_and_new_events_in_between(client, admin, team):
    nb, _ = team
    seeded = _seed_history(client, admin, nb["id"])
    notes = [i for i in _newest_first(seeded) if dict((s[0], s[1]) for s in seeded)[i] == "note.added"]
    url = f"/v1/notebooks/{nb['id']}/events"
    page = client.get(url, headers=admin, query_string={"type": "note.added", "limit": 2}).get_json()
    # A newer note arriving mid-paging must not shift later pages.
    post_event(client, nb["id"], {"type": "note.added", "data": {"text": "late", "voice": "family"}}, admin)
    rest = client.get(
        url, headers=admin, query_string={"type": "note.added", "limit": 2, "cursor": page["next_cursor"]}
    ).get_json()
    assert [e["id"] for e in page["items"] + rest["items"]] == notes
    assert rest["next_cursor"] is None


@pytest.mark.parametrize(
    "query, field",
    [
        ({"cursor": "not-a-cursor"}, "query.cursor"),
        ({"cursor": "WyJ4Il0"}, "query.cursor"),  # base64 of ["x"]
        ({"cursor": "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzA1OjAwIiwiYSJd"}, "query.cursor"),  # year 1, +05:00
        ({"limit": 0}, "query.limit"),
        ({"limit": 201}, "query.limit"),
        ({"limit": -1}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
        ({"type": "medication.taken"}, "query.type"),
        ({"since": "2025-03-01T10:00:00"}, "query.since"),
        ({"since": "last week"}, "query.since"),
        ({"since": "9999-12-31T23:59:59-05:00"}, "query.since"),
        ({"sort": "oldest"}, "query.sort"),
        ({"q": "a\x00b"}, "query.q"),
    ],
)
def test_bad_list_query_is_422(client, admin, team, query, field):
    nb, _ = team
    response = client.get(f"/v1/notebooks/{nb['id']}/events", headers=admin, query_string=query)
    assert_422_names(response, field)


def test_list_limit_bounds_are_accepted(client, admin, team):
    nb, _ = team
    for limit in (1, 200):
        response = client.get(
            f"/v1/notebooks/{nb['id']}/events", headers=admin, query_string={"limit": limit}
        )
        assert response.status_code == 200, response.get_json()


# -- events: with their deliveries ------------------------------------------------------------


def test_routed_event_shows_its_deliveries(app, client, admin, team):
    nb, members = team
    created = post_event(
        client,
        nb["id"],
        {
            "type": "medication.changed",
            "data": {"medication": "Levetiracetam", "change": "started"},
            "author_member_id": members["mom"]["id"],
        },
        admin,
    ).get_json()
    drain(app)
    event = client.get(f"/v1/events/{created['id']}", headers=admin).get_json()
    assert event["status"] == "routed" and event["routed_at"]
    assert event["author_member_id"] == members["mom"]["id"]
    by_target = {(d["member_id"], d["channel"]): d for d in event["deliveries"]}
    dad, neuro = members["dad"]["id"], members["neuro"]["id"]
    # Medication → neurology and the parents, by SMS and email; the author is not told.
    assert set(by_target) == {(dad, "sms"), (dad, "email"), (neuro, "sms"), (neuro, "email")}
    assert all(member != members["mom"]["id"] for member, _ in by_target)
    for delivery in event["deliveries"]:
        assert DELIVERY_FIELDS <= set(delivery), delivery
        assert delivery["channel"] in ("sms", "email", "calendar")
    skipped = by_target[(neuro, "sms")]
    assert skipped["status"] == "skipped" and skipped["attempts"] == 0
    assert "phone" in skipped["error"] and skipped["provider_id"] is None
    for target in ((dad, "sms"), (dad, "email"), (neuro, "email")):
        delivery = by_target[target]
        assert delivery["status"] == "sent", delivery
        assert delivery["attempts"] == 1 and delivery["error"] is None
        assert delivery["provider_id"] and delivery["sent_at"]
        assert delivery["created_at"] <= delivery["updated_at"]


def test_checkin_goes_to_attendees_by_calendar(app, client, admin, team):
    nb, members = team
    attendees = [members["pt"]["id"], members["school"]["id"]]
    created = post_event(
        client, nb["id"], {"type": "checkin.scheduled", "data": checkin_data(attendees)}, admin
    )
    drain(app)
    event = client.get(f"/v1/events/{created.get_json()['id']}", headers=admin).get_json()
    assert sorted((d["member_id"], d["channel"], d["status"]) for d in event["deliveries"]) == sorted(
        (m, "calendar", "sent") for m in attendees
    )


def test_get_unknown_event_is_404(client, admin):
    assert_json_error(client.get("/v1/events/evt_missing", headers=admin), 404, "not_found")


# -- deliveries: dead letters and retry -------------------------------------------------------


def _failed_email_deliveries(smtp_app, smtp_api, smtp, nb_members):
    """Route a goal update (email to parents and school) while the SMTP server refuses with 550."""
    nb, _ = nb_members
    smtp.fail_always("550 5.1.1 Mailbox unavailable")
    event = smtp_api.event(nb["id"], "goal.updated", {"goal": "Walk 10 m", "status": "met"})
    drain(smtp_app)
    smtp.clear()
    return event


@pytest.fixture
def smtp_team(smtp_api):
    nb = smtp_api.notebook()
    members = {
        "mom": smtp_api.member(nb["id"], "Dana", "parent", email="dana@example.org", phone="+15555550101"),
        "dad": smtp_api.member(nb["id"], "Sam", "parent", email="sam@example.org"),
        "school": smtp_api.member(nb["id"], "Ms. Ortiz", "school", email="ortiz@example.org"),
        "neuro": smtp_api.member(nb["id"], "Dr. Shah", "neurology"),
    }
    return nb, members


def test_permanent_smtp_failure_is_a_dead_letter_that_retry_sends_once(smtp_app, smtp_api, smtp, smtp_team):
    client, admin = smtp_api.client, smtp_api.headers
    nb, members = smtp_team
    event = _failed_email_deliveries(smtp_app, smtp_api, smtp, smtp_team)
    # A successful one too, so the status filter has something to leave out.
    smtp_api.event(nb["id"], "medication.changed", {"medication": "Keppra", "change": "started"})
    drain(smtp_app)
    everything = client.get("/v1/deliveries", headers=admin).get_json()["items"]
    assert {d["status"] for d in everything} >= {"failed", "sent", "skipped"}

    failed = client.get("/v1/deliveries?status=failed", headers=admin).get_json()
    assert failed["next_cursor"] is None
    assert sorted(d["member_id"] for d in failed["items"]) == sorted(
        members[k]["id"] for k in ("mom", "dad", "school")
    )
    for delivery in failed["items"]:
        assert delivery["status"] == "failed" and delivery["event_id"] == event["id"]
        assert delivery["channel"] == "email" and "550" in delivery["error"]
        assert delivery["attempts"] == 1  # permanent: not retried by itself

    target = failed["items"][0]
    received = len(smtp.messages)  # the medication emails
    response = client.post(f"/v1/deliveries/{target['id']}/retry", headers=admin)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["status"] == "queued" and response.get_json()["id"] == target["id"]
    drain(smtp_app)
    sent = client.get(f"/v1/deliveries/{target['id']}", headers=admin).get_json()
    assert sent["status"] == "sent" and sent["attempts"] == 2 and sent["error"] is None
    assert sent["provider_id"]
    assert len(smtp.messages) == received + 1  # only the retried one went out, once
    member_email = {m["id"]: m["email"] for m in members.values()}[target["member_id"]]
    assert smtp.messages[-1]["To"].addresses[0].addr_spec == member_email

    # Retrying a sent delivery changes nothing.
    again = client.post(f"/v1/deliveries/{target['id']}/retry", headers=admin)
    assert again.status_code == 200 and again.get_json() == sent
    drain(smtp_app)
    assert len(smtp.messages) == received + 1
    remaining = client.get("/v1/deliveries?status=failed", headers=admin).get_json()["items"]
    assert target["id"] not in {d["id"] for d in remaining} and len(remaining) == 2


def test_retry_of_skipped_is_409_and_unknown_is_404(app, client, admin, team):
    nb, members = team
    event = post_event(
        client,
        nb["id"],
        {"type": "medication.changed", "data": {"medication": "X", "change": "stopped"}},
        admin,
    )
    drain(app)
    deliveries = client.get(f"/v1/events/{event.get_json()['id']}", headers=admin).get_json()["deliveries"]
    skipped = [d for d in deliveries if d["status"] == "skipped"]
    assert skipped
    response = client.post(f"/v1/deliveries/{skipped[0]['id']}/retry", headers=admin)
    assert_json_error(response, 409, "conflict")
    assert client.get(f"/v1/deliveries/{skipped[0]['id']}", headers=admin).get_json() == skipped[0]
    assert_json_error(client.post("/v1/deliveries/dlv_missing/retry", headers=admin), 404, "not_found")
    assert_json_error(client.get("/v1/deliveries/dlv_missing", headers=admin), 404, "not_found")


def test_failed_row_retried_through_the_outbox(app, client, admin, settings, team):
    """A failure set directly in the database (e.g. left by an older worker) is retried too."""
    nb, _ = team
    event = post_event(
        client, nb["id"], {"type": "goal.updated", "data": {"goal": "g", "status": "new"}}, admin
    )
    drain(app)
    with db_session(app) as session:
        target = session.scalars(
            select(Delivery).where(Delivery.event_id == event.get_json()["id"], Delivery.status == "sent")
        ).first()
        session.execute(
            update(Delivery)
            .where(Delivery.id == target.id)
            .values(status="failed", error="boom", provider_id=None)
        )
        session.commit()
    before = outbox_effects(settings)
    response = client.post(f"/v1/deliveries/{target.id}/retry", headers=admin)
    assert response.status_code == 202 and response.get_json()["status"] == "queued"
    drain(app)
    assert client.get(f"/v1/deliveries/{target.id}", headers=admin).get_json()["status"] == "sent"
    assert outbox_effects(settings)[1] == before[1] + 1


def test_deliveries_list_is_scoped_by_key(app, client, admin, api, team, other):
    nb, _ = team
    post_event(client, nb["id"], {"type": "goal.updated", "data": {"goal": "g", "status": "new"}}, admin)
    drain(app)
    with db_session(app) as session:
        counts = dict(
            session.execute(text("SELECT notebook_id, count(*) FROM deliveries GROUP BY notebook_id")).all()
        )
    assert set(counts) == {nb["id"], other["notebook"]["id"]}

    everything = client.get("/v1/deliveries", headers=admin).get_json()["items"]
    assert len(everything) == sum(counts.values())
    only_other = client.get(
        "/v1/deliveries", headers=admin, query_string={"notebook_id": other["notebook"]["id"]}
    ).get_json()["items"]
    assert {d["notebook_id"] for d in only_other} == {other["notebook"]["id"]}
    assert len(only_other) == counts[other["notebook"]["id"]]

    key = bearer(mint(api, nb["id"])["key"])
    mine = client.get("/v1/deliveries", headers=key).get_json()["items"]
    assert {d["notebook_id"] for d in mine} == {nb["id"]} and len(mine) == counts[nb["id"]]
    assert (
        client.get("/v1/deliveries", headers=key, query_string={"notebook_id": nb["id"]}).status_code == 200
    )
    failed = client.get("/v1/deliveries", headers=key, query_string={"status": "failed"}).get_json()
    assert failed == {"items": [], "next_cursor": None}


def test_deliveries_paging_visits_each_once(app, client, admin, team):
    nb, members = team
    for i in range(3):
        post_event(
            client,
            nb["id"],
            {"type": "concern.raised", "data": {"summary": f"c{i}", "severity": "urgent"}},
            admin,
        )
    drain(app)
    all_ids = [d["id"] for d in client.get("/v1/deliveries?limit=500", headers=admin).get_json()["items"]]
    assert len(all_ids) >= 20
    seen, cursor = [], None
    while True:
        query = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        body = client.get("/v1/deliveries", headers=admin, query_string=query).get_json()
        seen += [d["id"] for d in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == all_ids and len(set(seen)) == len(seen)


@pytest.mark.parametrize(
    "query, field",
    [
        ({"status": "lost"}, "query.status"),
        ({"limit": 0}, "query.limit"),
        ({"limit": 501}, "query.limit"),
        ({"cursor": "!!"}, "query.cursor"),
        ({"event": "evt_x"}, "query.event"),
    ],
)
def test_bad_deliveries_query_is_422(client, admin, query, field):
    assert_422_names(client.get("/v1/deliveries", headers=admin, query_string=query), field)


# -- health and the API description -----------------------------------------------------------


def test_healthz_reports_database_and_queue(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok", "queue": "ok", "queue_mode": "inprocess"}


def test_openapi_is_generated_from_the_schemas(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.is_json
    spec = response.get_json()
    assert spec["openapi"].startswith("3.") and spec["info"]["title"] == "careloop API"
    paths = spec["paths"]
    expected = {
        "/v1/notebooks": {"post"},
        "/v1/notebooks/{notebook_id}": {"get", "patch"},
        "/v1/members/{member_id}/links/revoke": {"post"},
        "/v1/notebooks/{notebook_id}/keys": {"post"},
        "/v1/notebooks/{notebook_id}/members": {"get", "post"},
        "/v1/members/{member_id}": {"patch"},
        "/v1/notebooks/{notebook_id}/events": {"get", "post"},
        "/v1/events/{event_id}": {"get"},
        "/v1/deliveries": {"get"},
        "/v1/deliveries/{delivery_id}": {"get"},
        "/v1/deliveries/{delivery_id}/retry": {"post"},
        "/healthz": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths.get(path, {})), path
    post_events = paths["/v1/notebooks/{notebook_id}/events"]["post"]
    assert {"202", "409", "422"} <= set(post_events["responses"])
    assert "201" in paths["/v1/notebooks/{notebook_id}/keys"]["post"]["responses"]
    assert "201" in paths["/v1/notebooks"]["post"]["responses"]

    schemas = spec["components"]["schemas"]

    def component(suffix):
        found = [v for k, v in schemas.items() if k == suffix or k.endswith("." + suffix)]
        assert len(found) == 1, (suffix, sorted(schemas))
        return found[0]

    # The event body is the discriminated union of the eight types.
    ref = post_events["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    union = schemas[ref.rsplit("/", 1)[1]]
    assert union["discriminator"]["propertyName"] == "type"
    assert set(union["discriminator"]["mapping"]) == set(EVENT_TYPES)
    medication = component("MedicationChanged")
    assert medication["properties"]["change"]["enum"] == [
        "started",
        "stopped",
        "dose_changed",
        "schedule_changed",
    ]
    assert set(medication["required"]) == {"medication", "change"}
    assert medication.get("additionalProperties") is False
    concern = component("ConcernRaised")
    assert concern["properties"]["severity"]["enum"] == ["low", "medium", "high", "urgent"]
    checkin = component("CheckinDetails")
    assert checkin["properties"]["start"]["format"] == "date-time"
    member = component("MemberIn")
    assert member["properties"]["role"]["enum"] == list(ROLES)
    # Every $ref resolves.
    refs = {r.rsplit("/", 1)[1] for r in _refs(spec)}
    assert refs and refs <= set(schemas)
    # Bearer auth is described, and the list query's parameters too.
    assert any(s.get("scheme") == "bearer" for s in spec["components"]["securitySchemes"].values())
    params = {p["name"] for p in paths["/v1/notebooks/{notebook_id}/events"]["get"]["parameters"]}
    assert {"type", "since", "limit", "cursor"} <= params


def test_openapi_describes_every_response_body(client):
    """Each operation documents what comes back: a schema for every non-204 success, and the
    error body (``error``, ``message``, ``fields``) for every error it lists."""
    spec = client.get("/openapi.json").get_json()
    schemas = spec["components"]["schemas"]

    def resolve(schema):
        while "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    operations = [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]
    assert len(operations) >= 12
    for path, method, op in operations:
        for status, response in op["responses"].items():
            where = f"{method.upper()} {path} → {status}"
            if status == "204":
                assert "content" not in response or not response["content"], where
                continue
            if path == "/metrics" and status == "200":  # Prometheus' text format, for a scraper
                assert list(response["content"]) == ["text/plain"], where
                assert response["content"]["text/plain"]["schema"] == {"type": "string"}, where
                continue
            if path == "/v1/twilio/inbound" and status == "200":  # Twilio reads TwiML, not JSON
                assert list(response["content"]) == ["text/xml"], where
                assert response["content"]["text/xml"]["schema"]["type"] == "string", where
                continue
            schema = resolve(response["content"]["application/json"]["schema"])
            assert schema.get("properties"), where
            if path == "/healthz" and status == "503":  # down: the health report itself
                assert schema["title"] == "HealthOut", where
            elif path == "/readyz" and status == "503":  # not ready: the readiness report itself
                assert schema["title"] == "ReadyOut", where
            elif status.startswith(("4", "5")):
                assert {"error", "message"} <= set(schema["required"]), where
                assert "fields" in schema["properties"], where
            else:
                assert schema.get("title") != "ErrorOut", where
    event = resolve(
        spec["paths"]["/v1/events/{event_id}"]["get"]["responses"]["200"]["content"]["application/json"][
            "schema"
        ]
    )
    delivery = resolve(event["properties"]["deliveries"]["items"])
    assert delivery["properties"]["status"]["enum"] == [
        "queued", "sending", "sent", "delivered", "undelivered", "failed", "skipped"
    ]  # fmt: skip


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_unknown_route_and_method_are_json(client, admin):
    assert_json_error(client.get("/v1/nothing-here", headers=admin), 404, "not_found")
    assert_json_error(client.delete("/v1/notebooks", headers=admin), 405, "method_not_allowed")


# -- never a 500 ------------------------------------------------------------------------------

GARBAGE = [
    b"",
    b"null",
    b"{}",
    b"[]",
    b'""',
    b"0",
    b"-1e999",
    b"NaN",
    b"{",
    b'{"":""}',
    b'{"type": null, "data": null}',
    b'{"type": "note.added", "data": {"text": null, "voice": null}}',
    b'{"type": "checkin.scheduled", "data": {"checkin_id": "x", "title": "t",'
    b' "start": "2025-01-01T10:00:00Z", "end": "2025-01-01T11:00:00Z", "attendees": [null, 1, {}]}}',
    b'{"type": "checkin.scheduled", "data": {"checkin_id": "x", "title": "t",'
    b' "start": "0001-01-01T00:00:00+14:00", "end": "9999-12-31T23:59:59-14:00", "attendees": ["m"]}}',
    b'{"name": "\\u0000", "child_name": "c", "timezone": "UTC"}',
    b'{"name": "a\\u0000", "role": "parent"}',
    b'{"name": "key \\u0000"}',
    b'{"email": null, "phone": null, "timezone": "Europe/Paris\\u0000"}',
    b'{"type": "note.added", "data": {"text": "t", "voice": "child"},'
    b' "occurred_at": "9999-12-31T23:00:00-05:00"}',
    b'{"type": "checkin.cancelled", "data": {"checkin_id": "\\u0000"}}',
    b'{"name": "\\ud800", "role": "parent", "child_name": "c", "timezone": "UTC"}',
    b'{"name": "a", "role": "parent", "email": "' + b"a" * 400 + b'@example.org"}',
    b'{"name": "a", "role": "parent", "phone": "+' + b"9" * 30 + b'"}',
    b'{"occurred_at": 1e308, "type": "note.added", "data": {"text": "t", "voice": "child"}}',
    b'{"occurred_at": -99999999999999, "type": "note.added", "data": {"text": "t", "voice": "child"}}',
    b'{"type": "therapy.logged",'
    b' "data": {"discipline": "speech_therapy", "activity": "a", "minutes": 1e400}}',
    b'{"type": "note.added", "data": {"text": "t", "voice": "child"}, "author_member_id": "'
    + b"m" * 5000
    + b'"}',
    b'{"a": ' * 900 + b"1" + b"}" * 900,
    b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
    b"\x00\x01\x02",
    '{"name": "Zoë 🧠", "child_name": "Maya", "timezone": "Pacific/Chatham"}'.encode(),
]


def test_garbage_never_gives_a_500(app, client, admin, team):
    nb, members = team
    key = bearer(mint(Api(client, admin), nb["id"])["key"])
    targets = [
        ("post", "/v1/notebooks"),
        ("post", f"/v1/notebooks/{nb['id']}/keys"),
        ("post", f"/v1/notebooks/{nb['id']}/members"),
        ("patch", f"/v1/members/{members['dad']['id']}"),
        ("post", f"/v1/notebooks/{nb['id']}/events"),
        ("post", "/v1/deliveries/dlv_missing/retry"),
    ]
    for headers in (admin, key):
        for method, url in targets:
            for raw in GARBAGE:
                for content_type in ("application/json", "text/plain"):
                    response = getattr(client, method)(
                        url, data=raw, headers={**headers, "Content-Type": content_type}
                    )
                    assert response.status_code < 500, (
                        method,
                        url,
                        raw[:80],
                        response.get_data(as_text=True),
                    )
                    assert response.is_json or response.status_code == 204, (method, url, raw[:80])
    drain(app)


GARBAGE_PATHS = [
    "/v1/notebooks/%00",
    "/v1/notebooks/nb_%00x/members",
    "/v1/events/evt%00",
    "/v1/deliveries/%00/retry",
    "/v1/notebooks/" + "x" * 3000,
    "/v1/events/%F0%9F%A7%A0",
    "/v1/events/..%2F..%2Fetc%2Fpasswd",
    "/v1/deliveries?notebook_id=%00",
    "/v1/deliveries?status=%00",
    "/v1/deliveries?cursor=%00%00",
    "/v1/deliveries?limit=1e3",
    "/v1/deliveries?limit=99999999999999999999999999",
    "/v1/notebooks/{nb}/events?since=0001-01-01T00:00:00%2B05:00",
    "/v1/notebooks/{nb}/events?since=%00",
    "/v1/notebooks/{nb}/events?type=note.added&type=goal.updated",
    "/v1/notebooks/{nb}/events?cursor=" + "A" * 4000,
    "/v1/notebooks/{nb}/events?cursor=WyIyMDI1LTAzLTAxVDEyOjAwOjAwKzAwOjAwIiwiYVx1MDAwMCJd",  # NUL in the id
]


@pytest.mark.parametrize("path", GARBAGE_PATHS)
def test_garbage_paths_and_queries_never_give_a_500(client, admin, team, path):
    nb, _ = team
    url = path.format(nb=nb["id"])
    for method in ("get", "post", "patch"):
        response = getattr(client, method)(url, headers=admin, json={"name": "x"})
        assert response.status_code < 500, (method, url, response.get_data(as_text=True))
        assert response.is_json, (method, url)


# -- known gaps outside the HTTP layer (careloop/events.py, workers/jobs.py) ------------------


def test_boolean_minutes_is_a_wrong_type(client, admin, team):
    nb, _ = team
    body = {
        "type": "therapy.logged",
        "data": {"discipline": "speech_therapy", "activity": "a", "minutes": True},
    }
    assert_422_names(post_event(client, nb["id"], body, admin), "data.minutes")


def test_checkin_times_out_of_range_are_422(client, admin, team):
    nb, members = team
    data = checkin_data([members["pt"]["id"]])
    data.update(start="9999-12-31T20:00:00-14:00", end="9999-12-31T23:59:59-14:00")
    response = post_event(client, nb["id"], {"type": "checkin.scheduled", "data": data}, admin)
    assert_422_names(response, ("data.start", "data.end", "data"))


@pytest.mark.parametrize("value", [0, 1700000000, True, "2026-01-01T10:00:00"])
def test_occurred_at_must_be_an_iso_string_with_offset(client, admin, team, value):
    nb, _ = team
    body = {"type": "note.added", "data": {"text": "hi", "voice": "family"}, "occurred_at": value}
    assert_422_names(post_event(client, nb["id"], body, admin), "occurred_at")
