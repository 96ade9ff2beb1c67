"""Escalation until someone answers, and urgent alerts that get through another way (issue 12),
with the SMS "OK" of two-way SMS (issue 11).

The rules' ``acknowledge_within`` and ``escalate_to`` (validated when the rules load), the pure
planning in ``careloop.routing``, then the whole loop on real parts: PostgreSQL, Redis and a
real RQ worker with its scheduler, Twilio's API under Prism, aiosmtpd, and a controllable
clock (time-machine): nobody acknowledges → each step is alerted on every channel, once, even
after Redis restarted empty and with several workers sweeping at once; an acknowledgement by
the API, the member page or a text stops it; an urgent text that Twilio cannot take fails
over to email, once.
"""

from __future__ import annotations

import itertools
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from careloop.config.settings import DEFAULT_RULES_FILE
from careloop.db import session_scope
from careloop.models import Delivery, Escalation
from careloop.preferences import Preferences
from careloop.routing import EventView, MemberView, plan_acknowledgement, plan_failover, plan_step
from careloop.rules import RulesError, load_rules, parse_rules
from tests.conftest import (
    build_app,
    build_team,
    close_app,
    drain,
    make_settings,
    peer_settings,
    run_worker_once,
    wait_until,
)
from tests.peers.twilio_peer import TEST_AUTH_TOKEN, Fault
from tests.test_member_page_browser import browser  # noqa: F401 - the module's Chromium, a fixture

T0 = datetime(2027, 3, 3, 15, 0, tzinfo=UTC)  # 9:00 am in Chicago: nobody's quiet hours
PUBLIC = "https://careloop.test"
CONCERN = {"summary": "Choking on thin liquids at dinner", "severity": "urgent"}

RULES = """
rules:
  - name: urgent-to-parents
    when: {type: concern.raised, severity: urgent}
    notify: [parent]
    channels: [sms]
    acknowledge_within: 15m
    escalate_to:
      - {roles: [neurology], after: 15m}
      - {roles: [physical_therapy, school], after: 30m}
"""
"""Urgent concerns: the parents by text; nobody acknowledged within 15 minutes → neurology on
every channel; within 30 → physical therapy and the school."""

_sids = itertools.count(1)


# --- The rules file -----------------------------------------------------------------------------

BASE = {"name": "r", "when": {"type": "goal.updated"}, "notify": ["parent"], "channels": ["email"]}


def _errors(**changes) -> list[str]:
    with pytest.raises(RulesError) as info:
        parse_rules({"rules": [{**BASE, **changes}]})
    return info.value.errors


def test_escalate_to_steps_default_to_one_window_after_another():
    (rule,) = parse_rules(
        {
            "rules": [
                {
                    **BASE,
                    "acknowledge_within": "10m",
                    "escalate_to": [
                        {"roles": ["neurology"]},
                        {"roles": ["team"], "after": "1h"},
                        {"roles": ["mem_abc"]},
                    ],
                }
            ]
        }  # fmt: skip
    ).rules
    assert rule.acknowledge_within == 600
    assert [(s.roles, s.after) for s in rule.escalate_to] == [
        (("neurology",), 600.0),
        (("team",), 3600.0),
        (("mem_abc",), 4200.0),
    ]


