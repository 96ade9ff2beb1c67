"""Engine and sessions, one engine per database URL.

RQ forks a work horse per job and a pooled connection must never be used on both sides of
a fork: the child drops the parent's pool without closing it (``dispose(close=False)``, as
SQLAlchemy documents for os.fork), keeping the engine's already-initialised dialect.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from importlib.resources import files

from sqlalchemy import Engine, create_engine, event, exc, make_url, text
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

MIGRATIONS_DIR = str(files("careloop.migrations"))
"""Where alembic's env.py and the versions live (the installed package careloop.migrations)."""

_lock = threading.Lock()
_engines: dict[tuple[str, bool], Engine] = {}


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time would stay locked forever in the child.
    global _lock
    _lock = threading.Lock()
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_private_sqlite_file(url: str) -> None:
    """Create a new SQLite database file readable and writable by its owner only (0600).

    SQLite creates a missing file with the process umask (0644 by default: any local user
    could read the care notebooks), and its WAL and shared-memory files copy the database
    file's mode. Nothing to do for other databases, in-memory SQLite, or an existing file.
    """
    if not url.startswith("sqlite"):
        return
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


PING_AFTER_IDLE = 1.0
"""Seconds a pooled connection may rest before it is checked (a round trip) at its next use."""


def _ping_after_idle(engine: Engine) -> None:
    """Check a pooled connection before use only when it has rested a while (PostgreSQL).

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout: for a worker, whose autocommit
    session takes a connection for each statement, that doubled the round trips of every
    delivery. A connection used within the last :data:`PING_AFTER_IDLE` seconds is as likely
    to be alive as one pinged a moment ago; if the database went away since, the statement
    fails as it would have a moment after a ping, and the pool replaces its connections.
    """

    @event.listens_for(engine, "connect")
    def _fresh(_dbapi_connection, record) -> None:
        record.info["rested_since"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _rest(_dbapi_connection, record) -> None:
        if record is not None:
            record.info["rested_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection, record, _proxy) -> None:
        if time.monotonic() - record.info.get("rested_since", 0.0) <= PING_AFTER_IDLE:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise exc.DisconnectionError(type(error).__name__) from error
        if not alive:
            raise exc.DisconnectionError("ping failed")


def get_engine(url: str, autocommit: bool = False) -> Engine:
    """The engine for ``url`` (one per process). ``autocommit``: a second engine of its own
    whose connections commit each statement by itself (no BEGIN/COMMIT round trips)."""
    with _lock:
        engine = _engines.get((url, autocommit))
        if engine is None:
            options = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
            if url.startswith("sqlite"):
                create_private_sqlite_file(url)
                sqlite_args = {"timeout": 10, "check_same_thread": False}
                engine = create_engine(url, connect_args=sqlite_args, **options)
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = create_engine(
                    url,
                    pool_size=5,
                    max_overflow=10,
                    pool_timeout=10,
                    connect_args={"connect_timeout": 5},
                    **options,
                )
                _ping_after_idle(engine)
            _engines[(url, autocommit)] = engine
        return engine


def dispose(url: str) -> None:
    """Close every pooled connection to ``url`` (both engines)."""
    with _lock:
        engines = [e for (u, _), e in _engines.items() if u == url]
    for engine in engines:
        engine.dispose()


def dispose_all() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(url: str, autocommit: bool = False) -> Iterator[Session]:
    """A session committed on success and rolled back on error.

    ``autocommit``: every statement commits by itself — for code whose every write is one
    self-contained, conditional statement, as a worker's delivery transitions are (each
    guarded by its claim token): it saves the BEGIN and COMMIT round trips of each.
    """
    session = sessionmaker(get_engine(url, autocommit), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str):
    from alembic.config import Config  # alembic only where migrations run: start-up cost

    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS_DIR)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply alembic migrations up to ``revision``."""
    from alembic import command  # as above

    create_private_sqlite_file(url)
    with _migration_lock(url):
        command.upgrade(alembic_config(url), revision)


@lru_cache(maxsize=1)
def migration_heads() -> frozenset[str]:
    """The head revisions of the migrations this code ships (read once per process)."""
    from alembic.script import ScriptDirectory  # as above

    return frozenset(ScriptDirectory(MIGRATIONS_DIR).get_heads())


def at_migration_head(session: Session) -> bool:
    """Whether the database's schema is at this code's migration head (False for a database
    alembic never touched)."""
    try:
        with session.begin_nested():
            current = set(session.scalars(text("SELECT version_num FROM alembic_version")))
    except ProgrammingError:  # PostgreSQL: no such table
        return False
    except OperationalError as exc:  # SQLite: no such table; anything else is the database down
        if "no such table" in str(exc):
            return False
        raise
    return current == migration_heads()


MIGRATION_LOCK = 0x636172656C6F6F70
"""PostgreSQL advisory lock key ("careloop") held while migrating."""


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, one migration at a time across processes and machines (web masters
    starting together, `careloop db upgrade`): the others wait, then find nothing to do.
    SQLite lives on one machine, where gunicorn's master migrates before its workers fork."""
    if not url.startswith("postgresql"):
        yield
        return
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
    finally:
        engine.dispose()
