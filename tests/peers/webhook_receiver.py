"""A clinic's webhook receiver on 127.0.0.1 for careloop's tests: a real HTTP server that
checks every request with the ``standardwebhooks`` package on its own (careloop's signing code
is never asked), records it and answers as scripted; a pytest plugin.

Fixture ``webhook_receiver`` (a fresh :class:`WebhookReceiver` per test). Scripting::

    receiver.secret = created["secret"]       # what POST /v1/endpoints showed once
    receiver.script(500, 200)                 # next answers: 500, then 200 (then 200s)
    receiver.script((429, {"Retry-After": "2"}))
    receiver.script((302, {"Location": "http://127.0.0.1:9/elsewhere"}))
    receiver.script((200, {}, 3.0))           # answer only after 3 s (a client timing out)
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

HOST = "127.0.0.1"


@dataclass
class Received:
    """One request as the receiver got it."""

    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    payload: dict | None
    answered: int
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


class WebhookReceiver:
    """Verifies, records and answers. Thread-safe."""

    def __init__(self):
        self.secret: str | None = None
        self.received: list[Received] = []
        self._script: deque = deque()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver._record(self, self.path, headers, body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hooks") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def script(self, *answers) -> None:
        with self._lock:
            for answer in answers:
                answer = answer if isinstance(answer, tuple) else (answer, {})
                self._script.append(answer if len(answer) == 3 else (*answer, 0.0))

    def _record(self, handler: BaseHTTPRequestHandler, path: str, headers: dict, body: bytes) -> None:
        verified, payload = False, None
        if self.secret:
            try:
                payload = Webhook(self.secret).verify(body, headers)
                verified = True
            except WebhookVerificationError:
                pass
        with self._lock:
            status, extra, delay = self._script.popleft() if self._script else (200, {}, 0.0)
            self.received.append(Received(path, headers, body, verified, payload, status, time.time()))
        if delay:
            time.sleep(delay)  # a slow server (the client under test gives up first)
        handler.send_response(status)
        for name, value in extra.items():
            handler.send_header(name, value)
        reply = json.dumps({"ok": 200 <= status < 300}).encode()
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(reply)))
        handler.end_headers()
        handler.wfile.write(reply)

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_receiver():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()
