"""``careloop demo``: the whole loop on the embedded default, through the real HTTP API.

SQLite, the in-process queue, and the file outbox — no Redis, no Twilio account, no SMTP
server, and nothing leaves the machine. It prints each member's own link to each event's
page; ``--serve`` then serves the demo's app on 127.0.0.1 so those links open in a browser.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import update
from werkzeug.serving import make_server

from careloop.config.settings import Settings
from careloop.db import dispose, session_scope, upgrade
from careloop.messages import local_time
from careloop.models import Delivery, Digest, Member, utcnow
from careloop.queues import DigestJob
from careloop.service import create_app
from careloop.vocabulary import DONE_STATUSES, ChannelKind
from careloop.workers.jobs import member_link

CHECKIN_ATTENDEES = ("Dana Rivera", "Sam Rivera", "Jordan Lee", "Ms. Ortiz")
"""Who the demo's check-in invites."""

DEFAULT_PORT = 8000
"""Where ``--serve`` listens (127.0.0.1 only); the links in the messages point there."""

TEAM = [
    ("Dana Rivera", "parent", "dana@example.org", "+15555550101"),
    ("Sam Rivera", "parent", "sam@example.org", "+15555550102"),
    ("Dr. Priya Shah", "neurology", "pshah@neuro.example.org", None),
    ("Alex Kim", "physical_therapy", "alex.kim@pt.example.org", "+15555550104"),
    ("Jordan Lee", "speech_therapy", "jlee@slp.example.org", None),
    ("Ms. Ortiz", "school", "ortiz@school.example.org", None),
]


def demo_events(member_ids: dict[str, str], now: datetime | None = None) -> list[dict]:
    """The demo's three events (API request bodies), for the team in :data:`TEAM` (name → id)."""
    parent = member_ids["Dana Rivera"]
    zone = ZoneInfo("America/Chicago")
    start = ((now or datetime.now(zone)).astimezone(zone) + timedelta(days=7)).replace(
        hour=15, minute=30, second=0, microsecond=0
    )
    return [
        {
            "type": "medication.changed",
            "author_member_id": parent,
            "data": {
                "medication": "levetiracetam",
                "change": "dose_changed",
                "dose": "250 mg twice daily",
                "effects": "sleepier in the afternoons",
            },
        },
        {
            "type": "concern.raised",
            "author_member_id": parent,
            "data": {
                "summary": "Coughing and choking on thin liquids at dinner",
                "severity": "urgent",
                "area": "swallowing",
            },
        },
        {
            "type": "checkin.scheduled",
            "author_member_id": parent,
            "data": {
                "checkin_id": "iep-2026-spring",
                "title": "IEP team meeting",
                "start": start.isoformat(),
                "end": (start + timedelta(hours=1)).isoformat(),
                "location": "Lincoln Elementary, room 12",
                "attendees": [member_ids[n] for n in CHECKIN_ATTENDEES],
            },
        },
    ]


def run_demo(
    outbox_dir: Path,
    database_url: str,
    echo: Callable[[str], None] = print,
    *,
    port: int = DEFAULT_PORT,
    serve: bool = False,
) -> dict:
    """Run the demo; returns the events and their deliveries as the API shows them, and
    each member's link per event (``links``: event id → member id → URL).

    With ``serve``, the demo's app then answers on ``127.0.0.1:port`` until interrupted, so
    the links (which point there) open in a browser.
    """
    if database_url.startswith("sqlite:///"):
        # Pooled connections of an earlier run in this process would keep writing into the
        # unlinked file; close them before starting afresh.
        dispose(database_url)
        path = Path(database_url[len("sqlite:///") :])
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    admin = secrets.token_urlsafe(32)
    # Only what is set here: no Redis, no Twilio, no SMTP, whatever the environment says.
    settings = Settings.from_values(
        database_url=database_url,
        admin_key=admin,
        outbox_dir=outbox_dir,
        mail_from="careloop <careloop@localhost>",
        public_url=f"http://127.0.0.1:{port}",
        # The demo builds its whole notebook through the API in a burst from one key: the
        # production write limit (10 a second) is for the world, not for this.
        rate_limit_writes="100000/minute;1000/second",
    )
    # The demo applies its migrations on any database (the app does so only for SQLite).
    upgrade(settings.database_url)
    app = create_app(settings=settings)
    try:
        shown = _record_and_show(app, admin, outbox_dir, echo)
        shown["timing"] = _show_timing(app, admin, shown, echo)
        shown["reminders"] = _show_reminders(app, admin, shown, echo)  # reminders (issue 12)
        shown["links"] = _show_links(app, shown["events"], echo, serve)
        if serve:
            _serve(app, port, echo)
        return shown
    finally:
        app.extensions["careloop"].runtime.close()  # its in-process queue stops with the demo


