"""The Twilio peer for tests: Prism serving Twilio's OpenAPI spec, and a fault proxy before it.

A pytest plugin (``pytest_plugins = ["tests.peers.twilio_peer"]``) with the fixtures
``prism`` (session; Prism's base URL), ``twilio_proxy_server`` (session) and ``twilio_proxy``
(per test, reset first). Point ``TWILIO_API_URL`` at ``twilio_proxy.url``.

Prism validates every request against Twilio's spec (AccountSid shape, basic auth, required
fields) but is stateless and always answers with the spec's example message. The proxy
records what reached it, injects Twilio-shaped failures, and on request
(``remember_sent = True``) answers message lists from what it recorded.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRISM_BIN = ROOT / ".peers" / "prism" / "node_modules" / ".bin" / "prism"
TWILIO_SPEC = Path(
    os.environ.get("CARELOOP_TWILIO_SPEC")
    or ROOT / ".peers" / "twilio" / "spec" / "json" / "twilio_api_v2010.json"
)
"""Twilio's published OpenAPI description of the 2010-04-01 API, served whole by Prism.
scripts/test.sh installs it from npm (``@twilio-alpha/mcp``, pinned); CARELOOP_TWILIO_SPEC
may point at another copy."""
PRISM_READY_TIMEOUT = 30.0
"""Seconds Prism may take to print "Prism is listening"."""

FORWARD_TIMEOUT = 10.0
"""Seconds the proxy waits for Prism."""

TEST_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
TEST_AUTH_TOKEN = "0123456789abcdef0123456789abcdef"
TEST_FROM = "+15005550006"

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- Prism ---------------------------------------------------------------------------------


class PrismProcess:
    """One Prism mock server in its own process group, stopped by that group's id."""

    def __init__(self, spec: Path = TWILIO_SPEC, port: int | None = None):
        self.spec = spec
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.log: deque[str] = deque(maxlen=200)
        self._ready = threading.Event()

    def start(self, timeout: float = PRISM_READY_TIMEOUT) -> str:
        if not PRISM_BIN.exists():
            pytest.fail(
                f"Prism is not installed ({PRISM_BIN} is missing). Run the test setup script, "
                "scripts/test.sh, which installs it with "
                "`npm install --prefix .peers/prism @stoplight/prism-cli@5`.",
                pytrace=False,
            )
        if not self.spec.exists():
            pytest.fail(
                f"Twilio's OpenAPI spec is missing: {self.spec}. Run scripts/test.sh, which installs "
                "it from npm (@twilio-alpha/mcp), or point CARELOOP_TWILIO_SPEC at a copy.",
                pytrace=False,
            )
        cmd = [str(PRISM_BIN), "mock", str(self.spec), "-h", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            cwd=ROOT,
        )
        threading.Thread(target=self._drain, name="prism-log", daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"Prism did not start on {self.url} within {timeout:.0f}s; its log:\n"
                    + "\n".join(self.log),
                    pytrace=False,
                )
        return self.url

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.rstrip())
            if "Prism is listening" in line:
                self._ready.set()

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # start_new_session made Prism's pid its process group id: end that group only
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="session")
def prism():
    """Prism serving Twilio's Messages API on 127.0.0.1; yields its base URL."""
    server = PrismProcess()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


# --- Fault proxy ---------------------------------------------------------------------------

_DEFAULT_CODES = {401: 20003, 404: 20404, 429: 20429, 500: 20500, 502: 20500, 503: 20503}
_DEFAULT_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    20503: "Service Unavailable",
    21211: "The 'To' number {To} is not a valid phone number.",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {To}",
    21606: "The 'From' phone number provided ({From}) is not a valid message-capable Twilio phone number "
    "for this 'To' number.",
    21610: "Attempt to send to unsubscribed recipient",
    21612: "The 'To' phone number: {To}, is not currently reachable using the 'From' phone number: "
    "{From} via SMS.",
    21614: "'To' number is not a valid mobile number",
}


