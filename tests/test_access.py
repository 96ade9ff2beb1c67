"""Who may do what: the authorization matrix over every route of the app, and keys with roles.

The matrix is a table: for each route in the app's url_map (method and rule), the status each
kind of caller gets — no key, a revoked key, another notebook's key, this notebook's family,
clinician and integration keys, a clinic key given this notebook and one that was not, the
admin. A route added without a row fails the test. Every 404 a key gets for something beyond
its reach is compared with the 404 for something that does not exist: the same body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select

from careloop import access
from careloop.access import GRANTS, Action, KeyRole
from careloop.db import session_scope
from careloop.models import Delivery, InboundRecord
from tests.conftest import ADMIN_KEY, build_team, checkin_data, drain

CALLERS = (
    "none",
    "revoked",
    "other notebook",
    "family",
    "clinician",
    "integration",
    "clinic",
    "clinic without it",
    "admin",
)
"""The kinds of caller every route is tried with (the columns of the matrix)."""

KEYLESS = {"none": 401, "revoked": 401}

EVERY_ROLE = {"family", "clinician", "integration", "clinic", "admin"}
CLINICAL = {"family", "clinician", "clinic", "admin"}
FAMILY = {"family", "admin"}


def notebook_route(ok: int, allowed: set[str]) -> dict[str, int]:
    """A route on one notebook's data: 401 without a working key, ``ok`` for the allowed, and
    404 for every other key — as if the notebook (member, event, …) did not exist."""
    return {caller: KEYLESS.get(caller, ok if caller in allowed else 404) for caller in CALLERS}


def admin_route(ok: int) -> dict[str, int]:
    """An admin-only route: 401 without a working key, 403 (before the body) for other keys."""
    return {caller: KEYLESS.get(caller, ok if caller == "admin" else 403) for caller in CALLERS}


def everyone(status: int) -> dict[str, int]:
    """A route that does not look at keys at all."""
    return dict.fromkeys(CALLERS, status)


@dataclass
class World:
    """One notebook with a team, an event, a sent delivery and a member link; a second notebook;
    a key of every kind."""

    app: object
    client: object
    ids: dict[str, str]
    keys: dict[str, str] = field(default_factory=dict)
    link: str = ""

    def endpoint(self) -> str:
        """A webhook endpoint of the notebook (for nothing that happens here), made directly."""
        from careloop.models import WebhookEndpoint, WebhookEndpointNotebook

        url = self.app.extensions["careloop"].settings.database_url
        with session_scope(url) as session:
            made = WebhookEndpoint(
                url="https://93.184.216.34/careloop", secret="whsec_" + "A" * 43,
                event_types=["medication.changed"], payload="thin", last_sequence=0, enabled=True,
            )  # fmt: skip
            session.add(made)
            session.flush()
            session.add(WebhookEndpointNotebook(endpoint_id=made.id, notebook_id=self.ids["nb"]))
            session.commit()
            return made.id

    def feed(self) -> str:
        """The path of the member's calendar feed, as the admin is shown it now."""
        shown = self.client.get(f"/v1/members/{self.ids['member']}", headers=bearer(ADMIN_KEY)).get_json()
        return shown["calendar_feed_url"].removeprefix(self.app.extensions["careloop"].settings.public_url)

    def rejected_record(self) -> str:
        """A rejected inbound record of the source, whose kept body maps (a rerun accepts it)."""
        body = {"notebook_id": self.ids["nb"], "type": "note.added", "data": {"text": "hi", "voice": "team"}}
        url = self.app.extensions["careloop"].settings.database_url
        with session_scope(url) as session:
            made = InboundRecord(
                source_id=self.ids["source"], webhook_id="msg_1", first_key="msg_1", status="rejected",
                reason="fixed since", event_ids=[], content_type="application/json",
                body=json.dumps(body).encode(),
            )  # fmt: skip
            session.add(made)
            session.commit()
            return made.id

    def mint(self, role: KeyRole, notebook_id: str | None = None, notebook_ids=()) -> tuple[str, str]:
        url = self.app.extensions["careloop"].settings.database_url
        with session_scope(url) as session:
            if role in access.NOTEBOOK_KEY_ROLES:
                key, secret = access.create_key(session, name="k", role=role, notebook_id=notebook_id)
            else:
                key, secret = access.create_key(session, name="k", role=role, notebook_ids=list(notebook_ids))
            session.flush()
            return key.id, secret


@dataclass(frozen=True)
class Row:
    url: str
    """The URL, with ``{nb}``, ``{member}``, ``{event}``, ``{delivery}``, ``{key}`` (a fresh key of
    the notebook, minted for each request), ``{link}`` (a member link's path) in it."""
    expected: dict[str, int]
    body: dict | None = None


NOTE = {"type": "note.added", "data": {"text": "Slept well", "voice": "family"}}