def _record_and_show(app, admin: str, outbox_dir: Path, echo: Callable[[str], None]) -> dict:
    client = app.test_client()
    headers = {"Authorization": f"Bearer {admin}"}

    def call(method: str, url: str, body: dict | None = None, expect: int = 201) -> dict:
        response = client.open(url, method=method, json=body, headers=headers)
        if response.status_code != expect:
            raise RuntimeError(f"{method} {url} answered {response.status_code}: {response.get_json()}")
        return response.get_json()

    notebook = call(
        "POST",
        "/v1/notebooks",
        {"name": "Maya's care notebook", "child_name": "Maya Rivera", "timezone": "America/Chicago"},
    )
    members = {}
    for name, role, email, phone in TEAM:
        body = {"name": name, "role": role, "email": email}
        if phone:
            body["phone"] = phone
        members[name] = call("POST", f"/v1/notebooks/{notebook['id']}/members", body)
    events = demo_events({name: member["id"] for name, member in members.items()})
    names = {m["id"]: f"{m['name']} ({m['role'].replace('_', ' ')})" for m in members.values()}
    echo(
        f"careloop demo — notebook {notebook['id']} for {notebook['child_name']}, {len(members)} team members"
    )
    echo(f"outbox: {outbox_dir.resolve()}")
    recorded = []
    dispatcher = app.extensions["careloop"].runtime.dispatcher
    for body in events:
        accepted = call("POST", f"/v1/notebooks/{notebook['id']}/events", body, expect=202)
        dispatcher.drain(timeout=30)
        recorded.append(call("GET", f"/v1/events/{accepted['id']}", expect=200))
    echo("")
    order = {member_id: index for index, member_id in enumerate(names)}
    channels = tuple(ChannelKind)
    for event in recorded:
        echo(f"● {event['type']}  ({event['id']}, recorded {event['recorded_at']})")
        for d in sorted(
            event["deliveries"], key=lambda d: (order[d["member_id"]], channels.index(d["channel"]))
        ):
            outcome = d["provider_id"] if d["status"] in DONE_STATUSES else d["error"]
            echo(f"    {d['status']:<8} {d['channel']:<8} → {names[d['member_id']]}: {outcome}")
    return {"notebook": notebook, "events": recorded, "members": members}


