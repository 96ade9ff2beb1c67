"""Member links: every text and email carries the member's own link to the event's page,
which opens without a key, shows what their role may see, and for a tampered, expired or
revoked link answers one plain "this link no longer works" page. On SQLite and PostgreSQL."""

from __future__ import annotations

import email
import email.policy
import http.client
import logging
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select, update
from werkzeug.serving import make_server

from careloop.config.settings import DEFAULT_RULES_FILE
from careloop.db import session_scope
from careloop.messages import local_date
from careloop.models import Delivery, InstanceSecret
from careloop.service.redaction import TokenRedactor
from tests.conftest import build_app, build_team, checkin_data, drain, make_settings

LINK = re.compile(r"https://careloop\.test/m/([A-Za-z0-9_.-]+)")
GONE = "This link no longer works"
MEDICATION = {"medication": "levetiracetam", "change": "dose_changed", "dose": "250 mg twice daily",
              "effects": "sleepier in the afternoons"}  # fmt: skip


def outbox_links(outbox: Path) -> dict[str, str]:
    """delivery id → the member link its message carried, from sms.log and the .eml files."""
    found: dict[str, str] = {}
    log = outbox / "sms.log"
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():
            _stamp, ref, _to, body = line.split("\t")
            (found[ref.rpartition(".")[0]],) = LINK.findall(body)
    for path in (outbox / "email").glob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        text = msg.get_body(("plain",)).get_content()
        html = msg.get_body(("html",)).get_content()
        (token,) = set(LINK.findall(text))
        assert set(LINK.findall(html)) == {token}, "the text and HTML parts carry the same link"
        found[path.name.split(".")[0]] = token
    return found


def path_of(token: str) -> str:
    return f"/m/{token}"


def deliveries(url: str, event_id: str) -> list[Delivery]:
    with session_scope(url) as session:
        return list(session.scalars(select(Delivery).where(Delivery.event_id == event_id)).all())


def row_of(url: str, event_id: str, member_id: str, channel: str) -> Delivery:
    (row,) = [d for d in deliveries(url, event_id) if d.member_id == member_id and d.channel == channel]
    return row


def link_for(settings, event_id: str, member_id: str, channel: str | None = None) -> str:
    """The token the member's (first sent) message about this event carried."""
    links = outbox_links(settings.outbox_dir)
    rows = [
        d for d in deliveries(settings.database_url, event_id)
        if d.member_id == member_id and d.status == "sent" and (channel is None or d.channel == channel)
    ]  # fmt: skip
    assert rows, (event_id, member_id, channel)
    return links[rows[0].id]


def page(client, token: str, status: int = 200) -> str:
    response = client.get(path_of(token))  # no Authorization header: a phone browser
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:500])
    assert response.mimetype == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "script-src" not in response.headers["Content-Security-Policy"]
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    return response.get_data(as_text=True)


def text_of(html: str) -> str:
    """The page's words, tags dropped and entities decoded, one space between them."""
    import html as html_lib

    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", html)).split())


@pytest.fixture
def med(app, api, team):
    nb, m = team
    event = api.event(nb["id"], "medication.changed", MEDICATION, author_member_id=m["mom"]["id"])
    drain(app)
    return event


# --- Links that open ------------------------------------------------------------------------------


