"""A real IMAP server for careloop's tests: Debian's Dovecot, run as the test's own process.

``dovecot -F -c FILE`` with a configuration of its own: its own ``base_dir`` (short, for its
unix sockets), one ``passwd-file`` user, a Maildir, ``listen = 127.0.0.1`` on a free port,
no TLS. scripts/test.sh installs ``dovecot-imapd`` when it is missing; a machine without it
fails here, never skips. Stopped by its own pid.

Messages are delivered by IMAP APPEND (as a mail server's delivery would leave them: not
``\\Seen``); :meth:`Dovecot.flags` reads back what careloop did to each.
"""

from __future__ import annotations

import contextlib
import getpass
import imaplib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DOVECOT = "/usr/sbin/dovecot"
HOST = "127.0.0.1"
USER = "organizer"
PASSWORD = "peer-password"  # noqa: S105 - a test peer's fixed credential
TIMEOUT = 5.0


@dataclass
class Dovecot:
    port: int
    process: subprocess.Popen
    folder: Path

    @property
    def url(self) -> str:
        return f"imap://{USER}:{PASSWORD}@{HOST}:{self.port}/INBOX"

    def connect(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4(HOST, self.port, timeout=TIMEOUT)
        client.login(USER, PASSWORD)
        return client

    def append(self, raw: bytes) -> None:
        """Deliver ``raw`` into INBOX, unread."""
        client = self.connect()
        try:
            status, _ = client.append("INBOX", None, None, raw)
            assert status == "OK"
        finally:
            client.logout()

    def flags(self) -> list[set[str]]:
        """Each message's flags, in INBOX order."""
        client = self.connect()
        try:
            client.select("INBOX", readonly=True)
            _, data = client.fetch("1:*", "(FLAGS)")
        finally:
            client.logout()
        found = []
        for item in data:
            if item is None:
                continue
            text = item.decode() if isinstance(item, bytes) else item[0].decode()
            match = re.search(r"FLAGS \(([^)]*)\)", text)
            found.append(set(match.group(1).split()) if match else set())
        return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _config(folder: Path, port: int) -> str:
    if os.geteuid() == 0:
        # Root runs Dovecot's usual way: logins as dovenull, mail as the dovecot user.
        login_user, internal_user, mail_user = "dovenull", "dovecot", "dovecot"
        uid, gid = pwd.getpwnam(mail_user).pw_uid, pwd.getpwnam(mail_user).pw_gid
        os.chown(folder / "mail", uid, gid)
    else:  # everything as this user
        login_user = internal_user = mail_user = getpass.getuser()
    return f"""
base_dir = {folder}/run
state_dir = {folder}/state
log_path = {folder}/dovecot.log
protocols = imap
listen = {HOST}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = 1
mail_location = maildir:{folder}/mail/%u/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {folder}/users
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={mail_user} home={folder}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {HOST}
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"""


@contextlib.contextmanager
def running_dovecot() -> Iterator[Dovecot]:
    if not os.access(DOVECOT, os.X_OK):
        raise AssertionError(
            "Dovecot is not installed: run the tests with scripts/test.sh, which installs dovecot-imapd"
        )
    # Short: Dovecot's unix sockets live under base_dir (a socket path has at most 107 bytes).
    folder = Path(tempfile.mkdtemp(prefix="cl-dovecot-"))
    os.chmod(folder, 0o755)
    (folder / "mail").mkdir()
    (folder / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    port = _free_port()
    (folder / "dovecot.conf").write_text(_config(folder, port))
    process = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(folder / "dovecot.conf")],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "stderr.log").open("wb"),
    )
    peer = Dovecot(port=port, process=process, folder=folder)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                peer.connect().logout()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (folder / "stderr.log").read_text() + _read(folder / "dovecot.log")
                    raise AssertionError(f"Dovecot did not start: {log[-2000:]}") from None
                time.sleep(0.05)
        yield peer
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