def _show_timing(app, admin: str, shown: dict, echo: Callable[[str], None]) -> dict:
    """Preferences and timing: a deferred alert and a daily digest.

    Alex (physical therapy) has quiet hours that began this hour (so the demo, whenever it
    runs, falls in them): a movement concern waits for their end. Dana gets therapy logs in a
    daily digest at 18:00; Sam turned email off for therapy. The demo then moves the digest's
    clock forward — its hour may be far off — and the digest goes out: one email for the three.
    """
    client = app.test_client()
    headers = {"Authorization": f"Bearer {admin}"}
    runtime = app.extensions["careloop"].runtime
    notebook, members = shown["notebook"], shown["members"]
    zone = ZoneInfo(notebook["timezone"])
    ids = {name: member["id"] for name, member in members.items()}

    def call(method: str, url: str, body: dict, expect: int) -> dict:
        response = client.open(url, method=method, json=body, headers=headers)
        if response.status_code != expect:
            raise RuntimeError(f"{method} {url} answered {response.status_code}: {response.get_json()}")
        return response.get_json()

    start = datetime.now(zone).hour
    quiet = {"start": f"{start:02d}:00", "end": f"{(start + 8) % 24:02d}:00"}
    preferences = {
        "Alex Kim": {"quiet_hours": quiet},
        "Dana Rivera": {"mode": "digest", "digest_hour": 18},
        "Sam Rivera": {"channels": {"therapy": ["sms"]}},
    }
    for name, body in preferences.items():
        call("PUT", f"/v1/members/{ids[name]}/preferences", body, 200)
    echo("")
    echo("Preferences and timing (rules decide who; each member's preferences decide how and when):")
    window = f"{quiet['start']}-{quiet['end']} {notebook['timezone']}"
    echo(f"    Alex Kim (physical therapy): quiet hours {window} (from this hour on, so the demo shows them)")
    echo("    Dana Rivera (parent): therapy logs, goals and notes in a daily digest at 18:00")
    echo("    Sam Rivera (parent): email turned off for therapy logs")
    bodies = [
        {
            "type": "concern.raised",
            "author_member_id": ids["Dana Rivera"],
            "data": {"summary": "Tripping more on the stairs", "severity": "medium", "area": "movement"},
        },
        *(
            {
                "type": "therapy.logged",
                "author_member_id": ids["Alex Kim"],
                "data": {"discipline": "physical_therapy", "activity": activity, "minutes": 45},
            }
            for activity in ("stairs practice", "balance beam", "treadmill")
        ),
    ]
    events = []
    for body in bodies:
        accepted = call("POST", f"/v1/notebooks/{notebook['id']}/events", body, 202)
        runtime.dispatcher.drain(timeout=30)
        events.append(call("GET", f"/v1/events/{accepted['id']}", None, 200))
    names = {m["id"]: f"{m['name']} ({m['role'].replace('_', ' ')})" for m in members.values()}
    digest_id = None
    for event in events:
        echo(f"● {event['type']}  ({event['id']})")
        for d in event["deliveries"]:
            who = f"{names[d['member_id']]}, {d['channel']}"
            if d["held_for"] == "quiet_hours":
                until = local_time(datetime.fromisoformat(d["next_attempt_at"]), notebook["timezone"])
                echo(f"    deferred: {who}: waits until quiet hours end, {until}")
            elif d["held_for"] == "digest":
                digest_id = d["digest_id"]
                due = local_time(datetime.fromisoformat(d["next_attempt_at"]), notebook["timezone"])
                echo(f"    digest:   {who}: waits for the daily digest, {due}")
            else:
                echo(f"    {d['status']}:  {who}: {d['provider_id'] or d['error']}")
    sent = None
    if digest_id:
        with session_scope(runtime.database_url) as session:
            session.execute(update(Digest).where(Digest.id == digest_id).values(due_at=utcnow()))
            session.commit()
        runtime.dispatcher.digests([DigestJob(digest_id, ChannelKind.EMAIL.value, utcnow())])
        runtime.dispatcher.drain(timeout=30)
        with session_scope(runtime.database_url) as session:
            digest = session.get(Digest, digest_id)
            sent = {"status": digest.status, "provider_id": digest.provider_id}
        echo(
            f"    the demo moves Dana's clock to 18:00: her digest {sent['status']}, one email for "
            f"{len(events) - 1} therapy logs: {sent['provider_id']}"
        )
    return {"events": events, "digest": sent}


# --- reminders (issue 12) ---------------------------------------------------------------------