def test_a_bad_escalation_is_refused_naming_every_problem_at_once():
    assert _errors(
        acknowledge_within=15, escalate_to=[{"roles": ["neurology"], "after": "5m", "when": 1}]
    ) == [
        "rule 'r': acknowledge_within must be a duration such as 15m, 2h or 90s, up to 7d (not 15)",
        "rule 'r': escalate_to step 1 has unknown keys ['when'] (use roles and after)",
    ]
    assert _errors(
        acknowledge_within="20m",
        escalate_to=[{"roles": ["attendees", "nurse"], "after": "10m"}, {"roles": []}, "parents"],
    ) == [
        "rule 'r': escalate_to step 1: roles has unknown role or target 'attendees'",
        "rule 'r': escalate_to step 1: roles has unknown role or target 'nurse'",
        "rule 'r': escalate_to step 1: after must not come before acknowledge_within",
        "rule 'r': escalate_to step 2: roles must be a non-empty list",
        "rule 'r': escalate_to step 3 must be a mapping with roles and after",
    ]
    assert _errors(acknowledge_within="5m", escalate_to=[{"roles": ["parent"], "after": "30m"},
                                                         {"roles": ["school"], "after": "20m"}]) == [
        "rule 'r': escalate_to step 2: after must come later than the step before it",
    ]  # fmt: skip
    assert _errors(acknowledge_within="8d") == [
        "rule 'r': acknowledge_within must be a duration such as 15m, 2h or 90s, up to 7d (not '8d')"
    ]
    assert _errors(escalate_to=[]) == [
        "rule 'r': escalate_to must be a non-empty list of steps such as {roles: [neurology], after: 15m}"
    ]
    # without acknowledge_within only urgent concerns wait for an acknowledgement: a goal never does
    assert _errors(escalate_to=[{"roles": ["school"]}]) == [
        "rule 'r': escalate_to needs acknowledge_within here: without it only urgent concerns wait for "
        "an acknowledgement, and this rule never matches one"
    ]


def test_the_shipped_rules_escalate_urgent_concerns_to_the_parents_then_the_doctors():
    rules = load_rules(DEFAULT_RULES_FILE)
    (rule,) = [r for r in rules.rules if r.escalate_to]
    assert rule.name == "serious-concerns-to-whole-team" and rule.acknowledge_within is None
    assert [(s.roles, s.after) for s in rule.escalate_to] == [
        (("parent", "guardian"), 900.0),
        (("neurology", "developmental_pediatrics"), 1800.0),
    ]


# --- Planning, pure -----------------------------------------------------------------------------


def _event(severity="urgent", author="mem_mom", **data) -> EventView:
    return EventView("evt_1", "concern.raised", {"summary": "s", "severity": severity, **data}, author)


def _member(member_id, role, phone=None, email=None, **kw) -> MemberView:
    return MemberView(member_id, role, email=email, phone=phone, timezone="America/Chicago", **kw)


def test_urgent_concerns_wait_15_minutes_for_an_acknowledgement_and_escalate_by_the_shipped_steps():
    rules = load_rules(DEFAULT_RULES_FILE)
    plan = plan_acknowledgement(_event(), rules, T0)
    assert (plan.within, plan.acknowledge_by, plan.rule) == (
        900,
        T0 + timedelta(minutes=15),
        rules.rules[1].name,
    )
    assert [(s.number, s.targets, s.due_at) for s in plan.steps] == [
        (1, ("parent", "guardian"), T0 + timedelta(minutes=15)),
        (2, ("neurology", "developmental_pediatrics"), T0 + timedelta(minutes=30)),
    ]
    assert plan_acknowledgement(_event("high"), rules, T0) is None  # high: told, but no wait
    custom = parse_rules({"rules": [
        {**BASE, "when": {"type": "concern.raised"}, "acknowledge_within": "1h"},
        {**BASE, "name": "r2", "when": {"type": "concern.raised"}, "acknowledge_within": "20m"},
    ]})  # fmt: skip
    plan = plan_acknowledgement(_event("low"), custom, T0)
    assert (plan.within, plan.rule, plan.steps) == (1200, "r", ())  # the shortest window; no steps


def test_a_step_alerts_its_members_on_every_channel_but_never_the_author_or_the_inactive():
    members = [
        _member("mem_mom", "parent", "+15555550101", "mom@example.org"),
        _member("mem_neuro", "neurology", None, "neuro@example.org"),
        _member("mem_pt", "physical_therapy", "+15555550104", "pt@example.org",
                preferences=Preferences(channels={"concern": ["email"]})),
        _member("mem_gone", "neurology", "+15555550105", "gone@example.org", active=False),
    ]  # fmt: skip
    planned = plan_step(_event(), members, ("parent", "neurology", "physical_therapy"), "rule")
    assert [(p.member_id, p.channel, p.skip_reason) for p in planned] == [
        ("mem_neuro", "sms", "member has no phone number"),
        ("mem_neuro", "email", None),
        ("mem_pt", "sms", "preference_off: the member turned sms off for concern events"),
        ("mem_pt", "email", None),
    ]
    assert all(p.rules == ("rule",) and p.not_before is None for p in planned)  # at once: urgent


