"""alembic migrations: they build exactly the schema careloop.models describes, on SQLite and
PostgreSQL, go down and up again, and the embedded default applies them by itself."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, pool, text
from sqlalchemy.engine import make_url

from careloop.db import upgrade
from careloop.models import Base
from tests.conftest import PG_ADMIN_URL, close_app

TABLES = {
    "notebooks", "members", "api_keys", "events", "checkins", "outbox", "deliveries", "instance_secrets",
    "api_key_notebooks", "audit_log", "signin_links", "webhook_endpoints", "webhook_endpoint_notebooks",
    "webhook_attempts", "sources", "inbound_records", "digests",
    "reminders", "caldav_calendars", "escalations",
}


@contextlib.contextmanager
def fresh_pg_database(tag: str) -> Iterator[str]:
    """An empty PostgreSQL database of its own, dropped afterwards. The name ends in this
    process's id, so conftest's clean-up of killed runs recognises it."""
    from careloop.db import dispose

    name = f"careloop_test_{tag}_{os.getpid()}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        dispose(url)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request, tmp_path) -> Iterator[str]:
    """A database with no tables at all: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    with fresh_pg_database("mig") as url:
        yield url


def schema_diff(url: str) -> list:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from careloop.db import alembic_config

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def test_upgrade_head_builds_exactly_the_models_schema(empty_db_url):
    assert tables(empty_db_url) == set()
    assert schema_diff(empty_db_url)  # the comparison does see a missing schema
    upgrade(empty_db_url)
    assert tables(empty_db_url) == TABLES | {"alembic_version"}
    assert schema_diff(empty_db_url) == []
    assert current_revision(empty_db_url) == head_revision()


def test_the_comparison_notices_a_schema_that_drifted(empty_db_url):
    upgrade(empty_db_url)
    engine = create_engine(empty_db_url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_deliveries_provider_id"))
        conn.execute(text("ALTER TABLE members ADD COLUMN nickname VARCHAR(20)"))
    engine.dispose()
    diff = schema_diff(empty_db_url)
    kinds = sorted(d[0] if isinstance(d, tuple) else d[0][0] for d in diff)
    assert kinds == ["add_index", "remove_column"], diff


def test_downgrade_base_then_upgrade_head(empty_db_url):
    from alembic import command

    from careloop.db import alembic_config

    upgrade(empty_db_url)
    command.downgrade(alembic_config(empty_db_url), "base")
    assert tables(empty_db_url) <= {"alembic_version"}
    assert current_revision(empty_db_url) is None
    upgrade(empty_db_url)
    assert tables(empty_db_url) == TABLES | {"alembic_version"}
    assert schema_diff(empty_db_url) == []


def test_upgrade_is_idempotent(empty_db_url):
    upgrade(empty_db_url)
    upgrade(empty_db_url)
    assert schema_diff(empty_db_url) == []
    assert current_revision(empty_db_url) == head_revision()


def test_the_embedded_app_applies_migrations_on_a_new_sqlite_file(tmp_path):
    from careloop.service import create_app
    from tests.conftest import ADMIN_KEY, make_settings

    path = tmp_path / "new" / "careloop.db"
    path.parent.mkdir()
    url = f"sqlite:///{path}"
    assert not path.exists()
    app = create_app({"TESTING": True}, settings=make_settings(url, tmp_path))
    try:
        client = app.test_client()
        response = client.post(
            "/v1/notebooks",
            json={"name": "n", "child_name": "Maya", "timezone": "UTC"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert response.status_code == 201, response.get_json()
    finally:
        close_app(app)
    assert path.exists()
    assert schema_diff(url) == []
    assert current_revision(url) == head_revision()


def test_migrations_are_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{Path('here.db')}"
    upgrade(url)
    assert schema_diff(url) == []