MATRIX: dict[tuple[str, str], Row] = {
    ("POST", "/v1/notebooks"): Row(
        "/v1/notebooks", admin_route(201), {"name": "n", "child_name": "Kim", "timezone": "UTC"}
    ),
    ("GET", "/v1/notebooks/<id:notebook_id>"): Row("/v1/notebooks/{nb}", notebook_route(200, EVERY_ROLE)),
    ("PATCH", "/v1/notebooks/<id:notebook_id>"): Row(
        "/v1/notebooks/{nb}", notebook_route(200, FAMILY), {"email_detail": False}
    ),
    ("POST", "/v1/notebooks/<id:notebook_id>/members"): Row(
        "/v1/notebooks/{nb}/members", notebook_route(201, FAMILY), {"name": "Grandma", "role": "other"}
    ),
    ("GET", "/v1/notebooks/<id:notebook_id>/members"): Row(
        "/v1/notebooks/{nb}/members", notebook_route(200, EVERY_ROLE)
    ),
    ("PATCH", "/v1/members/<id:member_id>"): Row(
        "/v1/members/{member}", notebook_route(200, FAMILY), {"timezone": "America/Chicago"}
    ),
    ("POST", "/v1/members/<id:member_id>/links/revoke"): Row(
        "/v1/members/{member}/links/revoke", notebook_route(200, FAMILY)
    ),
    # how a member is reached (channels, quiet hours): as their contact details are
    ("GET", "/v1/members/<id:member_id>/preferences"): Row(
        "/v1/members/{member}/preferences", notebook_route(200, CLINICAL)
    ),
    ("PUT", "/v1/members/<id:member_id>/preferences"): Row(
        "/v1/members/{member}/preferences", notebook_route(200, FAMILY), {"mode": "digest"}
    ),
    # A member with their calendar feed URL: as their contact details are (the URL itself is shown to
    # the family and admin keys only).
    ("GET", "/v1/members/<id:member_id>"): Row("/v1/members/{member}", notebook_route(200, CLINICAL)),
    ("POST", "/v1/members/<id:member_id>/calendar_feed/rotate"): Row(
        "/v1/members/{member}/calendar_feed/rotate", notebook_route(200, FAMILY)
    ),
    # The notebook's CalDAV calendar: set, then read, then removed (idempotent), by the family and admin
    # keys. The URL is a public address (no name to look up); no check-in is ever published to it here.
    ("PUT", "/v1/notebooks/<id:notebook_id>/caldav"): Row(
        "/v1/notebooks/{nb}/caldav",
        notebook_route(200, FAMILY),
        {"url": "https://93.184.216.34/dav/team/", "username": "u", "password": "p"},
    ),
    ("GET", "/v1/notebooks/<id:notebook_id>/caldav"): Row(
        "/v1/notebooks/{nb}/caldav", notebook_route(200, FAMILY)
    ),
    ("DELETE", "/v1/notebooks/<id:notebook_id>/caldav"): Row(
        "/v1/notebooks/{nb}/caldav", notebook_route(204, FAMILY)
    ),
    ("POST", "/v1/notebooks/<id:notebook_id>/keys"): Row(
        "/v1/notebooks/{nb}/keys", notebook_route(201, FAMILY), {"name": "EHR", "role": "integration"}
    ),
    ("GET", "/v1/notebooks/<id:notebook_id>/keys"): Row(
        "/v1/notebooks/{nb}/keys", notebook_route(200, FAMILY)
    ),
    ("DELETE", "/v1/notebooks/<id:notebook_id>/keys/<id:key_id>"): Row(
        "/v1/notebooks/{nb}/keys/{key}", notebook_route(204, FAMILY)
    ),
    ("POST", "/v1/keys"): Row("/v1/keys", admin_route(201), {"name": "clinic", "notebook_ids": ["{nb}"]}),
    ("DELETE", "/v1/keys/<id:key_id>"): Row("/v1/keys/{key}", admin_route(204)),
    ("POST", "/v1/notebooks/<id:notebook_id>/events"): Row(
        "/v1/notebooks/{nb}/events", notebook_route(202, EVERY_ROLE), NOTE
    ),
    ("POST", "/v1/notebooks/<id:notebook_id>/events:batch"): Row(
        "/v1/notebooks/{nb}/events:batch", notebook_route(200, EVERY_ROLE), {"events": [NOTE]}
    ),
    ("GET", "/v1/notebooks/<id:notebook_id>/events"): Row(
        "/v1/notebooks/{nb}/events", notebook_route(200, EVERY_ROLE)
    ),
    ("GET", "/v1/events/<id:event_id>"): Row("/v1/events/{event}", notebook_route(200, EVERY_ROLE)),
    # A check-in and its RSVPs: read as events are; a reply is recorded as an event is (the
    # body here is JSON, not the text/calendar a REPLY is: 415 once the key may post it).
    ("GET", "/v1/notebooks/<id:notebook_id>/checkins/<checkin_id>"): Row(
        "/v1/notebooks/{nb}/checkins/{checkin}", notebook_route(200, EVERY_ROLE)
    ),
    ("POST", "/v1/notebooks/<id:notebook_id>/checkins/<checkin_id>/replies"): Row(
        "/v1/notebooks/{nb}/checkins/{checkin}/replies", notebook_route(415, EVERY_ROLE), {}
    ),
    ("GET", "/v1/deliveries"): Row("/v1/deliveries?notebook_id={nb}", notebook_route(200, EVERY_ROLE)),
    ("GET", "/v1/deliveries/<id:delivery_id>"): Row(
        "/v1/deliveries/{delivery}", notebook_route(200, EVERY_ROLE)
    ),
    # A sent delivery: "retried" means answered 200 with it unchanged.
    ("POST", "/v1/deliveries/<id:delivery_id>/retry"): Row(
        "/v1/deliveries/{delivery}/retry", notebook_route(200, CLINICAL)
    ),
    # Anyone who reaches the notebook may say an alert was seen; a second time changes nothing.
    ("POST", "/v1/deliveries/<id:delivery_id>/ack"): Row(
        "/v1/deliveries/{delivery}/ack", notebook_route(200, EVERY_ROLE)
    ),
    # Sources are the admin's; their webhook URL takes no key but a Standard Webhooks signature.
    ("POST", "/v1/sources"): Row(
        "/v1/sources", admin_route(201), {"name": "EHR", "kind": "careloop", "notebook_id": "{nb}"}
    ),
    ("GET", "/v1/sources"): Row("/v1/sources", admin_route(200)),
    ("GET", "/v1/sources/<id:source_id>"): Row("/v1/sources/{source}", admin_route(200)),
    ("PATCH", "/v1/sources/<id:source_id>"): Row("/v1/sources/{source}", admin_route(200), {"name": "EHR 2"}),
    ("POST", "/v1/sources/<id:source_id>/inbound/<id:record_id>/rerun"): Row(
        "/v1/sources/{source}/inbound/{inbound}/rerun", admin_route(200)
    ),
    ("POST", "/v1/sources/<id:source_id>/preview"): Row(
        "/v1/sources/{source}/preview", admin_route(200), {"body": {"notebook_id": "{nb}", **NOTE}}
    ),
    ("POST", "/v1/sources/<id:source_id>/inbound/rerun"): Row(
        "/v1/sources/{source}/inbound/rerun", admin_route(200), {"limit": 10}
    ),
    ("POST", "/v1/sources/<id:source_id>/secret/rotate"): Row(
        "/v1/sources/{source}/secret/rotate", admin_route(200)
    ),
    ("GET", "/v1/sources/<id:source_id>/inbound"): Row("/v1/sources/{source}/inbound", admin_route(200)),
    ("POST", "/v1/webhooks/<id:source_id>"): Row("/v1/webhooks/{source}", everyone(401)),
    ("GET", "/v1/notebooks/<id:notebook_id>/audit"): Row(
        "/v1/notebooks/{nb}/audit", notebook_route(200, FAMILY)
    ),
    # Webhook endpoints: the admin and family keys. The URL is a public address (no name to look
    # up) and nothing in this world is a medication change, so nothing is ever sent to it.
    ("POST", "/v1/endpoints"): Row(
        "/v1/endpoints",
        {
            **notebook_route(201, FAMILY),
            **dict.fromkeys(("clinician", "integration", "clinic", "clinic without it"), 403),
        },
        {"url": "https://93.184.216.34/hooks", "event_types": ["medication.changed"], "notebooks": ["{nb}"]},
    ),
    ("GET", "/v1/endpoints"): Row("/v1/endpoints", {caller: KEYLESS.get(caller, 200) for caller in CALLERS}),
    ("GET", "/v1/endpoints/<id:endpoint_id>"): Row("/v1/endpoints/{endpoint}", notebook_route(200, FAMILY)),
    ("DELETE", "/v1/endpoints/<id:endpoint_id>"): Row(
        "/v1/endpoints/{fresh_endpoint}", notebook_route(204, FAMILY)
    ),
    ("GET", "/v1/endpoints/<id:endpoint_id>/messages"): Row(
        "/v1/endpoints/{endpoint}/messages", notebook_route(200, FAMILY)
    ),
    ("GET", "/v1/endpoints/<id:endpoint_id>/attempts"): Row(
        "/v1/endpoints/{endpoint}/attempts", notebook_route(200, FAMILY)
    ),
    ("POST", "/v1/endpoints/<id:endpoint_id>/replay"): Row(
        "/v1/endpoints/{endpoint}/replay", notebook_route(202, FAMILY), {}
    ),
    # Twilio's callbacks take no key; without TWILIO_AUTH_TOKEN they are not there.
    ("POST", "/v1/twilio/status"): Row("/v1/twilio/status?delivery={delivery}", everyone(404)),
    ("POST", "/v1/twilio/inbound"): Row("/v1/twilio/inbound", everyone(404)),
    ("GET", "/healthz"): Row("/healthz", everyone(200)),
    ("GET", "/readyz"): Row("/readyz", everyone(200)),
    # Prometheus' scrape: CARELOOP_METRICS_TOKEN or the admin key; a notebook key is no token for it.
    ("GET", "/metrics"): Row("/metrics", {caller: 200 if caller == "admin" else 401 for caller in CALLERS}),
    ("GET", "/openapi.json"): Row("/openapi.json", everyone(200)),
    ("GET", "/docs"): Row("/docs", everyone(200)),
    ("GET", "/docs/oauth2-redirect"): Row("/docs/oauth2-redirect", everyone(200)),
    ("GET", "/docs/assets/<name>"): Row("/docs/assets/swagger-ui.css", everyone(200)),
    ("GET", "/static/<path:filename>"): Row("/static/careloop.css", everyone(404)),
    ("GET", "/assets/<path:filename>"): Row("/assets/careloop.css", everyone(200)),
    # Member links open with no key, and a key changes nothing about them.
    ("GET", "/m/<token>"): Row("{link}", everyone(200)),
    # A calendar feed opens with no key (the URL is the secret); a key changes nothing about it.
    ("GET", "/calendar/<token>.ics"): Row("{feed}", everyone(200)),
    # Its "I have seen this" button: a form post without the page's CSRF token is a 400.
    ("POST", "/m/<token>/ack"): Row("{link}/ack", everyone(400)),
    ("GET", "/m/"): Row("/m/", everyone(404)),
    ("GET", "/m/<path:_rest>"): Row("/m/a/b", everyone(404)),
    # Accept / Decline on a member page: a form post, refused without its CSRF token.
    ("POST", "/m/<token>/rsvp"): Row("{link}/rsvp", everyone(400)),
    # The timeline's pages take a signed-in session, never a Bearer key: without a session a
    # page redirects to /signin, and every form post without its CSRF token is a 400.
    ("GET", "/signin"): Row("/signin", everyone(200)),
    ("POST", "/signin"): Row("/signin", everyone(400)),
    ("POST", "/signin/email"): Row("/signin/email", everyone(400)),
    ("GET", "/signin/link/<token>"): Row("/signin/link/not-a-link", everyone(404)),
    ("POST", "/signin/link"): Row("/signin/link", everyone(400)),
    ("POST", "/signout"): Row("/signout", everyone(400)),
    ("GET", "/timeline"): Row("/timeline", everyone(303)),
    ("GET", "/timeline/admin"): Row("/timeline/admin", everyone(303)),
    ("POST", "/timeline/deliveries/<id:delivery_id>/retry"): Row(
        "/timeline/deliveries/{delivery}/retry", everyone(400)
    ),
}

