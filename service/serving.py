"""careloop under gunicorn: what ``config/gunicorn.conf.py`` plugs in.

- :func:`on_starting` runs the database migrations once, in gunicorn's master, before
  any worker exists: two workers booting on a fresh database never race to create its tables.
- :class:`ThreadWorker` is gunicorn's ``gthread`` worker with three changes:

  * a *request-read timeout*: every blocking read of a request (request line, headers, body)
    gives up after ``WEB_READ_TIMEOUT`` seconds (``SO_RCVTIMEO`` on the client's socket), so a
    client that sends half a request and waits holds one thread for that long, never the
    worker. gthread already keeps idle connections out of its threads, and the worker's main
    loop keeps beating, so gunicorn never kills a worker (and the embedded queue in it)
    because of slow clients;
  * gunicorn's own error pages (a bad request line, a URI or headers too long) are careloop's
    JSON error body instead of HTML, and echo nothing the client sent;
  * no ``Server`` header: which server, and which version, is nobody's business.

A production install still puts a reverse proxy in front (see the README): it buffers whole
requests before gunicorn sees them, which no worker class can do for itself.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import struct
import threading

from gunicorn import glogging
from gunicorn.http import wsgi
from gunicorn.workers import gthread

from careloop import db, logs, metrics
from careloop.config.settings import get_settings

READ_TIMEOUT_VARIABLE = "WEB_READ_TIMEOUT"
"""The environment variable holding the request-read timeout, in seconds."""

DEFAULT_READ_TIMEOUT = 10.0
"""Seconds a blocking read of a request may wait for the client's next bytes."""

ERROR_NAMES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
}
"""The ``error`` of gunicorn's own answers, as careloop names errors."""


def read_timeout() -> float:
    """``WEB_READ_TIMEOUT`` (seconds), checked; the config file calls it so a bad value stops
    gunicorn at start with a message naming the variable.

    Raises:
        ValueError: when it is not a positive number of seconds.
    """
    raw = os.environ.get(READ_TIMEOUT_VARIABLE, str(DEFAULT_READ_TIMEOUT))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 3600:
        raise ValueError(f"{READ_TIMEOUT_VARIABLE} must be a number of seconds from 0 to 3600, not {raw!r}")
    return seconds


def on_starting(server) -> None:
    """gunicorn's ``on_starting`` hook, in the master before any worker forks: careloop's log
    lines (escaped, on stderr beside gunicorn's), then the database migrations, once.

    Migrating here rather than in each worker means two workers booting on a fresh database
    never race to create its tables, on SQLite and PostgreSQL alike; :func:`careloop.db.upgrade`
    also holds a PostgreSQL lock while it migrates, so masters on two machines cannot race.
    """
    logs.configure(default="json")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    server.log.info("applying database migrations")
    db.upgrade(get_settings().database_url)
    db.dispose_all()  # no connection of the master's may be shared with the forked workers


def post_worker_init(worker) -> None:
    """gunicorn's ``post_worker_init`` hook: say that a worker has loaded the app."""
    worker.log.info("worker ready (pid: %s)", worker.pid)


def child_exit(server, worker) -> None:
    """gunicorn's ``child_exit`` hook, in the master: a worker that exited has its live metric
    values dropped (its counts stay in the sums)."""
    metrics.mark_process_dead(worker.pid)


ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s'
"""gunicorn's access line: client, request line (member-link tokens redacted), status, bytes,
milliseconds, and the request id the answer carried."""


class _AccessRequestId(logging.Filter):
    """Puts the request id of an access line's answer on its record, for the JSON line."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            request_id = record.args["{x-request-id}o"]  # gunicorn's atoms: response headers
        except (TypeError, KeyError, IndexError):
            request_id = None
        record.request_id = request_id if request_id and request_id != "-" else None
        return True


class Logger(glogging.Logger):
    """gunicorn's logger, writing its error and access lines in careloop's format
    (``CARELOOP_LOG_FORMAT``; JSON unless it says text), access lines with their request id."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        fmt = logs.log_format(default="json")
        for log, is_access in ((self.error_log, False), (self.access_log, True)):
            for handler in log.handlers:
                handler.setFormatter(logs.make_formatter(fmt))
                if is_access and not any(isinstance(f, _AccessRequestId) for f in handler.filters):
                    handler.addFilter(_AccessRequestId())


class _Response(wsgi.Response):
    """gunicorn's response without the ``Server`` header it always adds (it has no setting)."""

    def default_headers(self) -> list[str]:
        return [line for line in super().default_headers() if not line.lower().startswith("server:")]


class _JsonErrorPage:
    """Stands in for the client's socket while gunicorn writes one of its own error pages,
    and sends careloop's JSON error body with the same status instead of gunicorn's HTML
    (which would echo the bad request line back)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def __getattr__(self, name: str):
        return getattr(self._sock, name)

    def sendall(self, data: bytes) -> None:
        status_line = data.split(b"\r\n", 1)[0].decode("latin-1")
        _, code, reason = ([*status_line.split(" ", 2), "", ""])[:3]
        status = int(code) if code.isdigit() else 400
        body = json.dumps({"error": ERROR_NAMES.get(status, "error"), "message": reason or "error"})
        head = (
            f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n\r\n"
        )
        self._sock.sendall(head.encode("latin-1") + body.encode())


class _SlowClientLog(logging.Filter):
    """gunicorn logs a read that timed out as a socket error with a traceback; it is a client
    that was too slow, worth one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, OSError) and error.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            record.msg, record.args, record.exc_info, record.exc_text = SLOW_CLIENT, (), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


SLOW_CLIENT = "a client was too slow to send its request (WEB_READ_TIMEOUT); connection closed"


class ThreadWorker(gthread.ThreadWorker):
    """gunicorn's gthread worker with a request-read timeout, JSON error pages and no
    ``Server`` header (see the module docstring)."""

    def init_process(self) -> None:
        wsgi.Response = _Response  # in this worker process: gunicorn builds each response there
        seconds, fraction = divmod(read_timeout(), 1)
        self._read_timeout = struct.pack("ll", int(seconds), int(fraction * 1_000_000))
        self.log.error_log.addFilter(_SlowClientLog())
        super().init_process()

    def enqueue_req(self, conn) -> None:
        # Before a thread reads from it: every blocking read gives up after the timeout.
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self._read_timeout)
        super().enqueue_req(conn)

    def handle(self, conn):
        """Serve one request in a pool thread, and close the connection there when it ends.

        gunicorn closes it on the worker's main loop, lingering up to 2 s for the client's
        FIN: a few clients that never close would stall every connection of the worker, and
        its heartbeat, 2 s each. Here the pool thread closes it: lingering only when an answer
        was sent (to protect it from a reset), at once for a client that never finished its
        request.
        """
        _answered.value = False
        result = super().handle(conn)
        if result is False:
            try:
                conn.close(graceful=_answered.value)
            except OSError:
                return result
            conn.closed_in_thread = True
        return result

    def finish_request(self, conn, fs) -> None:
        if getattr(conn, "closed_in_thread", False):
            self.nr_conns -= 1
            return
        super().finish_request(conn, fs)

    def handle_request(self, req, conn):
        _answered.value = True
        return super().handle_request(req, conn)

    def handle_error(self, req, client, addr, exc) -> None:
        _answered.value = True
        super().handle_error(req, _JsonErrorPage(client), addr, exc)


_answered = threading.local()
"""Whether the request a pool thread is serving got an answer (see ThreadWorker.handle)."""
