"""A real SMTP server (aiosmtpd) on 127.0.0.1 for careloop's tests; a pytest plugin.

Load it with ``pytest_plugins = ["tests.peers.smtp_peer"]`` (or ``-p tests.peers.smtp_peer``).
Fixtures: ``smtp_server`` (session-scoped :class:`SmtpPeer`) and ``smtp`` (the same peer,
cleared before and after each test). It listens on real TCP, so workers in other processes
can send to ``smtp.host:smtp.port``.

Scripting::

    smtp.script("451 4.3.0 Try again later")   # next DATA answered 451, then normal again
    smtp.script_rcpt("550 5.1.1 No such user")  # next RCPT TO refused
    smtp.fail_always("550 5.1.1 Mailbox unavailable")
    smtp.delay = 2.0   # record the message, then wait 2 s before the 250
    smtp.quit_delay = 2.0   # accept, then dawdle before answering QUIT
    smtp.swallow_data(30.0)  # for 30 s, a DATA command is never answered (no 354)

A message counts as received (``smtp.messages``) once its DATA reached the server and was
not refused by a script: with ``delay`` it is recorded *before* the 250, as a real relay
that has taken the message but not yet answered would have it.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

HOST = "127.0.0.1"
"""The only address the peer listens on."""

PEER_USERNAME = "careloop"
"""The login the peer accepts (AUTH is offered without TLS: tests only)."""

PEER_PASSWORD = "peer-password"  # noqa: S105 - a test peer's fixed credential


@dataclass
class Received:
    """One message as the server got it."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes
    login: str | None = None
    at: float = field(default_factory=time.time)


class SmtpPeer:
    """Records what clients send and answers as scripted. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.received: list[Received] = []
        self.refused: list[tuple[str, list[str]]] = []
        self.logins: list[str] = []
        self._data_script: deque[str] = deque()
        self._rcpt_script: deque[str] = deque()
        self._always: str | None = None
        self.delay = 0.0
        self.quit_delay = 0.0
        self.data_count = 0
        self.swallowed = 0
        self._swallow_until = 0.0
        self.connections = 0
        self._sessions: set = set()
        self.host = HOST
        self.port = 0
        self._controller: Controller | None = None

    # -- what the tests read ---------------------------------------------------------
    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return [r.message for r in self.received]

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> list[Received]:
        """Block until ``count`` messages were received (e.g. from another process)."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"expected {count} message(s), got {len(self.received)}")
            return list(self.received)

    # -- scripting ----------------------------------------------------------------------
    def script(self, *replies: str) -> None:
        """Answer the next DATA commands with these replies, one each, then accept again."""
        with self._lock:
            self._data_script.extend(replies)

    def script_rcpt(self, *replies: str) -> None:
        """Answer the next RCPT TO commands with these replies, one each."""
        with self._lock:
            self._rcpt_script.extend(replies)

    def fail_always(self, reply: str) -> None:
        """Refuse every DATA with ``reply`` until :meth:`clear`."""
        with self._lock:
            self._always = reply

    def swallow_data(self, seconds: float) -> None:
        """For ``seconds``, answer no DATA command (the client waits, then gives up): a server
        that has the envelope but never asks for the message."""
        with self._lock:
            self._swallow_until = time.monotonic() + seconds

    def swallowing(self) -> float:
        """Seconds of swallowing left (0 when DATA is answered again)."""
        with self._lock:
            return max(0.0, self._swallow_until - time.monotonic())

    def hang_up_all(self) -> None:
        """Close every open client connection, as a server ending idle sessions does."""
        with self._lock:
            sessions = list(self._sessions)
        loop = self._controller.loop if self._controller else None
        for session in sessions:
            if loop is not None:
                loop.call_soon_threadsafe(session.transport.close)

    def clear(self) -> None:
        with self._lock:
            self.received.clear()
            self.refused.clear()
            self.logins.clear()
            self._data_script.clear()
            self._rcpt_script.clear()
            self._always = None
            self.delay = 0.0
            self.quit_delay = 0.0
            self.data_count = 0
            self.swallowed = 0
            self._swallow_until = 0.0
            self.connections = 0

    # -- aiosmtpd handler hooks (run on the server's event-loop thread) -----------------
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self._lock:
            reply = self._rcpt_script.popleft() if self._rcpt_script else None
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        with self._lock:
            self.data_count += 1
            reply = self._data_script.popleft() if self._data_script else self._always
            if reply:
                self.refused.append((envelope.mail_from, list(envelope.rcpt_tos)))
            else:
                parsed = email.message_from_bytes(raw, policy=email.policy.default)
                login = session.auth_data.login.decode() if session.auth_data else None
                self.received.append(
                    Received(envelope.mail_from, list(envelope.rcpt_tos), parsed, raw, login)
                )
                self._lock.notify_all()
            delay = self.delay
        if reply:
            return reply
        if delay:
            await asyncio.sleep(delay)
        return "250 Message accepted for delivery"

    async def handle_QUIT(self, server, session, envelope):
        if self.quit_delay:
            await asyncio.sleep(self.quit_delay)
        return "221 Bye"

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == PEER_USERNAME
            and auth_data.password.decode() == PEER_PASSWORD
        )
        if ok:
            with self._lock:
                self.logins.append(PEER_USERNAME)
        # handled=False: without it aiosmtpd sends no reply at all to a failed AUTH (the
        # authenticator is assumed to have answered itself) and the client hangs.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        for _ in range(5):
            port = _free_port()
            controller = _Controller(
                self,
                hostname=HOST,
                port=port,
                authenticator=self._authenticate,
                auth_required=False,
                auth_require_tls=False,
                ready_timeout=10,
            )
            try:
                controller.start()
            except OSError:  # the port was taken between probing and binding
                continue
            self._controller, self.port = controller, port
            return
        raise RuntimeError("could not start the SMTP peer")

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


class _SwallowingSMTP(SMTP):
    """aiosmtpd's SMTP server, able to leave a DATA command unanswered (see swallow_data),
    counting connections and able to hang up on them (see hang_up_all)."""

    def connection_made(self, transport):
        peer = self.event_handler
        with peer._lock:
            peer.connections += 1
            peer._sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error):
        peer = self.event_handler
        with peer._lock:
            peer._sessions.discard(self)
        super().connection_lost(error)

    async def smtp_DATA(self, arg):
        peer = self.event_handler
        hold = peer.swallowing()
        if hold:
            with peer._lock:
                peer.swallowed += 1
            await asyncio.sleep(hold)
            self.transport.close()  # the client gave up long ago; never answer this one
            return
        return await super().smtp_DATA(arg)


class _Controller(Controller):
    def factory(self):
        return _SwallowingSMTP(self.handler, **self.SMTP_kwargs)


def _free_port() -> int:
    # aiosmtpd's Controller connects to its own port to check readiness, so port=0 won't do.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def smtp_server():
    peer = SmtpPeer()
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture
def smtp(smtp_server):
    smtp_server.clear()
    yield smtp_server
    smtp_server.clear()