MISSING = {
    "nb": "nb_00000000000000000000",
    "member": "mem_00000000000000000000",
    "event": "evt_00000000000000000000",
    "delivery": "dlv_00000000000000000000",
    "key": "key_00000000000000000000",
    "endpoint": "ep_00000000000000000000",
    "fresh_endpoint": "ep_00000000000000000000",
    "source": "src_00000000000000000000",
    "checkin": "no-such-checkin",
    "inbound": "inb_00000000000000000000",
}
"""Ids of nothing: a 404 for something out of reach must look exactly like one of these."""


def routes(app) -> set[tuple[str, str]]:
    """Every (method, rule) the app answers, HEAD and OPTIONS aside (Flask adds those)."""
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def _fill(template, ids: dict[str, str]):
    if isinstance(template, str):
        for name, value in ids.items():
            template = template.replace("{" + name + "}", value)
        return template
    if isinstance(template, dict):
        return {k: _fill(v, ids) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, ids) for v in template]
    return template


@pytest.fixture
def world(app, client, api):
    nb, members = build_team(api)
    other, _ = build_team(api)
    event = api.event(nb["id"], "goal.updated", {"goal": "Walk 10 m", "status": "progress"})
    api.event(nb["id"], "checkin.scheduled", checkin_data([members["mom"]["id"]], checkin_id="team-1"))
    drain(app)
    url = app.extensions["careloop"].settings.database_url
    with session_scope(url) as session:
        # mom's: the school's links are revoked by a row of the matrix, and the link must outlive it
        delivery = session.scalars(
            select(Delivery).where(
                Delivery.event_id == event["id"],
                Delivery.status == "sent",
                Delivery.member_id == members["mom"]["id"],
            )
        ).first()
        link = app.extensions["careloop"].runtime.links.token(delivery.id, 0, delivery.link_issued_at)
        delivery_id = delivery.id
    w = World(
        app=app,
        client=client,
        ids={
            "nb": nb["id"],
            "member": members["school"]["id"],
            "event": event["id"],
            "delivery": delivery_id,
            "checkin": "team-1",
            "source": api.post("/v1/sources", {"name": "EHR", "kind": "careloop", "notebook_id": nb["id"]})[
                "id"
            ],
        },
        link="/m/" + link,
    )
    for caller, role in (("family", "family"), ("clinician", "clinician"), ("integration", "integration")):
        w.keys[caller] = w.mint(KeyRole(role), nb["id"])[1]
    w.keys["other notebook"] = w.mint(KeyRole.FAMILY, other["id"])[1]
    w.keys["clinic"] = w.mint(KeyRole.CLINIC, notebook_ids=[other["id"], nb["id"]])[1]
    w.keys["clinic without it"] = w.mint(KeyRole.CLINIC, notebook_ids=[other["id"]])[1]
    revoked_id, w.keys["revoked"] = w.mint(KeyRole.FAMILY, nb["id"])
    w.keys["admin"] = ADMIN_KEY
    w.ids["endpoint"] = w.endpoint()
    w.ids["inbound"] = w.rejected_record()
    response = client.delete(f"/v1/notebooks/{nb['id']}/keys/{revoked_id}", headers=bearer(w.keys["family"]))
    assert response.status_code == 204
    return w


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def call(w: World, caller: str, method: str, row: Row, ids: dict[str, str]):
    if "{key}" in row.url and "key" not in ids:
        ids = {**ids, "key": w.mint(KeyRole.INTEGRATION, w.ids["nb"])[0]}
    if "{fresh_endpoint}" in row.url and "fresh_endpoint" not in ids:
        ids = {**ids, "fresh_endpoint": w.endpoint()}
    if "{feed}" in row.url:  # the member's feed URL as it is now (the matrix rotates it above)
        ids = {**ids, "feed": w.feed()}
    ids = {**ids, "link": w.link}
    headers = bearer(w.keys[caller]) if caller in w.keys else {}
    body = _fill(row.body, ids)
    return w.client.open(_fill(row.url, ids), method=method, json=body, headers=headers)