def test_a_failover_tries_only_the_channels_not_tried_that_can_reach_the_member():
    dad = _member("mem_dad", "parent", "+15555550102", "dad@example.org")
    assert [(p.channel, p.skip_reason) for p in plan_failover(_event(), dad, {"sms"})] == [("email", None)]
    assert plan_failover(_event(), dad, {"sms", "email"}) == []
    no_email = _member("mem_x", "parent", "+15555550102")
    assert plan_failover(_event(), no_email, {"sms"}) == []


# --- Embedded (SQLite and PostgreSQL): the API, firing by the sweep ------------------------------


@pytest.fixture
def embedded(db_url, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    app, api = build_app(make_settings(db_url, tmp_path, rules_file=rules))
    yield app, api
    close_app(app)


def _urgent(api, nb, m):
    return api.event(nb["id"], "concern.raised", CONCERN, author_member_id=m["mom"]["id"])


def _one(deliveries, member_id, channel, step=0):
    (found,) = [
        d for d in deliveries
        if (d["member_id"], d["channel"], d["escalation_step"]) == (member_id, channel, step)
    ]  # fmt: skip
    return found


def test_an_acknowledgement_by_the_api_is_idempotent_and_stops_the_escalation(embedded):
    from careloop.workers.escalation import run_due

    app, api = embedded
    runtime = app.extensions["careloop"].runtime
    nb, m = build_team(api)
    event = _urgent(api, nb, m)
    drain(app)
    shown = api.get(f"/v1/events/{event['id']}")
    text = _one(shown["deliveries"], m["dad"]["id"], "sms")
    assert text["status"] == "sent" and text["acknowledged_at"] is None
    assert shown["escalation"]["status"] == "waiting"
    assert shown["escalation"]["acknowledged_at"] is None

    key = api.post(f"/v1/notebooks/{nb['id']}/keys", {"name": "clinic", "role": "clinician"})
    clinician = {"Authorization": f"Bearer {key['key']}"}
    first = api.client.post(f"/v1/deliveries/{text['id']}/ack", headers=clinician)
    assert first.status_code == 200, first.get_json()
    acked = first.get_json()
    assert (acked["acknowledged_by"], acked["acknowledged_via"]) == (key["id"], "api")
    again = api.client.post(f"/v1/deliveries/{text['id']}/ack", headers=api.headers)  # the admin, later
    assert again.status_code == 200 and again.get_json() == acked  # the first acknowledgement stands
    assert (
        api.client.post("/v1/deliveries/dlv_00000000000000000000/ack", headers=clinician).status_code == 404
    )

    shown = api.get(f"/v1/events/{event['id']}")
    escalation = shown["escalation"]
    assert escalation["status"] == "acknowledged" and escalation["next_step_at"] is None
    assert (escalation["acknowledged_by"], escalation["acknowledged_delivery_id"]) == (key["id"], text["id"])
    with _travel(datetime.now(UTC) + timedelta(hours=1)):
        assert run_due(runtime) == {"steps": 0, "failovers": 0}
        drain(app)
    after = api.get(f"/v1/events/{event['id']}")
    assert [s["fired_at"] for s in after["escalation"]["steps"]] == [None, None]
    assert len(after["deliveries"]) == len(shown["deliveries"])


def test_nobody_acknowledges_and_the_sweep_fires_each_step_once(embedded):
    from careloop.workers.escalation import run_due

    app, api = embedded
    runtime = app.extensions["careloop"].runtime
    url = runtime.database_url
    nb, m = build_team(api)
    event = _urgent(api, nb, m)
    drain(app)
    with _travel(datetime.now(UTC) + timedelta(minutes=16)):
        # the in-process queue's own sweep may get there first: either way it fires once
        fired = run_due(runtime)["steps"] + run_due(runtime)["steps"]
        wait_until(lambda: _event_escalation(url, event["id"]).fired, message="step 1 fired")
        drain(app)
    assert fired <= 1
    shown = api.get(f"/v1/events/{event['id']}")
    assert len([d for d in shown["deliveries"] if d["escalation_step"] == 1]) == 2
    neuro = m["neuro"]["id"]
    email = _one(shown["deliveries"], neuro, "email", step=1)
    assert email["status"] == "sent"
    assert email["reason"] == "escalation step 1: nobody acknowledged the alert within 15 minutes"
    assert _one(shown["deliveries"], neuro, "sms", step=1)["error"] == "member has no phone number"
    (step1, step2) = shown["escalation"]["steps"]
    assert step1["member_ids"] == [neuro] and step1["fired_at"] is not None and step2["fired_at"] is None
    assert shown["escalation"]["next_step_at"] == step2["due_at"]
    eml = (runtime.settings.outbox_dir / email["provider_id"].removeprefix("outbox:")).read_text()
    assert "Subject: Not yet acknowledged: an URGENT concern for Maya" in eml
    assert "Choking" not in eml  # as careful as any alert


# --- The whole loop: PostgreSQL, Redis, RQ's worker and scheduler, Twilio, SMTP, a clock ---------


@pytest.fixture
def loop(pg_only_url, tmp_path, redis_conn, smtp, twilio_proxy):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    settings = peer_settings(
        pg_only_url, tmp_path, smtp, twilio_proxy, rules_file=rules, retry_schedule=(60.0, 300.0, 1800.0)
    )
    app, api = build_app(settings)
    yield app, app.extensions["careloop"].runtime, api
    close_app(app)


_run_worker = run_worker_once


def _travel(at):
    return time_machine.travel(at, tick=True)


def _rows(url, event_id) -> list[Delivery]:
    with session_scope(url) as session:
        return list(session.scalars(select(Delivery).where(Delivery.event_id == event_id)).all())


def _texts(twilio_proxy) -> list[tuple[str, str]]:
    return [(s["To"], s["Body"]) for s in twilio_proxy.sent]


def test_unacknowledged_each_step_is_alerted_on_every_channel_once_even_after_redis_restarted_empty(
    loop, pg_only_url, smtp, twilio_proxy, redis_conn
):
    app, runtime, api = loop
    with _travel(T0):
        nb, m = build_team(api)
        event = _urgent(api, nb, m)
        _run_worker(runtime)
        escalation = api.get(f"/v1/events/{event['id']}")["escalation"]
        assert (escalation["status"], escalation["rule"], escalation["acknowledge_within"]) == (
            "waiting", "urgent-to-parents", 900,
        )  # fmt: skip
        due = [datetime.fromisoformat(s["due_at"]) for s in escalation["steps"]]
        assert T0 + timedelta(minutes=15) <= due[0] < T0 + timedelta(minutes=15, seconds=20)
        assert due[1] - due[0] == timedelta(minutes=15)
        assert [s["roles"] for s in escalation["steps"]] == [["neurology"], ["physical_therapy", "school"]]
        assert [to for to, _ in _texts(twilio_proxy)] == ["+15555550102"]  # dad (mom wrote it)
    with _travel(T0 + timedelta(minutes=14)):
        _run_worker(runtime)
        assert len(_rows(pg_only_url, event["id"])) == 1 and smtp.messages == []
    redis_conn.flushdb()  # Redis restarted empty: the database is the clock
    with _travel(T0 + timedelta(minutes=15, seconds=30)):
        _run_worker(runtime)
        _run_worker(runtime)  # a second sweep fires nothing more
        shown = api.get(f"/v1/events/{event['id']}")
        neuro = m["neuro"]["id"]
        step1 = [d for d in shown["deliveries"] if d["escalation_step"] == 1]
        assert sorted((d["member_id"], d["channel"], d["status"]) for d in step1) == sorted(
            [(neuro, "sms", "skipped"), (neuro, "email", "sent")]
        )
        assert [m_["To"].addresses[0].addr_spec for m_ in smtp.messages] == ["shah@example.org"]
        assert smtp.messages[0]["Subject"] == "Not yet acknowledged: an URGENT concern for Maya"
        assert shown["escalation"]["status"] == "overdue"
        assert shown["escalation"]["steps"][0]["member_ids"] == [neuro]
        assert shown["escalation"]["steps"][1]["fired_at"] is None
    with _travel(T0 + timedelta(minutes=30, seconds=30)):
        _run_worker(runtime)
        _run_worker(runtime)
    rows = _rows(pg_only_url, event["id"])
    step2 = {(d.member_id, d.channel): d for d in rows if d.escalation_step == 2}
    assert {k: d.status for k, d in step2.items()} == {
        (m["pt"]["id"], "sms"): "sent",
        (m["pt"]["id"], "email"): "sent",
        (m["school"]["id"], "sms"): "skipped",
        (m["school"]["id"], "email"): "sent",
    }
    assert len(rows) == 1 + 2 + 4, "each step fired once"
    texts = _texts(twilio_proxy)
    assert [to for to, _ in texts] == ["+15555550102", "+15555550104"]
    assert texts[1][1].startswith("careloop: not yet acknowledged: an URGENT concern")
    assert "Reply OK" in texts[1][1] and "Choking" not in texts[1][1]
    assert sorted(m_["To"].addresses[0].addr_spec for m_ in smtp.messages) == [
        "alex@example.org", "ortiz@example.org", "shah@example.org",
    ]  # fmt: skip
    assert all(d.attempts == 1 for d in rows if d.status == "sent")


def _event_escalation(url, event_id) -> Escalation:
    with session_scope(url) as session:
        return session.get(Escalation, event_id)


def _nothing_fires_later(runtime, api, url, event_id, twilio_proxy, smtp):
    texts, mails, rows = len(twilio_proxy.sent), len(smtp.messages), len(_rows(url, event_id))
    with _travel(T0 + timedelta(minutes=45)):
        _run_worker(runtime)
    assert (len(twilio_proxy.sent), len(smtp.messages), len(_rows(url, event_id))) == (texts, mails, rows)
    escalation = api.get(f"/v1/events/{event_id}")["escalation"]
    assert escalation["status"] == "acknowledged" and escalation["next_step_at"] is None
    assert [s["fired_at"] for s in escalation["steps"]] == [None, None]
    return escalation


def test_an_acknowledgement_by_the_api_before_the_window_ends_fires_no_step(
    loop, pg_only_url, smtp, twilio_proxy
):
    app, runtime, api = loop
    with _travel(T0):
        nb, m = build_team(api)
        event = _urgent(api, nb, m)
        _run_worker(runtime)
    with _travel(T0 + timedelta(minutes=10)):
        (text,) = _rows(pg_only_url, event["id"])
        acked = api.post(f"/v1/deliveries/{text.id}/ack", None, status=200)
        assert acked["acknowledged_at"].startswith("2027-03-03T15:10")
    escalation = _nothing_fires_later(runtime, api, pg_only_url, event["id"], twilio_proxy, smtp)
    assert (escalation["acknowledged_by"], escalation["acknowledged_via"]) == ("admin", "api")


def test_the_member_pages_button_acknowledges_as_the_member_and_fires_no_step(
    loop, pg_only_url, smtp, twilio_proxy
):
    app, runtime, api = loop
    page_client = app.test_client()
    with _travel(T0):
        nb, m = build_team(api)
        event = _urgent(api, nb, m)
        _run_worker(runtime)
        (text,) = _rows(pg_only_url, event["id"])
        page_url = "/m/" + runtime.links.token(text.id, 0, text.link_issued_at)
        page = page_client.get(page_url, base_url=PUBLIC)
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        assert "I have seen this" in html and "waiting for someone to say they have seen this" in html
        token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
        forged = page_client.post(f"{page_url}/ack", data={}, base_url=PUBLIC)
        assert forged.status_code == 400  # no CSRF token: nothing acknowledged
        elsewhere = {"Sec-Fetch-Site": "cross-site"}  # a form on another site, with a stolen token
        crossed = page_client.post(
            f"{page_url}/ack", data={"csrf_token": token}, base_url=PUBLIC, headers=elsewhere
        )
        assert crossed.status_code == 400
        assert _event_escalation(pg_only_url, event["id"]).acknowledged_at is None
        done = page_client.post(f"{page_url}/ack", data={"csrf_token": token}, base_url=PUBLIC)
        assert done.status_code == 303 and done.headers["Location"].endswith(page_url)
        again = page_client.get(page_url, base_url=PUBLIC).get_data(as_text=True)
        assert "You said you have seen this on Wed 3 Mar 2027, 9:00 am CST" in again
        assert "I have seen this" not in again
    escalation = _nothing_fires_later(runtime, api, pg_only_url, event["id"], twilio_proxy, smtp)
    assert (escalation["acknowledged_by"], escalation["acknowledged_via"]) == (m["dad"]["id"], "member_page")


def _text_in(client, body: str, sender: str):
    form = {"MessageSid": f"SM{next(_sids):032d}", "From": sender, "To": "+15005550006", "Body": body}
    url = f"{PUBLIC}/v1/twilio/inbound"
    signature = RequestValidator(TEST_AUTH_TOKEN).compute_signature(url, form)
    return client.post("/v1/twilio/inbound", data=form, headers={"X-Twilio-Signature": signature})


def test_a_text_back_saying_ok_acknowledges_the_latest_alert_and_fires_no_step(
    loop, pg_only_url, smtp, twilio_proxy
):
    app, runtime, api = loop
    client = app.test_client()
    with _travel(T0):
        nb, m = build_team(api)
        event = _urgent(api, nb, m)
        _run_worker(runtime)
    with _travel(T0 + timedelta(minutes=3)):
        answer = _text_in(client, " ok ", sender=m["dad"]["phone"])
        assert answer.status_code == 200 and "acknowledged" in answer.get_data(as_text=True)
        (text,) = _rows(pg_only_url, event["id"])
        assert (text.acknowledged_by, text.acknowledged_via) == (m["dad"]["id"], "sms")
        assert [e["type"] for e in api.get(f"/v1/notebooks/{nb['id']}/events")["items"]] == ["concern.raised"]
        # nothing left to acknowledge: a second "1" is kept as a note, as any other text
        assert "note was added" in _text_in(client, "1", sender=m["dad"]["phone"]).get_data(as_text=True)
        _run_worker(runtime)  # the note's routing
    events = api.get(f"/v1/notebooks/{nb['id']}/events")["items"]
    assert sorted(e["type"] for e in events) == ["concern.raised", "note.added"]
    escalation = _nothing_fires_later(runtime, api, pg_only_url, event["id"], twilio_proxy, smtp)
    assert (escalation["acknowledged_by"], escalation["acknowledged_via"]) == (m["dad"]["id"], "sms")


def test_an_urgent_text_twilio_cannot_take_fails_over_to_email_once(loop, pg_only_url, smtp, twilio_proxy):
    app, runtime, api = loop
    twilio_proxy.fail_always(Fault(status=503))  # Twilio is down: the text waits in its retry schedule
    with _travel(T0):
        nb, m = build_team(api)
        event = _urgent(api, nb, m)
        _run_worker(runtime)
        (text,) = _rows(pg_only_url, event["id"])
        assert (text.status, text.attempts, text.channel) == ("queued", 1, "sms")
    with _travel(T0 + timedelta(minutes=4)):
        _run_worker(runtime)  # retried (at 60 s) and refused again; not yet 5 minutes
        assert len(_rows(pg_only_url, event["id"])) == 1 and smtp.messages == []
    with _travel(T0 + timedelta(minutes=5, seconds=30)):
        _run_worker(runtime)
        _run_worker(runtime)
    with _travel(T0 + timedelta(minutes=9)):
        _run_worker(runtime)  # still failing by text; no second failover
    rows = {d.channel: d for d in _rows(pg_only_url, event["id"])}
    assert set(rows) == {"sms", "email"}
    email = rows["email"]
    assert (email.member_id, email.status, email.failover_of, email.escalation_step) == (
        m["dad"]["id"], "sent", text.id, 0,
    )  # fmt: skip
    assert email.reason == f"failover from {text.id}: the sms alert had not got through after 5 minutes"
    assert rows["sms"].status == "queued" and rows["sms"].failover_due_at is None
    assert [msg["To"].addresses[0].addr_spec for msg in smtp.messages] == ["sam@example.org"]
    assert smtp.messages[0]["Subject"] == "An URGENT concern for Maya"
    (failover,) = api.get(f"/v1/events/{event['id']}")["escalation"]["failovers"]
    assert (failover["from_delivery_id"], failover["delivery_id"], failover["channel"]) == (
        text.id, email.id, "email",
    )  # fmt: skip


def test_an_urgent_text_refused_for_good_fails_over_at_once(loop, pg_only_url, smtp, twilio_proxy):
    app, runtime, api = loop
    twilio_proxy.fail_always(Fault(status=400, code=21211))  # not a valid number: no retry will help
    with _travel(T0):
        nb, m = build_team(api)
        event = _urgent(api, nb, m)
        _run_worker(runtime)
        _run_worker(runtime)  # the next sweep, seconds later: failed → the member's email at once
        rows = {d.channel: d for d in _rows(pg_only_url, event["id"])}
    assert rows["sms"].status == "failed" and rows["email"].status == "sent"
    assert rows["email"].reason.startswith(
        f"failover from {rows['sms'].id}: the sms alert could not get through"
    )
    assert len(smtp.messages) == 1


def test_several_workers_sweeping_at_once_fire_each_step_and_each_failover_once(
    loop, pg_only_url, smtp, twilio_proxy
):
    from careloop.workers.escalation import run_due

    app, runtime, api = loop
    twilio_proxy.fail_always(Fault(status=503))
    with _travel(T0):
        nb, m = build_team(api)
        event = _urgent(api, nb, m)
        _run_worker(runtime)
    with _travel(T0 + timedelta(minutes=15, seconds=30)):  # step 1 and dad's failover are both due
        start = threading.Barrier(4)

        def sweep(_):
            start.wait()
            return run_due(runtime)

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(sweep, range(4)))
    assert sum(r["steps"] for r in results) == 1
    assert sum(r["failovers"] for r in results) == 1
    rows = _rows(pg_only_url, event["id"])
    assert sorted((d.member_id == m["neuro"]["id"], d.channel, d.escalation_step) for d in rows) == [
        (False, "email", 0), (False, "sms", 0), (True, "email", 1), (True, "sms", 1),
    ]  # fmt: skip
    (fired,) = _event_escalation(pg_only_url, event["id"]).fired
    assert fired["member_ids"] == [m["neuro"]["id"]]