def test_every_text_and_email_carries_a_link_of_its_own_that_opens_without_a_key(
    app, client, team, med, settings
):
    nb, m = team
    sent = [d for d in deliveries(settings.database_url, med["id"]) if d.status == "sent"]
    assert sorted((d.member_id, d.channel) for d in sent) == sorted(
        [(m["dad"]["id"], "sms"), (m["dad"]["id"], "email"), (m["neuro"]["id"], "email")]
    )
    links = outbox_links(settings.outbox_dir)
    tokens = [links[d.id] for d in sent]
    assert len(set(tokens)) == 3, "a link per delivery: per member and per event"
    for delivery, token in zip(sent, tokens, strict=True):
        assert len(token) < 60
        words = text_of(page(client, token))
        member = next(v for v in m.values() if v["id"] == delivery.member_id)
        assert f"For {member['name']} ({member['role']})" in words
        assert "A medication update in Maya's care notebook" in words
        assert "Recorded by Dana Rivera (parent)" in words
        # parents and neurology see medications: name, change, dose, effects
        assert "Medication levetiracetam" in words and "Dose 250 mg twice daily" in words
        assert "Change dose changed" in words and "Effects seen sleepier in the afternoons" in words
        assert "Times are in America/Chicago" in words
        # who else was told, and how; never the member themselves, never a skipped delivery
        told = words.split("Who else was told", 1)[1].split("This link is for", 1)[0]
        if delivery.member_id == m["dad"]["id"]:
            assert "Dr. Shah (neurology), by email" in told and "Sam Rivera" not in told
        else:
            assert "Sam Rivera (parent), by text and email" in told and "Dr. Shah" not in told
        until = local_date(delivery.link_issued_at + timedelta(days=30), "America/Chicago")
        assert f"This link is for {member['name']} only and works until {until}." in words


def test_the_page_shows_times_in_the_members_own_zone_else_the_notebooks(app, client, api, team, settings):
    nb, m = team
    berlin = api.member(nb["id"], "Oma Rivera", "guardian", email="oma@example.org", timezone="Europe/Berlin")
    event = api.event(
        nb["id"], "medication.changed", {"medication": "melatonin", "change": "started"},
        occurred_at="2026-01-12T21:30:00Z", author_member_id=m["mom"]["id"],
    )  # fmt: skip
    drain(app)
    in_berlin = text_of(page(client, link_for(settings, event["id"], berlin["id"])))
    assert "When Mon 12 Jan 2026, 10:30 pm CET" in in_berlin and "Times are in Europe/Berlin" in in_berlin
    in_chicago = text_of(page(client, link_for(settings, event["id"], m["dad"]["id"])))
    assert "When Mon 12 Jan 2026, 3:30 pm CST" in in_chicago


def test_a_checkin_page_shows_its_time_place_and_attendees(app, client, api, team, settings):
    nb, m = team
    attendees = [m["mom"]["id"], m["slp"]["id"], m["school"]["id"]]
    data = checkin_data(attendees, location="Lincoln Elementary, room 12")
    data.update(start="2026-03-10T20:30:00Z", end="2026-03-10T21:30:00Z")
    event = api.event(nb["id"], "checkin.scheduled", data, author_member_id=m["dad"]["id"])
    drain(app)
    words = text_of(page(client, link_for(settings, event["id"], m["school"]["id"], "calendar")))
    assert "A new team check-in in Maya's care notebook" in words
    assert "Check-in IEP meeting" in words
    assert "Time Tue 10 Mar 2026, 3:30 pm – 4:30 pm CDT" in words  # DST began on 8 March
    assert "Place Lincoln Elementary, room 12" in words
    assert "Attendees Dana Rivera (parent) Jordan Lee (speech therapy) Ms. Ortiz (school)" in words
    assert "You are invited" in words
    assert "Recorded by Sam Rivera (parent)" in words

    # The cancellation's page shows what was cancelled.
    cancel = api.event(nb["id"], "checkin.cancelled", {"checkin_id": data["checkin_id"]})
    drain(app)
    words = text_of(page(client, link_for(settings, cancel["id"], m["slp"]["id"], "calendar")))
    assert "The check-in that was cancelled" in words and "Check-in IEP meeting" in words
    assert "Place Lincoln Elementary, room 12" in words
    assert "Recorded by a connected system" in words


# --- Need-to-know on the page ------------------------------------------------------------------