def test_every_route_of_the_app_is_in_the_matrix(app):
    """A new route fails here until the matrix says who may use it."""
    assert routes(app) == set(MATRIX), {
        "routes with no row": sorted(routes(app) - set(MATRIX)),
        "rows with no route": sorted(set(MATRIX) - routes(app)),
    }
    for key, row in MATRIX.items():
        assert set(row.expected) == set(CALLERS), key


def test_authorization_matrix(world):
    assert routes(world.app) == set(MATRIX)
    wrong = []
    for (method, rule), row in MATRIX.items():
        for caller in CALLERS:
            response = call(world, caller, method, row, world.ids)
            expected = row.expected[caller]
            if response.status_code != expected:
                wrong.append(
                    (method, rule, caller, expected, response.status_code, response.get_data(True)[:200])
                )
                continue
            if expected == 404 and rule.startswith("/v1/"):
                # Out of reach looks exactly like missing: same status, same body.
                missing = call(world, caller if caller in KEYLESS else "admin", method, row, MISSING)
                if (missing.status_code, missing.get_json()) != (404, response.get_json()):
                    wrong.append(
                        (method, rule, caller, "as missing", missing.get_json(), response.get_json())
                    )
            if expected == 401:
                scheme = "Signature" if rule.startswith("/v1/webhooks/") else "Bearer"
                assert response.headers["WWW-Authenticate"].startswith(scheme), (method, rule, caller)
    assert not wrong, "\n".join(map(repr, wrong))