def _show_reminders(app, admin: str, shown: dict, echo: Callable[[str], None]) -> dict:
    """A check-in tomorrow: each attendee's 24 h and 1 h reminders by their own channel; the 24 h
    ones fall due a few seconds later and go out (to the outbox)."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {admin}"}
    runtime = app.extensions["careloop"].runtime
    notebook, members = shown["notebook"], shown["members"]
    zone = notebook["timezone"]
    names = {m["id"]: f"{m['name']} ({m['role'].replace('_', ' ')})" for m in members.values()}
    # tomorrow at this time and a few seconds: its 24 h reminder falls due while the demo waits
    start = (utcnow() + timedelta(hours=24, seconds=4)).replace(microsecond=0)
    body = {
        "type": "checkin.scheduled",
        "author_member_id": members["Alex Kim"]["id"],
        "data": {
            "checkin_id": "pt-plan-call",
            "title": "PT planning call",
            "start": start.isoformat(),
            "end": (start + timedelta(minutes=30)).isoformat(),
            "attendees": [members["Dana Rivera"]["id"], members["Jordan Lee"]["id"]],
        },
    }
    response = client.post(f"/v1/notebooks/{notebook['id']}/events", json=body, headers=headers)
    if response.status_code != 202:
        raise RuntimeError(f"the demo's check-in answered {response.status_code}: {response.get_json()}")
    event_id = response.get_json()["id"]
    deadline = time.monotonic() + 30
    while True:  # routed (the reminders planned), not drained: that would wait for the 24 h ones
        event = client.get(f"/v1/events/{event_id}", headers=headers).get_json()
        if event["reminders"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    echo("")
    offsets = ", ".join(_offset_text(m) for m in runtime.settings.reminder_offsets)
    echo(f"Reminders ({offsets} before each check-in, by each attendee's preferred channel):")
    echo(f"● checkin.scheduled  ({event_id}): PT planning call, {local_time(start, zone)}")
    for r in event["reminders"]:
        due = local_time(datetime.fromisoformat(r["due_at"]), zone)
        before = _offset_text(r["offset_minutes"])
        echo(f"    {r['status']}: {names[r['member_id']]}, {r['channel']}, {before} before: {due}")
    runtime.dispatcher.drain(timeout=30)  # the 24 h reminders' time comes a few seconds later
    event = client.get(f"/v1/events/{event_id}", headers=headers).get_json()
    sent = [r for r in event["reminders"] if r["status"] == "sent"]
    echo("    a few seconds later, the 24 h reminders' time:")
    for r in sent:
        echo(f"    sent:    {names[r['member_id']]}, {r['channel']}: {r['provider_id']}")
    return {"event": event, "sent": sent}


def _offset_text(minutes: int) -> str:
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


def _show_links(app, events: list[dict], echo: Callable[[str], None], serving: bool) -> dict:
    """Print each member's own link to each event (the one their first message carried)."""
    runtime = app.extensions["careloop"].runtime
    team = [name for name, *_ in TEAM]
    links: dict[str, dict[str, str]] = {}
    echo("")
    how = "open them while the demo serves its app" if serving else "`careloop demo --serve` opens them"
    echo(f"Member links: each person's own page for each event ({how}):")
    with session_scope(runtime.database_url) as session:
        for event in events:
            echo(f"● {event['type']}")
            firsts: dict[str, tuple[Member, Delivery]] = {}
            for d in event["deliveries"]:
                if d["status"] in DONE_STATUSES and d["member_id"] not in firsts:
                    member = session.get(Member, d["member_id"])
                    firsts[d["member_id"]] = (member, session.get(Delivery, d["id"]))
            links[event["id"]] = {}
            for member, delivery in sorted(firsts.values(), key=lambda md: team.index(md[0].name)):
                url = member_link(runtime, delivery, member).url
                links[event["id"]][member.id] = url
                echo(f"    {member.name} ({member.role.replace('_', ' ')}): {url}")
    return links


def _serve(app, port: int, echo: Callable[[str], None]) -> None:
    """Answer on 127.0.0.1 only, until Ctrl-C (SIGINT)."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    echo("")
    echo(f"Serving the demo's app at http://127.0.0.1:{port} (this machine only). Ctrl-C stops.")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
