"""Fixtures on real parts: SQLite and PostgreSQL, Redis (its own DB number), RQ workers,
aiosmtpd, and Twilio's API shape through Prism. Nothing talks to anything but 127.0.0.1."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

pytest_plugins = ["tests.peers.twilio_peer", "tests.peers.smtp_peer"]


def _lease_redis_db() -> int:
    """A Redis DB number of the tests' own (13, or the next free one down to 8 when another
    test run on this machine holds it), held by a file lock for the whole session."""
    import fcntl

    for number in range(13, 7, -1):
        handle = open(f"/tmp/careloop-test-redis-db-{number}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _leases.append(handle)  # keep it open (and locked) until the process ends
        return number
    raise RuntimeError("no free Redis DB number between 8 and 13 for the tests")


_leases: list = []
REDIS_URL = os.environ.get("CARELOOP_TEST_REDIS_URL") or f"redis://127.0.0.1:6379/{_lease_redis_db()}"
"""Tests own a Redis DB (13 unless another run holds it): flushed before and after each test."""

PG_ADMIN_URL = os.environ.get("CARELOOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
PG_DATABASE = f"careloop_test_{os.getpid()}"
"""Tests own this PostgreSQL database: created for the session, dropped after it (named by
pid, so two test runs on one machine never share or drop each other's data)."""

ADMIN_KEY = "test-admin-key-" + uuid.uuid4().hex

UNLIMITED = "1000000/minute"
"""A rate limit no test reaches by accident."""

DB_TABLES = (
    "reminders", "digests", "deliveries", "escalations", "outbox", "checkin_answers", "checkins", "events",
    "api_key_notebooks", "api_keys", "signin_links", "members", "notebooks", "instance_secrets", "audit_log",
    "webhook_attempts",
    "webhook_endpoint_notebooks", "webhook_endpoints", "inbound_records", "sources", "caldav_calendars",
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_conn():
    from redis import Redis

    conn = Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=10)
    try:
        conn.ping()
    except Exception as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); scripts/test.sh starts it")
    yield conn
    conn.flushdb()


@pytest.fixture(autouse=True)
def _clean_redis(request):
    if "redis_conn" not in request.fixturenames and "redis_settings" not in request.fixturenames:
        yield
        return
    conn = request.getfixturevalue("redis_conn")
    conn.flushdb()
    yield
    conn.flushdb()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    from careloop.db import dispose_all, upgrade

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for (name,) in conn.execute(
                text("SELECT datname FROM pg_database WHERE datname LIKE 'careloop_test_%'")
            ):
                if not _pid_alive(int(name.rsplit("_", 1)[1])):  # left behind by a killed run
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{PG_DATABASE}"'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}); scripts/test.sh starts it")
    url = make_url(PG_ADMIN_URL).set(database=PG_DATABASE).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    dispose_all()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> Iterator[str]:
    """Every test that takes this runs twice: on SQLite and on PostgreSQL."""
    from careloop.db import dispose, upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'careloop-test.db'}"
        upgrade(url)
        yield url
        dispose(url)
        return
    url = request.getfixturevalue("pg_url")
    _truncate(url)
    yield url
    _truncate(url)


@pytest.fixture
def pg_only_url(pg_url) -> Iterator[str]:
    _truncate(pg_url)
    yield pg_url
    _truncate(pg_url)


def _truncate(url: str) -> None:
    from careloop.db import get_engine

    with get_engine(url).begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(DB_TABLES)} RESTART IDENTITY CASCADE"))