@pytest.fixture
def everyone_app(db_url, tmp_path):
    """Routing that tells the whole team everything by email, so every role gets a link."""
    rules = yaml.safe_load(DEFAULT_RULES_FILE.read_text())
    rules["rules"].append(
        {"name": "all-to-team", "when": {"type": ["medication.changed", "concern.raised", "note.added",
                                                    "therapy.logged", "goal.updated"]},
         "notify": ["team"], "channels": ["email"]}
    )  # fmt: skip
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    settings = make_settings(db_url, tmp_path, rules_file=path)
    app, api = build_app(settings)
    yield app, api, settings
    drain(app)


def test_a_school_members_page_for_a_medication_change_shows_no_medication(everyone_app):
    app, api, settings = everyone_app
    nb, m = build_team(api)
    event = api.event(nb["id"], "medication.changed", MEDICATION, author_member_id=m["mom"]["id"])
    drain(app)
    client = app.test_client()
    html = page(client, link_for(settings, event["id"], m["school"]["id"]))
    words = text_of(html)
    assert "A medication update in Maya's care notebook" in words
    assert "Recorded by Dana Rivera (parent)" in words
    assert "shared only with the members of the care team whose role needs them" in words
    assert "ask Dana Rivera" in words
    for term in ("levetiracetam", "250 mg", "sleepier", "Dose", "dose changed", "Effects"):
        assert term.lower() not in html.lower(), term
    # ...and the therapists see no medication either; neurology does.
    for who in ("pt", "slp"):
        assert "levetiracetam" not in page(client, link_for(settings, event["id"], m[who]["id"]))
    assert "levetiracetam" in page(client, link_for(settings, event["id"], m["neuro"]["id"]))


@pytest.mark.parametrize(
    "data, sees",
    [
        # an urgent concern about swallowing: the therapists and neurology see it, the school does not
        ({"summary": "Coughs on thin liquids", "severity": "urgent", "area": "swallowing"},
         {"pt", "slp", "neuro", "dad"}),
        # a low concern about movement: physical therapy (its area) and the clinicians/family
        ({"summary": "Trips on stairs", "severity": "low", "area": "movement"}, {"pt", "neuro", "dad"}),
        # a concern about school: the school sees it
        ({"summary": "Tired after lunch in class", "severity": "medium", "area": "school"},
         {"school", "neuro", "dad"}),
    ],
)  # fmt: skip
def test_concern_pages_follow_the_role_policy(everyone_app, data, sees):
    app, api, settings = everyone_app
    nb, m = build_team(api)
    event = api.event(nb["id"], "concern.raised", data, author_member_id=m["mom"]["id"])
    drain(app)
    client = app.test_client()
    for who in ("dad", "neuro", "pt", "slp", "school"):
        html = page(client, link_for(settings, event["id"], m[who]["id"]))
        assert (data["summary"] in html) is (who in sees), who
        assert ("Concern" in text_of(html).split("Who else was told")[0].split("Details", 1)[-1]) is (
            who in sees
        ), who


# --- Links that no longer work ---------------------------------------------------------------------


def _flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


TAMPERINGS = {
    "one character of the signature changed": lambda t: _flip(t, len(t) - 3),
    "one character of the payload changed": lambda t: _flip(t, 2),
    "truncated": lambda t: t[:-4],
    "signature dropped": lambda t: t.split(".")[0],
    "payload of another length, re-signed never": lambda t: "AAAA" + t,
    "garbage": lambda t: "not-a-token",
    "non-ascii": lambda t: t + "é",
    "an extra path segment": lambda t: t + "/more",
    "empty": lambda t: "",
}


def test_tampered_links_get_the_same_plain_404_page_that_reveals_nothing(app, client, team, med, settings):
    nb, m = team
    token = link_for(settings, med["id"], m["dad"]["id"], "sms")
    assert "Sam Rivera" in page(client, token)
    bodies = set()
    for label, tamper in TAMPERINGS.items():
        html = page(client, tamper(token), status=404)
        words = text_of(html)
        assert GONE in words, label
        for secret in ("Sam", "Maya", "Rivera", "medication", "levetiracetam", med["id"], nb["id"]):
            assert secret not in html, (label, secret)
        bodies.add(html)
    assert len(bodies) == 1, "every refusal is the same page"