def test_the_role_table_is_what_the_readme_says():
    """careloop.access.GRANTS, spelled out: a change to it is a decision, made here too."""
    assert GRANTS[KeyRole.FAMILY] == set(Action)
    assert GRANTS[KeyRole.CLINIC] == GRANTS[KeyRole.CLINICIAN]
    assert GRANTS[KeyRole.CLINICIAN] == {
        Action.READ_NOTEBOOK,
        Action.READ_MEMBERS,
        Action.READ_CONTACTS,
        Action.READ_EVENTS,
        Action.RECORD_EVENTS,
        Action.READ_DELIVERIES,
        Action.RETRY_DELIVERIES,
        Action.ACKNOWLEDGE_DELIVERIES,
    }
    assert GRANTS[KeyRole.INTEGRATION] == {
        Action.READ_NOTEBOOK,
        Action.READ_MEMBERS,
        Action.READ_EVENTS,
        Action.RECORD_EVENTS,
        Action.READ_DELIVERIES,
        Action.ACKNOWLEDGE_DELIVERIES,
    }


def test_an_integration_key_never_sees_a_phone_number_or_an_email(world):
    headers = bearer(world.keys["integration"])
    response = world.client.get(f"/v1/notebooks/{world.ids['nb']}/members", headers=headers)
    assert response.status_code == 200
    items = response.get_json()["items"]
    assert items and all(set(m) == {"id", "notebook_id", "name", "role", "active"} for m in items)
    text = response.get_data(as_text=True)
    assert "@" not in text and "+1555" not in text
    # A clinician's key, on the same notebook, sees them.
    clinician = world.client.get(
        f"/v1/notebooks/{world.ids['nb']}/members", headers=bearer(world.keys["clinician"])
    )
    assert "dana@example.org" in clinician.get_data(as_text=True)
    assert "+15555550101" in clinician.get_data(as_text=True)


# -- keys ----------------------------------------------------------------------------------------


def test_a_family_key_mints_lists_and_revokes_keys_of_its_notebook(world):
    nb, family = world.ids["nb"], bearer(world.keys["family"])
    made = world.client.post(
        f"/v1/notebooks/{nb}/keys", json={"name": "clinic EHR", "role": "clinician"}, headers=family
    )
    assert made.status_code == 201, made.get_json()
    created = made.get_json()
    assert created["key"].startswith("clk_") and len(created["key"]) >= 4 + 43  # 32 random bytes
    assert (
        created["role"] == "clinician" and created["notebook_ids"] == [nb] and created["last_used_at"] is None
    )
    default = world.client.post(f"/v1/notebooks/{nb}/keys", json={"name": "Dad's phone"}, headers=family)
    assert default.get_json()["role"] == "family"

    listed = world.client.get(f"/v1/notebooks/{nb}/keys", headers=family)
    body = listed.get_data(as_text=True)
    assert created["key"] not in body and created["key"].removeprefix("clk_") not in body
    items = {k["id"]: k for k in listed.get_json()["items"]}
    assert set(items[created["id"]]) == {
        "id",
        "notebook_id",
        "notebook_ids",
        "name",
        "role",
        "created_at",
        "last_used_at",
    }
    # The notebook's own keys and the clinic key given it; not the revoked one, not the clinic key
    # that was not given it.
    assert sorted(k["role"] for k in items.values()) == sorted(
        ["family", "clinician", "integration", "clinic", "clinician", "family"]
    )

    new_key = bearer(created["key"])
    assert world.client.get(f"/v1/notebooks/{nb}", headers=new_key).status_code == 200
    assert world.client.delete(f"/v1/notebooks/{nb}/keys/{created['id']}", headers=family).status_code == 204
    # Revoked at once: the very next request is a 401, and it is not listed any more.
    refused = world.client.get(f"/v1/notebooks/{nb}", headers=new_key)
    assert refused.status_code == 401 and refused.get_json()["error"] == "unauthorized"
    assert created["id"] not in {
        k["id"] for k in world.client.get(f"/v1/notebooks/{nb}/keys", headers=family).get_json()["items"]
    }
    # Revoking it again, or a key of another notebook through this one: as if there were none.
    assert world.client.delete(f"/v1/notebooks/{nb}/keys/{created['id']}", headers=family).status_code == 404