# --- The button in a real browser ---------------------------------------------------------------


@pytest.fixture
def served_http(tmp_path):
    """The embedded app with the shipped rules on a live HTTP server on 127.0.0.1, its public
    URL http too (a Secure cookie never comes back over http)."""
    from werkzeug.serving import make_server

    settings = make_settings(f"sqlite:///{tmp_path / 'browser.db'}", tmp_path, public_url="http://127.0.0.1")
    app, api = build_app(settings)
    nb, m = build_team(api)
    event = _urgent(api, nb, m)
    drain(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app, api, m, event
    finally:
        server.shutdown()
        server.server_close()
        close_app(app)


def test_i_have_seen_this_in_chromium_acknowledges_with_no_referer_and_no_console_errors(
    browser,  # noqa: F811 - the fixture imported above
    served_http,
):
    from tests.test_member_page_browser import console, open_page

    base, app, api, m, event = served_http
    runtime = app.extensions["careloop"].runtime
    (text,) = [
        d
        for d in _rows(runtime.database_url, event["id"])
        if (d.member_id, d.channel) == (m["dad"]["id"], "sms")
    ]
    console(browser)
    open_page(browser, f"{base}/m/{runtime.links.token(text.id, 0, text.link_issued_at)}")
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    button = browser.find_element("id", "acknowledge")
    button.click()
    WebDriverWait(browser, 15).until(expected_conditions.staleness_of(button))  # the post left the page
    # Chromium may still be swapping documents: a node read mid-swap "does not belong to the document"
    WebDriverWait(browser, 15, ignored_exceptions=(StaleElementReferenceException, WebDriverException)).until(
        lambda driver: "You said you have seen this on" in driver.find_element("tag name", "body").text
    )  # the form posted, and the page came back saying so
    escalation = api.get(f"/v1/events/{event['id']}")["escalation"]
    assert (escalation["acknowledged_by"], escalation["acknowledged_via"]) == (m["dad"]["id"], "member_page")
    errors = [entry for entry in console(browser) if entry["level"] in ("SEVERE", "WARNING")]
    assert errors == [], errors