def test_a_link_signed_with_another_key_does_not_open(app, client, team, med, settings, db_url, tmp_path):
    from careloop.links import MemberLinks

    nb, m = team
    row = row_of(db_url, med["id"], m["dad"]["id"], "sms")
    forged = MemberLinks("someone-else's-key-" + "x" * 32).token(row.id, 0, row.link_issued_at)
    assert GONE in page(client, forged, status=404)
    genuine = app.extensions["careloop"].runtime.links.token(row.id, 0, row.link_issued_at)
    assert "Sam Rivera" in page(client, genuine)


def test_links_expire_after_their_lifetime(app, client, team, med, settings, db_url):
    nb, m = team
    links = app.extensions["careloop"].runtime.links
    row = row_of(db_url, med["id"], m["dad"]["id"], "sms")
    now = datetime.now(UTC)
    assert "Sam Rivera" in page(client, links.token(row.id, 0, now - timedelta(days=29, hours=23)))
    assert GONE in page(client, links.token(row.id, 0, now - timedelta(days=30, seconds=1)), status=404)


def test_the_lifetime_is_a_setting(db_url, tmp_path):
    settings = make_settings(db_url, tmp_path, link_ttl_days=1)
    app, api = build_app(settings)
    nb, m = build_team(api)
    event = api.event(nb["id"], "medication.changed", MEDICATION, author_member_id=m["mom"]["id"])
    drain(app)
    client = app.test_client()
    token = link_for(settings, event["id"], m["dad"]["id"], "sms")
    assert "Sam Rivera" in page(client, token)
    links = app.extensions["careloop"].runtime.links
    assert links.read(token, now=datetime.now(UTC) + timedelta(hours=23)).delivery_id
    row = row_of(db_url, event["id"], m["dad"]["id"], "sms")
    old = links.token(row.id, 0, datetime.now(UTC) - timedelta(days=1, seconds=1))
    assert GONE in page(client, old, status=404)
    # and the email says when the link stops working, in the member's zone
    mail_row = row_of(db_url, event["id"], m["dad"]["id"], "email")
    (mail,) = (settings.outbox_dir / "email").glob(f"{mail_row.id}.*.eml")
    body = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default).get_body(("plain",))
    until = local_date(links.expires_at(mail_row.link_issued_at), "America/Chicago")
    assert f"works until {until}." in body.get_content()


def test_revoking_a_members_links_stops_every_link_they_were_sent(
    app, client, api, admin, team, med, settings
):
    nb, m = team
    dad_sms = link_for(settings, med["id"], m["dad"]["id"], "sms")
    dad_email = link_for(settings, med["id"], m["dad"]["id"], "email")
    neuro = link_for(settings, med["id"], m["neuro"]["id"])

    response = client.post(f"/v1/members/{m['dad']['id']}/links/revoke", headers=admin)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["member_id"] == m["dad"]["id"] and body["revoked_at"].endswith("Z")

    assert GONE in page(client, dad_sms, status=404)
    assert GONE in page(client, dad_email, status=404)
    assert "Dr. Shah" in page(client, neuro), "other members' links still work"

    # later messages carry links that work
    again = api.event(nb["id"], "medication.changed", {"medication": "clobazam", "change": "started"},
                      author_member_id=m["mom"]["id"])  # fmt: skip
    drain(app)
    assert "clobazam" in page(client, link_for(settings, again["id"], m["dad"]["id"], "sms"))