def test_key_roles_are_checked(world):
    nb, admin = world.ids["nb"], bearer(ADMIN_KEY)
    for role in ("clinic", "admin", "", None, 1):
        response = world.client.post(
            f"/v1/notebooks/{nb}/keys", json={"name": "x", "role": role}, headers=admin
        )
        assert response.status_code == 422 and "role" in response.get_json()["fields"], (
            role,
            response.get_json(),
        )
    response = world.client.post(
        "/v1/keys", json={"name": "x", "role": "family", "notebook_ids": [nb]}, headers=admin
    )
    assert response.status_code == 422 and "role" in response.get_json()["fields"]
    response = world.client.post("/v1/keys", json={"name": "x", "notebook_ids": []}, headers=admin)
    assert response.status_code == 422 and "notebook_ids" in response.get_json()["fields"]
    response = world.client.post(
        "/v1/keys", json={"name": "x", "notebook_ids": [nb, MISSING["nb"]]}, headers=admin
    )
    assert response.status_code == 422 and set(response.get_json()["fields"]) == {"notebook_ids.1"}


def test_a_clinic_key_reaches_its_notebooks_until_a_family_or_the_admin_takes_them(world, api):
    third, _ = build_team(api)
    nb, admin = world.ids["nb"], bearer(ADMIN_KEY)
    made = world.client.post(
        "/v1/keys", json={"name": "Northside clinic", "notebook_ids": [nb, third["id"], nb]}, headers=admin
    )
    assert made.status_code == 201, made.get_json()
    clinic = made.get_json()
    assert clinic["role"] == "clinic" and clinic["notebook_id"] is None
    assert clinic["notebook_ids"] == [nb, third["id"]]
    key = bearer(clinic["key"])
    for notebook in (nb, third["id"]):
        assert world.client.get(f"/v1/notebooks/{notebook}/events", headers=key).status_code == 200
    # Its deliveries listing covers its notebooks and nothing else.
    listed = world.client.get("/v1/deliveries?limit=500", headers=key).get_json()["items"]
    assert listed and {d["notebook_id"] for d in listed} <= {nb, third["id"]}

    # The family of one notebook takes it off theirs: a 404 there, the other still works.
    family = bearer(world.keys["family"])
    assert world.client.delete(f"/v1/notebooks/{nb}/keys/{clinic['id']}", headers=family).status_code == 204
    assert world.client.get(f"/v1/notebooks/{nb}", headers=key).status_code == 404
    assert world.client.get(f"/v1/notebooks/{third['id']}", headers=key).status_code == 200
    # The admin revokes it everywhere.
    assert world.client.delete(f"/v1/keys/{clinic['id']}", headers=admin).status_code == 204
    assert world.client.get(f"/v1/notebooks/{third['id']}", headers=key).status_code == 401
    assert world.client.delete(f"/v1/keys/{clinic['id']}", headers=admin).status_code == 404


def test_last_used_is_written_at_most_once_a_minute(world):
    from datetime import timedelta

    from careloop.models import ApiKey, utcnow

    url = world.app.extensions["careloop"].settings.database_url
    key_id, secret = world.mint(KeyRole.INTEGRATION, world.ids["nb"])

    def last_used():
        with session_scope(url) as session:
            return session.get(ApiKey, key_id).last_used_at

    assert last_used() is None
    assert world.client.get(f"/v1/notebooks/{world.ids['nb']}", headers=bearer(secret)).status_code == 200
    first = last_used()
    assert first is not None and abs(utcnow() - first) < timedelta(seconds=30)
    world.client.get(f"/v1/notebooks/{world.ids['nb']}", headers=bearer(secret))
    assert last_used() == first  # within the minute: not written again
    with session_scope(url) as session:
        session.get(ApiKey, key_id).last_used_at = first - timedelta(minutes=2)
    world.client.get(f"/v1/notebooks/{world.ids['nb']}", headers=bearer(secret))
    assert last_used() > first
    listed = world.client.get(f"/v1/notebooks/{world.ids['nb']}/keys", headers=bearer(ADMIN_KEY)).get_json()
    assert next(k for k in listed["items"] if k["id"] == key_id)["last_used_at"] is not None


# -- the audit log -------------------------------------------------------------------------------


def audit_rows(world, key: str | None = None, **query) -> list[dict]:
    rows, cursor = [], None
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        response = world.client.get(
            f"/v1/notebooks/{world.ids['nb']}/audit", query_string=params, headers=bearer(key or ADMIN_KEY)
        )
        assert response.status_code == 200, response.get_json()
        page = response.get_json()
        rows += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return rows