@dataclass(frozen=True)
class Fault:
    """What the proxy does with one Messages POST instead of just forwarding it.

    Args:
        status: HTTP status of a Twilio-shaped error answer; ``None`` passes Prism's answer on.
        code: Twilio error code (default from ``status``: 429 → 20429, 500 → 20500, ...).
        message: error message; ``{To}``/``{From}`` are filled from the request.
        retry_after: adds a ``Retry-After`` header (seconds).
        forward: send the request to Prism first, so it reaches "Twilio" (and ``sent``).
        hang_up: close the connection without any answer.
        delay: seconds to wait before answering.
    """

    status: int | None = None
    code: int | None = None
    message: str | None = None
    retry_after: float | None = None
    forward: bool = False
    hang_up: bool = False
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.status is None and not self.hang_up and not self.forward:
            raise ValueError("a Fault needs a status, hang_up=True or forward=True")

    @classmethod
    def lost_answer(cls) -> Fault:
        """Twilio gets the message, the answer never arrives (connection dropped)."""
        return cls(forward=True, hang_up=True)

    @classmethod
    def slow(cls, seconds: float, *, forward: bool = True) -> Fault:
        """Answer (Prism's answer when ``forward``) only after ``seconds``."""
        if forward:
            return cls(forward=True, delay=seconds)
        return cls(hang_up=True, delay=seconds)

    def render(self, form: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        assert self.status is not None
        code = self.code if self.code is not None else _DEFAULT_CODES.get(self.status, self.status)
        message = self.message or _DEFAULT_MESSAGES.get(code, f"Error {code}")
        message = message.replace("{To}", form.get("To", "")).replace("{From}", form.get("From", ""))
        body = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": self.status,
        }
        headers = {"Content-Type": "application/json"}
        if self.retry_after is not None:
            headers["Retry-After"] = f"{self.retry_after:g}"
        return self.status, headers, json.dumps(body).encode()


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    """What the client was answered (None when the proxy hung up)."""


@dataclass
class _Upstream:
    status: int
    headers: dict[str, str]
    body: bytes


class TwilioFaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of Prism that records and breaks things on request.

    ``sent`` lists the form fields (``To``, ``From``, ``Body``, ``StatusCallback``, ... and the
    answered ``Sid``) of every Messages POST that Prism accepted with 201, i.e. that reached
    Twilio; ``requests`` lists every request. Faults from :meth:`script` are used one per
    Messages POST, then :meth:`fail_always`'s, else the request is forwarded. ``delay``
    slows every answer (after Prism answered: the request did reach Twilio).

    With ``remember_sent = True`` the proxy gives each accepted message its own SID and
    answers message lists (``GET .../Messages.json``, still validated by Prism) with the
    messages it recorded, filtered by ``To``/``From``, newest first.
    """

    def __init__(self, upstream: str, *, forward_timeout: float = FORWARD_TIMEOUT):
        parts = urlsplit(upstream)
        if parts.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError("the proxy only forwards to 127.0.0.1")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.forward_timeout = forward_timeout
        self.delay = 0.0
        self.remember_sent = False
        self._lock = threading.Lock()
        self._sent: list[dict[str, str]] = []
        self._messages: list[dict] = []  # Twilio message objects, for remember_sent
        self._requests: list[RecordedRequest] = []
        self._script: deque[Fault] = deque()
        self._always: Fault | None = None
        self._generation = 0
        self._wake = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # scripting

    def script(self, *faults: Fault) -> None:
        """Queue faults, one per coming Messages POST."""
        with self._lock:
            self._script.extend(faults)

    def fail_always(self, fault: Fault) -> None:
        with self._lock:
            self._always = fault

    def clear(self) -> None:
        """Drop queued faults, ``fail_always``, ``delay`` and ``remember_sent``."""
        with self._lock:
            self._script.clear()
            self._always = None
            self.delay = 0.0
            self.remember_sent = False

    def reset(self) -> None:
        """:meth:`clear`, forget what was recorded and cut short answers still being delayed."""
        self.clear()
        with self._lock:
            self._sent.clear()
            self._messages.clear()
            self._requests.clear()
            self._generation += 1
            self._wake.set()
            self._wake = threading.Event()

    @property
    def sent(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self._sent)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._script)

    # server

    def start(self) -> str:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                proxy._handle(self)

            do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

            def log_message(self, format, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        threading.Thread(target=self._server.serve_forever, name="twilio-proxy", daemon=True).start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self.reset()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _take_fault(self) -> Fault | None:
        with self._lock:
            if self._script:
                return self._script.popleft()
            return self._always

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            generation, wake = self._generation, self._wake
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        record = RecordedRequest(
            method=handler.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers=dict(handler.headers.items()),
            body=body,
        )
        with self._lock:
            self._requests.append(record)
        is_messages = parts.path.endswith("/Messages.json")
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}

        fault = self._take_fault() if is_messages and handler.command == "POST" else None
        answer: tuple[int, dict[str, str], bytes] | None = None
        if fault is None or fault.forward:
            upstream = self._forward(handler, body)
            if is_messages and handler.command == "POST" and upstream.status == 201:
                upstream = self._record_sent(form, upstream, generation)
            elif is_messages and handler.command == "GET" and upstream.status == 200 and self.remember_sent:
                upstream = self._list_from_sent(record.query, upstream)
            answer = (upstream.status, upstream.headers, upstream.body)
        delay = (fault.delay if fault else 0.0) + self.delay
        if delay and wake.wait(delay):
            return self._hang_up(handler)  # reset while waiting: this answer belongs to no test
        if fault is not None and fault.hang_up:
            return self._hang_up(handler)
        if fault is not None and fault.status is not None:
            answer = fault.render(form)
        assert answer is not None
        status, headers, payload = answer
        record.status = status
        try:
            handler.send_response(status)
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.send_header("Connection", "close")
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(payload)
        except OSError:
            pass  # the client gave up waiting
        handler.close_connection = True

    @staticmethod
    def _hang_up(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> _Upstream:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = f"{self.upstream_host}:{self.upstream_port}"
        conn = http.client.HTTPConnection(
            self.upstream_host, self.upstream_port, timeout=self.forward_timeout
        )
        try:
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            out_headers = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
            return _Upstream(response.status, out_headers, payload)
        except OSError as exc:
            error = {"code": 20500, "message": f"proxy: Prism unreachable: {exc}", "status": 502}
            return _Upstream(502, {"Content-Type": "application/json"}, json.dumps(error).encode())
        finally:
            conn.close()

    def _record_sent(self, form: dict[str, str], upstream: _Upstream, generation: int) -> _Upstream:
        try:
            answer = json.loads(upstream.body)
        except ValueError:
            answer = {}
        with self._lock:
            if generation != self._generation:
                return upstream  # a request left over from an earlier test
            if self.remember_sent and answer:
                now = format_datetime(datetime.now(UTC))
                answer.update(
                    sid="SM" + uuid.uuid4().hex,
                    to=form.get("To"),
                    body=form.get("Body"),
                    status="queued",
                    date_created=now,
                    date_updated=now,
                    date_sent=None,
                    direction="outbound-api",
                )
                answer["from"] = form.get("From")
                upstream = _Upstream(upstream.status, upstream.headers, json.dumps(answer).encode())
                self._messages.append(answer)
            self._sent.append({**form, "Sid": answer.get("sid", "")})
        return upstream

    def _list_from_sent(self, query: dict[str, list[str]], upstream: _Upstream) -> _Upstream:
        try:
            answer = json.loads(upstream.body)
        except ValueError:
            return upstream
        to = query.get("To", [None])[0]
        from_ = query.get("From", [None])[0]
        page_size = int(query.get("PageSize", ["50"])[0])
        with self._lock:
            messages = [
                message
                for message in reversed(self._messages)
                if (to is None or message.get("to") == to) and (from_ is None or message.get("from") == from_)
            ][:page_size]
        answer.update(messages=messages, next_page_uri=None, page=0, page_size=page_size, start=0)
        answer["end"] = max(len(messages) - 1, 0)
        return _Upstream(200, upstream.headers, json.dumps(answer).encode())


@pytest.fixture(scope="session")
def twilio_proxy_server(prism):
    """The session's :class:`TwilioFaultProxy` in front of ``prism``."""
    proxy = TwilioFaultProxy(prism)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def twilio_proxy(twilio_proxy_server):
    """The proxy with no faults and nothing recorded; ``.url`` is the TWILIO_API_URL to use."""
    twilio_proxy_server.reset()
    yield twilio_proxy_server
    twilio_proxy_server.reset()