def test_revoking_needs_a_key_that_reaches_the_member(app, client, api, admin, team):
    nb, m = team
    url = f"/v1/members/{m['dad']['id']}/links/revoke"
    assert client.post(url).status_code == 401
    other = api.notebook(child_name="Leo Park")
    minted = client.post(f"/v1/notebooks/{other['id']}/keys", json={"name": "k"}, headers=admin)
    key = minted.get_json()["key"]
    response = client.post(url, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"
    assert client.post("/v1/members/mem_nobody/links/revoke", headers=admin).status_code == 404


def test_deactivating_a_member_revokes_their_links_for_good(app, client, admin, team, med, settings):
    nb, m = team
    token = link_for(settings, med["id"], m["dad"]["id"], "sms")
    url = f"/v1/members/{m['dad']['id']}"
    assert client.patch(url, json={"active": False}, headers=admin).status_code == 200
    assert GONE in page(client, token, status=404)
    assert client.patch(url, json={"active": True}, headers=admin).status_code == 200
    assert GONE in page(client, token, status=404), "coming back does not revive old links"
    # a member's other changes leave their links alone
    neuro = link_for(settings, med["id"], m["neuro"]["id"])
    assert client.patch(f"/v1/members/{m['neuro']['id']}", json={"name": "Dr. P. Shah"},
                        headers=admin).status_code == 200  # fmt: skip
    assert "Dr. P. Shah" in page(client, neuro)


def test_a_retried_dead_letter_gets_a_fresh_link_and_one_round_renders_one_text(app, api, team, med, db_url):
    from careloop.deliveries import Claim, retry_failed
    from careloop.workers.jobs import build_message

    nb, m = team
    runtime = app.extensions["careloop"].runtime
    row = row_of(db_url, med["id"], m["dad"]["id"], "sms")

    def text(session, attempt: int) -> str:
        claim = Claim(delivery_id=row.id, token="t", attempt=attempt, round_attempt=attempt)
        return build_message(session, runtime, claim).text

    with session_scope(db_url) as session:
        first, again = text(session, 1), text(session, 2)
        assert first == again, "every attempt of a round carries the same text (Twilio lookups match it)"
        session.execute(
            update(Delivery).where(Delivery.id == row.id).values(
                status="failed", link_issued_at=datetime.now(UTC) - timedelta(days=40)
            )
        )  # fmt: skip
        session.commit()
        session.expire_all()
        stale = text(session, 3)
        assert retry_failed(session, row.id)
        session.expire_all()
        fresh = text(session, 3)
    client = app.test_client()
    assert GONE in page(client, LINK.search(stale).group(1), status=404)
    assert "Sam Rivera" in page(client, LINK.search(fresh).group(1)), "a retried message's link works"


# --- The signing key ----------------------------------------------------------------------------


def test_without_a_secret_key_one_is_made_once_and_shared_through_the_database(db_url, tmp_path, team):
    """Two processes on one database (the web app, a worker) verify each other's links."""
    first = build_app(make_settings(db_url, tmp_path))[0]
    second = build_app(make_settings(db_url, tmp_path))[0]
    links_1 = first.extensions["careloop"].runtime.links
    links_2 = second.extensions["careloop"].runtime.links
    now = datetime.now(UTC)
    token = links_1.token("dlv_" + "ab" * 10, 0, now)
    assert links_2.read(token).delivery_id == "dlv_" + "ab" * 10
    with session_scope(db_url) as session:
        assert len(session.scalars(select(InstanceSecret)).all()) == 1


def test_with_a_secret_key_only_links_signed_with_it_open(db_url, tmp_path):
    key_1, key_2 = "k1-" + "a" * 40, "k2-" + "b" * 40
    app_1 = build_app(make_settings(db_url, tmp_path, secret_key=key_1))[0]
    app_2 = build_app(make_settings(db_url, tmp_path, secret_key=key_2))[0]
    app_1b = build_app(make_settings(db_url, tmp_path, secret_key=key_1))[0]
    token = app_1.extensions["careloop"].runtime.links.token("dlv_" + "cd" * 10, 0, datetime.now(UTC))
    assert app_1b.extensions["careloop"].runtime.links.read(token)
    from careloop.links import LinkRefused

    with pytest.raises(LinkRefused, match="not a valid link"):
        app_2.extensions["careloop"].runtime.links.read(token)
    with session_scope(db_url) as session:
        assert session.scalars(select(InstanceSecret)).all() == [], "a configured key is never stored"


def test_a_short_secret_key_is_refused_at_start_with_its_name(tmp_path):
    from pydantic import ValidationError

    from careloop.config.settings import Settings

    with pytest.raises(ValidationError, match="CARELOOP_SECRET_KEY must be at least 32 characters"):
        Settings(secret_key="too-short")


# --- Tokens never reach a log ---------------------------------------------------------------------


def test_no_token_in_the_servers_request_log_nor_in_careloops(app, team, med, settings, caplog):
    """A real HTTP server (werkzeug's, as `careloop demo --serve` runs it) logs request lines."""
    nb, m = team
    token = link_for(settings, med["id"], m["dad"]["id"], "sms")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    caplog.set_level(logging.DEBUG)
    try:
        for path in (path_of(token), path_of(token[:-2] + "xx")):
            conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
            conn.request("GET", path)
            assert conn.getresponse().status in (200, 404)
            conn.close()
    finally:
        server.shutdown()
        server.server_close()
    lines = [r.getMessage() for r in caplog.records]
    assert any("/m/[token]" in line for line in lines if "GET" in line), lines
    assert not [line for line in lines if token[:20] in line or token[-10:] in line], lines
    assert any("member link viewed" in line and m["dad"]["id"] in line for line in lines), lines


def test_the_redactor_rewrites_gunicorns_access_line(app):
    record = logging.LogRecord(
        "gunicorn.access", logging.INFO, __file__, 1, '%(h)s "%(r)s" %(s)s',
        ({"h": "127.0.0.1", "r": f"GET /m/{'A' * 24}.{'B' * 22} HTTP/1.1", "s": "200"},),
        None,
    )  # fmt: skip
    assert TokenRedactor().filter(record)
    assert record.getMessage() == '127.0.0.1 "GET /m/[token] HTTP/1.1" 200'
    for name in ("werkzeug", "gunicorn.access", "gunicorn.error"):
        assert any(isinstance(f, TokenRedactor) for f in logging.getLogger(name).filters), name


def test_the_outbox_console_shows_links_without_their_token(capsys, app, team, med, settings):
    out = capsys.readouterr().out
    assert "https://careloop.test/m/[token]" in out
    for token in outbox_links(settings.outbox_dir).values():
        assert token not in out


# --- Pages for people -----------------------------------------------------------------------------


def test_the_assets_are_served_and_nothing_else_is_loaded(app, client, team, med, settings):
    nb, m = team
    html = page(client, link_for(settings, med["id"], m["dad"]["id"], "sms"))
    assert '<html lang="en">' in html and '<meta name="viewport"' in html
    assert "<main" in html and "<header" in html and "<footer" in html and "<script" not in html
    refs = re.findall(r'(?:href|src)="([^"]+)"', html)
    assert refs and all(r.startswith(("/assets/", "#")) for r in refs), refs
    for ref in refs:
        if ref.startswith("/assets/"):
            response = client.get(ref)
            assert response.status_code == 200, ref
            assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_page_that_breaks_is_a_plain_500_page_not_json(app, client, team, med, settings, monkeypatch):
    import careloop.service.member_pages as member_pages

    nb, m = team
    token = link_for(settings, med["id"], m["dad"]["id"], "sms")

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(member_pages, "_event_page", broken)
    html = page(client, token, status=500)
    assert "This page is not working right now" in html and "Sam" not in html


def test_member_pages_are_not_part_of_the_api_description(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    assert not [p for p in paths if p.startswith(("/m/", "/assets"))]
    assert "/v1/members/{member_id}/links/revoke" in paths