def test_the_audit_log_records_reads_writes_denials_and_link_views(world):
    from careloop.models import ApiKey

    nb = world.ids["nb"]
    url = world.app.extensions["careloop"].settings.database_url
    with session_scope(url) as session:
        key_ids = {
            caller: session.scalar(select(ApiKey.id).where(ApiKey.key_hash == access.hash_key(secret)))
            for caller, secret in world.keys.items()
            if caller != "admin"
        }
    c = world.client
    c.environ_base["REMOTE_ADDR"] = "203.0.113.7"
    c.get(f"/v1/events/{world.ids['event']}", headers=bearer(world.keys["clinician"]))
    c.post(f"/v1/notebooks/{nb}/events", json=NOTE, headers=bearer(world.keys["integration"]))
    c.patch(
        f"/v1/members/{world.ids['member']}", json={"name": "X"}, headers=bearer(world.keys["integration"])
    )
    c.get(f"/v1/notebooks/{nb}", headers=bearer(world.keys["other notebook"]))
    c.get(f"/v1/notebooks/{nb}", headers=bearer(world.keys["revoked"]))
    c.get(world.link)
    c.get("/m/not-a-token.at-all")

    rows = audit_rows(world, world.keys["family"], limit=2)  # paged two by two
    assert len({r["id"] for r in rows}) == len(rows)
    assert [r["at"] for r in rows] == sorted((r["at"] for r in rows), reverse=True)

    def find(**want):
        return [r for r in rows if all(r[k] == v for k, v in want.items())]

    read = find(actor_id=key_ids["clinician"], action="events.get_event", target_id=world.ids["event"])
    assert read and read[0]["status"] == 200 and read[0]["remote_addr"] == "203.0.113.7"
    created = find(actor_id=key_ids["integration"], action="events.create_event", status=202)
    assert created and created[0]["target_id"].startswith("evt_")
    assert find(actor_id=key_ids["integration"], action="notebooks.patch_member", status=404, reason="role")
    assert find(
        actor_id=key_ids["other notebook"], action="notebooks.get_notebook", status=404, reason="out of reach"
    )
    assert find(actor_type="key", actor_id=key_ids["revoked"], status=401, reason="revoked key")
    assert find(actor_type="member", action="member_link.view", target_id=world.ids["event"], status=200)
    assert find(actor_type="admin", action="keys.list_keys") == []  # not asked yet
    # The matrix fixture's own set-up is there too: the family revoking a key.
    assert find(
        actor_id=key_ids["family"], action="keys.revoke_key", target_id=key_ids["revoked"], status=204
    )

    # A refused link is recorded without a notebook (nothing says whose it was): not in this log.
    with session_scope(url) as session:
        from careloop.models import AuditEntry

        refused = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "member_link.view", AuditEntry.status == 404)
        ).all()
        assert [(r.notebook_id, r.reason) for r in refused] == [(None, "not a valid link")]


def test_audit_rows_hold_no_health_detail_no_contact_and_no_key(world):
    from careloop.models import AuditEntry

    nb = world.ids["nb"]
    med = {"type": "medication.changed", "data": {"medication": "Levetiracetam", "change": "started"}}
    world.client.post(f"/v1/notebooks/{nb}/events", json=med, headers=bearer(world.keys["family"]))
    world.client.get(f"/v1/notebooks/{nb}/members", headers=bearer(world.keys["clinician"]))
    world.client.get(world.link)
    url = world.app.extensions["careloop"].settings.database_url
    with session_scope(url) as session:
        dumped = repr([vars(r) for r in session.scalars(select(AuditEntry))])
    for secret in (
        "Levetiracetam",
        "Walk 10 m",
        "example.org",
        "+1555",
        "Rivera",
        "Ortiz",
        "clk_",
        world.link[3:],
    ):
        assert secret not in dumped, secret
    with pytest.raises(ValueError):
        from careloop import audit

        with session_scope(url) as session:
            audit.record(session, "Dana Rivera's phone", status=200, actor_type="admin")


def test_the_audit_log_is_append_only_in_the_database(world):
    from sqlalchemy import text
    from sqlalchemy.exc import DatabaseError

    from careloop.db import get_engine

    url = world.app.extensions["careloop"].settings.database_url
    assert audit_rows(world)
    for statement in ("UPDATE audit_log SET status = 200", "DELETE FROM audit_log"):
        with pytest.raises(DatabaseError, match="append-only"):
            with get_engine(url).begin() as conn:
                conn.execute(text(statement))
    assert audit_rows(world)


def test_clinician_and_integration_keys_cannot_read_the_audit_log(world):
    for caller in ("clinician", "integration", "clinic", "other notebook"):
        response = world.client.get(
            f"/v1/notebooks/{world.ids['nb']}/audit", headers=bearer(world.keys[caller])
        )
        assert response.status_code == 404, caller


