"""Local stand-ins for the providers, fast enough not to be what a benchmark measures.

- :class:`SmtpSink`: Postfix's ``smtp-sink`` (Debian package ``postfix``), which accepts mail
  and throws it away, counting messages.
- :class:`TwilioSink`: a minimal HTTP/1.1 server answering every Messages POST with 201 and
  a Message JSON (keep-alive, asyncio), counting them.

Both listen on 127.0.0.1 only, on free ports, and are stopped by their own pid / thread.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from email.utils import format_datetime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SmtpSink:
    """``smtp-sink -c``: prints running counters (``sess=… quit=… mesg=N``) we read."""

    def __init__(self) -> None:
        binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        if not shutil.which(binary):
            sys.exit("bench: Postfix's smtp-sink is missing: apt-get install postfix (or run bench/run.sh)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "256"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._count = 0
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start")

    def _read(self) -> None:
        buffer = b""
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(4096):
            buffer = (buffer + chunk)[-256:]
            found = re.findall(rb"mesg=(\d+)", buffer)
            if found:
                self._count = int(found[-1])

    @property
    def messages(self) -> int:
        return self._count

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class TwilioSink:
    """Answers ``POST …/Messages.json`` with 201 and a Message JSON; anything else 404."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.count = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = (
                    int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1)) if b"ength" in head else 0
                )
                body = await reader.readexactly(length) if length else b""
                if head.startswith(b"POST") and b"/Messages.json" in head.split(b"\r\n", 1)[0]:
                    self.count += 1
                    fields = dict(p.split("=", 1) for p in body.decode().split("&") if "=" in p)
                    answer = json.dumps(
                        {
                            "sid": f"SM{self.count:032x}",
                            "status": "queued",
                            "to": fields.get("To", ""),
                            "from": fields.get("From", ""),
                            "body": "",
                            "direction": "outbound-api",
                            "date_created": format_datetime(datetime.now(UTC), usegmt=True),
                        }
                    ).encode()
                    status = b"201 Created"
                else:
                    answer, status = b'{"code": 20404}', b"404 Not Found"
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(answer)).encode() + b"\r\n\r\n" + answer
                )  # fmt: skip
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
