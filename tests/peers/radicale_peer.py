"""Radicale, a real CalDAV server, as the test's own process on 127.0.0.1.

It signs users in from an htpasswd file of the test's (plain passwords), keeps its calendars
in a folder of the test's, and is stopped by its own pid. :func:`free_port` gives a port
nothing listens on (for a server that is not there yet).
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Radicale:
    port: int
    process: subprocess.Popen
    user: str
    password: str

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def make_calendar(self, path: str) -> str:
        """MKCALENDAR ``path`` (``/user/name/``); its URL."""
        import base64

        auth = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("MKCALENDAR", path, headers={"Authorization": f"Basic {auth}"})
            status = conn.getresponse().status
        finally:
            conn.close()
        assert status == 201, status
        return self.url(path)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_radicale(folder: Path, port: int | None = None, user="careloop", password="s3cret-pw") -> Radicale:
    """Start Radicale on ``port`` (a free one by default); returns once it answers."""
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    users = folder / "htpasswd"
    users.write_text(f"{user}:{password}\n")
    log = open(folder / "radicale.log", "wb")  # noqa: SIM115 - the child holds it; closed below
    process = subprocess.Popen(
        [
            sys.executable, "-m", "radicale",
            "--server-hosts", f"127.0.0.1:{port}",
            "--auth-type", "htpasswd",
            "--auth-htpasswd-filename", str(users),
            "--auth-htpasswd-encryption", "plain",
            "--storage-filesystem-folder", str(folder / "collections"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    server = Radicale(port, process, user, password)
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"Radicale did not start: {(folder / 'radicale.log').read_text()[-500:]}"
                ) from None
            time.sleep(0.05)