def test_a_key_out_of_reach_is_refused_before_its_body_or_query_is_read(world):
    """Key, then reach and role, then input: a 404 whatever the body, never a 400 or a 422."""
    checked = 0
    for (method, rule), row in MATRIX.items():
        if not rule.startswith("/v1/") or method not in ("POST", "PATCH", "GET") or rule in (
            "/v1/deliveries",
            "/v1/endpoints",
        ):
            continue  # (/v1/deliveries names its notebook in the query, /v1/endpoints in the body)
        for caller in ("clinician", "integration", "other notebook", "clinic without it"):
            if row.expected[caller] != 404:
                continue
            url = _fill(row.url, {**world.ids, "key": MISSING["key"]})
            headers = {**bearer(world.keys[caller]), "Content-Type": "application/json"}
            if method == "GET":
                response = world.client.get(
                    url + ("&" if "?" in url else "?") + "limit=0&cursor=x", headers=headers
                )
            else:
                response = world.client.open(url, method=method, data=b'{"x": 1, "x": 2', headers=headers)
            assert response.status_code == 404, (method, rule, caller, response.get_json())
            checked += 1
    assert checked > 20


# -- the shell and the migration -----------------------------------------------------------------


def test_careloop_keys_create_list_revoke_from_the_shell(world, tmp_path):
    import json

    from careloop.models import AuditEntry
    from tests.test_cli import cli_env, invoke

    nb = world.ids["nb"]
    env = cli_env(world.app.extensions["careloop"].settings)
    made = invoke("keys", "create", "--notebook", nb, "--name", "front desk", "--role", "clinician", env=env)
    assert made.exit_code == 0, made.output
    secret = made.output.split("keep it safe): ")[1].strip()
    assert secret.startswith("clk_")
    key_id = made.output.split()[0]
    assert world.client.get(f"/v1/notebooks/{nb}/events", headers=bearer(secret)).status_code == 200

    listed = invoke("keys", "list", "--notebook", nb, "--json", env=env)
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert key_id in {r["id"] for r in rows} and secret not in listed.output
    assert next(r for r in rows if r["id"] == key_id)["role"] == "clinician"
    assert "front desk" in invoke("keys", "list", env=env).output

    clinic_args = ["--role", "clinic", "--notebook", nb, "--notebook", nb, "--name", "c", "--json"]
    clinic = invoke("keys", "create", *clinic_args, env=env)
    assert clinic.exit_code == 0 and json.loads(clinic.output)["notebook_ids"] == [nb]

    revoked = invoke("keys", "revoke", key_id, env=env)
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert world.client.get(f"/v1/notebooks/{nb}/events", headers=bearer(secret)).status_code == 401
    again = invoke("keys", "revoke", key_id, env=env)
    assert again.exit_code != 0 and "no such working key" in again.output

    for args, message in (
        (["--notebook", "nb_nothing", "--name", "x"], "no such notebook: nb_nothing"),
        (["--notebook", nb, "--notebook", nb, "--name", "x"], "reaches one notebook"),
        (["--notebook", nb, "--name", "two\nlines"], "--name"),
    ):
        failed = invoke("keys", "create", *args, env=env)
        assert failed.exit_code != 0 and message in failed.output, (args, failed.output)

    url = world.app.extensions["careloop"].settings.database_url
    with session_scope(url) as session:
        done = {(r.action, r.target_id, r.notebook_id) for r in session.scalars(select(AuditEntry))
                if r.actor_type == "operator"}  # fmt: skip
    assert {("cli.keys_create", key_id, nb), ("cli.keys_revoke", key_id, nb)} <= done


def test_keys_made_before_roles_become_family_keys(tmp_path):
    from sqlalchemy import create_engine, text

    from careloop.db import upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0003")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO notebooks (id, name, child_name, timezone, created_at, email_detail) "
                "VALUES ('nb_old', 'n', 'Kim', 'UTC', '2026-01-01 00:00:00', 0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO api_keys (id, notebook_id, name, key_hash, created_at) "
                "VALUES ('key_old', 'nb_old', 'old', :hash, '2026-01-01 00:00:00')"
            ),
            {"hash": access.hash_key("clk_old")},
        )
    upgrade(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT role, last_used_at FROM api_keys")).all() == [("family", None)]
    engine.dispose()
    with session_scope(url) as session:
        who = access.authenticate(session, "clk_old")
    assert (
        who.role == KeyRole.FAMILY
        and who.notebook_ids == {"nb_old"}
        and who.may(Action.MANAGE_KEYS, "nb_old")
    )


def test_twilio_callbacks_are_audited_signed_or_not(world, settings, tmp_path):
    from twilio.request_validator import RequestValidator

    from careloop.models import AuditEntry
    from careloop.service import create_app
    from tests.conftest import make_settings

    token = "f" * 32
    signed_app = create_app(
        {"TESTING": True}, settings=make_settings(settings.database_url, tmp_path, twilio_auth_token=token)
    )
    client = signed_app.test_client()
    path = f"/v1/twilio/status?attempt=1&delivery={world.ids['delivery']}"
    form = {"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"}
    signature = RequestValidator(token).compute_signature(settings.public_url + path, form)
    assert client.post(path, data=form, headers={"X-Twilio-Signature": signature}).status_code == 204
    assert client.post(path, data=form, headers={"X-Twilio-Signature": "forged"}).status_code == 403
    with session_scope(settings.database_url) as session:
        rows = session.scalars(select(AuditEntry).where(AuditEntry.action == "twilio.status_callback")).all()
        seen = sorted((r.actor_type, r.status, r.notebook_id, r.target_id, r.reason) for r in rows)
    assert seen == [
        ("anonymous", 403, None, None, "bad signature"),  # nothing unsigned is taken at its word
        ("twilio", 204, world.ids["nb"], world.ids["delivery"], None),
    ]