def make_settings(db_url: str, tmp_path: Path, **overrides):
    from careloop.config.settings import Settings

    values = dict(
        database_url=db_url,
        redis_url=None,
        admin_key=ADMIN_KEY,
        outbox_dir=tmp_path / "outbox",
        public_url="https://careloop.test",
        twilio_account_sid=None,
        twilio_auth_token=None,
        twilio_from=None,
        twilio_api_url=None,
        smtp_host=None,
        mail_from="careloop <careloop@careloop.test>",
        provider_timeout=2.0,
        claim_timeout=30.0,
        retry_schedule=(0.05, 0.1, 0.2, 0.4),  # five attempts in well under a second
        relay_interval=0.5,
        queue_prefix="careloop-test",
        # Tests post far faster than any person: limits only where a test asks for them.
        rate_limit_reads=UNLIMITED,
        rate_limit_writes=UNLIMITED,
        rate_limit_member_links=UNLIMITED,
        rate_limit_webhooks=UNLIMITED,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(db_url, tmp_path):
    """Embedded default: the database under test, in-process queue, file outbox."""
    return make_settings(db_url, tmp_path)


def build_app(settings):
    """The app for these settings, and an Api helper holding the admin key."""
    from careloop.service import create_app

    app = create_app({"TESTING": True}, settings=settings)
    return app, Api(app.test_client(), {"Authorization": f"Bearer {ADMIN_KEY}"})


def close_app(app) -> None:
    """Stop what an app runs beside the requests: its in-process queue, its Redis connection."""
    app.extensions["careloop"].runtime.close()


def run_worker_once(runtime) -> None:
    """What `careloop worker` does at the (travelled) time: a relay sweep (routing handed over,
    reminders re-planned, escalation steps and failovers due fired), then a real RQ worker in
    this process, burst, with RQ's scheduler."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from careloop.queues import queue_names
    from careloop.workers import jobs
    from careloop.workers.relay import relay_once

    relay_once(runtime)
    jobs.use_runtime(runtime)
    try:
        SimpleWorker(
            queue_names(runtime.settings.queue_prefix),
            connection=runtime.dispatcher.connection,
            serializer=JSONSerializer,
        ).work(burst=True, with_scheduler=True, logging_level="WARNING")
    finally:
        jobs.use_runtime(None)


@pytest.fixture(autouse=True)
def _close_apps(monkeypatch):
    """Every app a test builds is closed when the test ends (a fixture that built one closes
    it earlier, before its database is cleaned): no queue thread outlives its test."""
    import careloop.service

    built = []
    original = careloop.service.create_app

    def create_app(*args, **kwargs):
        app = original(*args, **kwargs)
        built.append(app)
        return app

    monkeypatch.setattr(careloop.service, "create_app", create_app)
    yield
    for app in built:
        close_app(app)


@pytest.fixture
def app(settings):
    app = build_app(settings)[0]
    yield app
    close_app(app)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def admin():
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


class Api:
    """Small helper over the Flask test client for setting up a notebook and its team."""

    def __init__(self, client, headers):
        self.client = client
        self.headers = headers

    def post(self, url, body, status=201, headers=None):
        response = self.client.post(url, json=body, headers={**self.headers, **(headers or {})})
        assert response.status_code == status, (url, response.status_code, response.get_json())
        return response.get_json()

    def get(self, url, status=200):
        response = self.client.get(url, headers=self.headers)
        assert response.status_code == status, (url, response.status_code, response.get_json())
        return response.get_json()

    def notebook(self, child_name="Maya Rivera", timezone="America/Chicago"):
        return self.post(
            "/v1/notebooks", {"name": "Care notebook", "child_name": child_name, "timezone": timezone}
        )

    def member(self, notebook_id, name, role, **contact):
        return self.post(f"/v1/notebooks/{notebook_id}/members", {"name": name, "role": role, **contact})

    def event(self, notebook_id, type_, data, status=202, headers=None, **extra):
        return self.post(
            f"/v1/notebooks/{notebook_id}/events", {"type": type_, "data": data, **extra}, status, headers
        )


@pytest.fixture
def api(client, admin):
    return Api(client, admin)


def build_team(api):
    """A notebook with a typical team: two parents, neurology, PT, SLP, school."""
    nb = api.notebook()
    members = {
        "mom": api.member(nb["id"], "Dana Rivera", "parent", email="dana@example.org", phone="+15555550101"),
        "dad": api.member(nb["id"], "Sam Rivera", "parent", email="sam@example.org", phone="+15555550102"),
        "neuro": api.member(nb["id"], "Dr. Shah", "neurology", email="shah@example.org"),
        "pt": api.member(
            nb["id"], "Alex Kim", "physical_therapy", email="alex@example.org", phone="+15555550104"
        ),
        "slp": api.member(nb["id"], "Jordan Lee", "speech_therapy", email="jordan@example.org"),
        "school": api.member(nb["id"], "Ms. Ortiz", "school", email="ortiz@example.org"),
    }
    return nb, members


@pytest.fixture
def team(api):
    return build_team(api)


def checkin_data(attendees, checkin_id="iep-1", title="IEP meeting", hours_from_now=48, **extra):
    start = (datetime.now(UTC) + timedelta(hours=hours_from_now)).replace(microsecond=0)
    return {
        "checkin_id": checkin_id,
        "title": title,
        "start": start.isoformat(),
        "end": (start + timedelta(hours=1)).isoformat(),
        "attendees": attendees,
        **extra,
    }


def wait_until(predicate, timeout=30.0, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def drain(app, timeout=30.0):
    """Embedded mode: wait until the in-process queue has nothing due or running."""
    dispatcher = app.extensions["careloop"].runtime.dispatcher
    assert dispatcher.drain(timeout=timeout), "in-process queue did not drain"


def run_rq_until_settled(runtime, timeout=60.0):
    """RQ mode: run a real RQ worker (in-process, burst, with scheduler) until no delivery is
    waiting or in flight and no event waits for routing."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer
    from sqlalchemy import func, select

    from careloop.db import session_scope
    from careloop.models import Delivery, OutboxEntry
    from careloop.queues import queue_names
    from careloop.workers import jobs
    from careloop.workers.relay import relay_once

    dispatcher = runtime.dispatcher
    deadline = time.monotonic() + timeout
    while True:
        relay_once(runtime)
        worker = SimpleWorker(
            queue_names(runtime.settings.queue_prefix),
            connection=dispatcher.connection,
            serializer=JSONSerializer,
        )
        jobs.use_runtime(runtime)  # what `careloop worker` does at its start
        try:
            worker.work(burst=True, with_scheduler=True, logging_level="WARNING")
        finally:
            jobs.use_runtime(None)
        with session_scope(runtime.database_url) as session:
            pending = session.scalar(
                select(func.count()).select_from(Delivery).where(Delivery.status.in_(("queued", "sending")))
            )
            unrouted = session.scalar(
                select(func.count()).select_from(OutboxEntry).where(OutboxEntry.done_at.is_(None))
            )
        if not pending and not unrouted:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled: {pending} deliveries pending, {unrouted} events unrouted")
        time.sleep(0.05)


def peer_settings(db_url, tmp_path, smtp, twilio_proxy, **overrides):
    """RQ mode against the real peers: the tests' Redis DB, aiosmtpd, Twilio's API via Prism."""
    from tests.peers.twilio_peer import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, TEST_FROM

    values = dict(
        redis_url=REDIS_URL,
        smtp_host=smtp.host,
        smtp_port=smtp.port,
        smtp_starttls=False,
        twilio_account_sid=TEST_ACCOUNT_SID,
        twilio_auth_token=TEST_AUTH_TOKEN,
        twilio_from=TEST_FROM,
        twilio_api_url=twilio_proxy.url,
    )
    values.update(overrides)
    return make_settings(db_url, tmp_path, **values)


def settings_env(settings) -> dict[str, str]:
    """The environment variables an operator would set to get ``settings``."""
    env = {
        "DATABASE_URL": settings.database_url,
        "CARELOOP_ADMIN_KEY": ADMIN_KEY,
        "CARELOOP_QUEUE_PREFIX": settings.queue_prefix,
        "CARELOOP_PUBLIC_URL": settings.public_url,
        "CARELOOP_PROVIDER_TIMEOUT": str(settings.provider_timeout),
        "CARELOOP_CLAIM_TIMEOUT": str(settings.claim_timeout),
        "CARELOOP_RETRY_SCHEDULE": ",".join(str(d) for d in settings.retry_schedule),
        "CARELOOP_RELAY_INTERVAL": str(settings.relay_interval),
        "CARELOOP_OUTBOX_DIR": str(settings.outbox_dir),
        "MAIL_FROM": settings.mail_from,
        "CARELOOP_RATE_LIMIT_READS": settings.rate_limit_reads,
        "CARELOOP_RATE_LIMIT_WRITES": settings.rate_limit_writes,
        "CARELOOP_RATE_LIMIT_MEMBER_LINKS": settings.rate_limit_member_links,
        "CARELOOP_RATE_LIMIT_WEBHOOKS": settings.rate_limit_webhooks,
    }
    if settings.redis_url:
        env["REDIS_URL"] = settings.redis_url
    if settings.smtp_host:
        env.update(SMTP_HOST=settings.smtp_host, SMTP_PORT=str(settings.smtp_port), SMTP_STARTTLS="false")
    if settings.twilio_configured:
        env.update(
            TWILIO_ACCOUNT_SID=settings.twilio_account_sid,
            TWILIO_AUTH_TOKEN=settings.twilio_auth_token.get_secret_value(),
            TWILIO_FROM=settings.twilio_from,
            TWILIO_API_URL=settings.twilio_api_url,
        )
    return env


@pytest.fixture
def peers_settings(db_url, tmp_path, redis_conn, smtp, twilio_proxy):
    return peer_settings(db_url, tmp_path, smtp, twilio_proxy)


@pytest.fixture
def rq_app(peers_settings):
    app = build_app(peers_settings)[0]
    yield app
    close_app(app)


@pytest.fixture
def rq_api(rq_app, admin):
    return Api(rq_app.test_client(), admin)


@pytest.fixture
def runtime(rq_app):
    return rq_app.extensions["careloop"].runtime
