"""Signing in to careloop's pages for coordinators (the timeline): ``/signin`` and ``/signout``.

A person pastes a notebook key (``clk_…``) or the admin key into a form once. careloop checks
it exactly as the API checks a Bearer key (``careloop.service.auth.key_principal``) and keeps,
in Flask's signed session cookie, *which* key it was — the key's id, or for the admin key a
keyed fingerprint of it — never the key itself. Every page request checks that again, so a
revoked key (or a changed admin key) ends its sessions at their next request.

- The cookie: ``careloop_session``, HttpOnly, SameSite=Lax, Secure whenever
  ``CARELOOP_PUBLIC_URL`` is https, valid for :data:`SESSION_LIFETIME`; signed with a key
  derived from the instance secret (``CARELOOP_SECRET_KEY`` or the stored one,
  ``careloop.links``). Only the pages open it: the JSON API never reads a cookie (Bearer keys
  only), so no cross-site request can act through the API with a page session.
- Every form (sign-in, sign-out, retry) carries a CSRF token (Flask-WTF's ``CSRFProtect``,
  checked on every POST to a page; the API's POSTs are exempt: they take no cookie).
- "Email me a sign-in link": a parent or guardian gives their address; if it is an active
  member's, careloop emails a signed, single-use link that works for 15 minutes
  (``careloop.signin_links``), through the email channel (SMTP, or the outbox), on a thread of
  its own so the answer — the same whether the address is known or not — does not wait for
  the mail server. Opening the link shows a "Sign in" button (a mail scanner's GET uses
  nothing); pressing it uses the link and starts a session naming the member and their link
  generation, which ends when the member is deactivated or their links revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from collections.abc import Callable
from datetime import timedelta
from functools import wraps

from apiflask import APIBlueprint, APIFlask
from flask import Blueprint, current_app, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from careloop.access import KeyRole
from careloop.contacts import normalize_email
from careloop.integrations.base import Channel
from careloop.messages import OutgoingMessage
from careloop.models import Member, Notebook
from careloop.service.auth import Principal, is_admin_key, key_principal
from careloop.service.pages import private_page
from careloop.signin_links import LINK_TTL, SIGNIN_ROLES, SigninLinks, link_url
from careloop.vocabulary import ChannelKind

log = logging.getLogger("careloop.service.signin")

bp = APIBlueprint("signin", __name__, enable_openapi=False)  # a page, not part of the API

csrf = CSRFProtect()

SESSION_LIFETIME = timedelta(hours=12)
"""How long a page session lasts after sign-in (a working day), whatever happens to the key."""

SESSION_COOKIE = "careloop_session"
"""The page session's cookie."""

PAGE_PATHS = ("/signin", "/signout", "/timeline", "/m")
"""Where a page session is opened; everywhere else (the API) a cookie is not even read. Member
pages (``/m/…``) keep only their forms' CSRF token in it ("I have seen this", Accept/Decline):
the link itself says who it is."""

_SESSION_SALT = b"careloop.page-session.v1"


def _is_page(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PAGE_PATHS)


class PageSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie session, opened on the pages only, signed with a key derived from
    the instance secret (read from the database on first use, so at a page request, never at
    start-up before the migrations ran)."""

    def open_session(self, app, request):
        if not _is_page(request.path):
            return None  # Flask's null session: the API has no session
        if not app.secret_key:
            secret = app.extensions["careloop"].runtime.secret
            app.secret_key = hmac.new(secret.encode(), _SESSION_SALT, hashlib.sha256).hexdigest()
        return super().open_session(app, request)

    def save_session(self, app, session, response) -> None:
        if _is_page(request.path):
            super().save_session(app, session, response)


def init_app(app: APIFlask) -> None:
    """Page sessions and CSRF protection (for the page blueprints only)."""
    public_https = app.extensions["careloop"].settings.public_url.startswith("https:")
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_SECURE=public_https,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        # Checked only where a page asks (csrf.protect() on every POST of a page blueprint):
        # the API takes no cookie, so it needs no token.
        WTF_CSRF_CHECK_DEFAULT=False,
        # The token lives as long as the session that holds it.
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.session_interface = PageSessions()
    csrf.init_app(app)


def protect_forms(blueprint: Blueprint) -> None:
    """Check the CSRF token of every POST to ``blueprint``, before its view runs, and answer a
    missing or wrong one with a plain page (400); every other error is a plain page too."""

    @blueprint.before_request
    def _check_csrf():
        if request.method == "POST":
            csrf.protect()

    @blueprint.errorhandler(HTTPException)
    def _page_error(error: HTTPException):
        """A page answers a page, never the API's JSON."""
        messages = {
            403: ("Admins only", "This page needs a session signed in with the admin key."),
            404: ("Not found", "There is nothing here, or it is not part of your notebook."),
        }
        title, message = messages.get(error.code or 500, ("Something went wrong", error.description or ""))
        response = page("timeline/message.html", error.code or 500, title=title, message=message)
        for name, value in error.get_response().headers.items():  # a 405's Allow, a 429's Retry-After
            if name.lower() not in ("content-type", "content-length"):
                response.headers.setdefault(name, value)
        return response

    @blueprint.errorhandler(CSRFError)
    def _csrf_failed(error: CSRFError):
        log.info("page form refused: %s", error.description)
        return page(
            "timeline/message.html",
            400,
            title="This form has expired",
            message="The form you sent was too old or did not come from this page. "
            "Go back, reload the page and try again.",
        )


PAGE_REFERRER_POLICY = "same-origin"
"""These pages carry no token in their addresses, and Flask-WTF's CSRF check on https wants
the Referer of a form post to name this site: sent to this site only, never elsewhere."""


LINK_PAGE_REFERRER_POLICY = "strict-origin"
"""The sign-in link's page has its token in its address: its form sends this site's origin as
the Referer (which the CSRF check wants on https), never the address."""


def page(template: str, status: int = 200, referrer: str = PAGE_REFERRER_POLICY, **context):
    """A rendered page with the private-page headers."""
    response = private_page(
        current_app.make_response((render_template(template, referrer=referrer, **context), status))
    )
    response.headers["Referrer-Policy"] = referrer
    return response


# --- Who is signed in ------------------------------------------------------------------------------


def _admin_fingerprint() -> str | None:
    """A keyed fingerprint of the admin key: the session names the admin key by it (never the
    key), and a changed admin key no longer matches."""
    admin_key = current_app.extensions["careloop"].settings.admin_key
    if not admin_key:
        return None
    key = (current_app.secret_key or "").encode()
    digest = hmac.new(key, b"admin-key:" + admin_key.get_secret_value().encode(), hashlib.sha256)
    return digest.hexdigest()[:32]


def page_principal() -> Principal | None:
    """Who this page session belongs to, checked against the keys as they are now; a session
    whose key was revoked (or whose admin key changed) is ended here."""
    if "page_principal" in g:
        return g.page_principal
    who = None
    kind = session.get("kind")
    if kind == "key":
        who = key_principal(key_id=str(session.get("key_id") or ""))
    elif kind == "admin":
        fingerprint = _admin_fingerprint()
        if fingerprint and hmac.compare_digest(str(session.get("admin") or ""), fingerprint):
            who = Principal(admin=True)
    elif kind == "member":
        who = _member_principal(str(session.get("member_id") or ""), session.get("generation"))
    if who is None and kind is not None:
        log.info("page session ended: its key is no longer valid")
        session.clear()
    g.page_principal = who
    return who


def _member_principal(member_id: str, generation: object) -> Principal | None:
    """A member signed in by an emailed link reaches their notebook while they are active, may
    still sign in that way, and their links were not revoked since."""
    member = g.db.get(Member, member_id) if member_id else None
    if member is None or not member.active or member.link_generation != generation:
        return None
    if member.role not in [r.value for r in SIGNIN_ROLES]:
        return None
    return Principal(admin=False, role=KeyRole.FAMILY, notebook_ids=frozenset({member.notebook_id}))


def signin_required(view: Callable) -> Callable:
    """A page for signed-in people: without a valid session, a redirect to ``/signin``."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if page_principal() is None:
            return redirect(url_for("signin.form"), 303)
        return view(*args, **kwargs)

    return wrapper


def _start_session(**values: str) -> None:
    session.clear()  # a fresh session (and CSRF token) for the new principal
    session.permanent = True
    session.update(values)


# --- Pages -----------------------------------------------------------------------------------------


@bp.get("/signin")
def form():
    if page_principal() is not None:
        return redirect(url_for("timeline.timeline"), 303)
    return page("timeline/signin.html")


@bp.post("/signin")
def sign_in():
    key = (request.form.get("key") or "").strip()
    if key and is_admin_key(key):
        _start_session(kind="admin", admin=_admin_fingerprint() or "")
        log.info("signed in with the admin key")
        return redirect(url_for("timeline.timeline"), 303)
    who = key_principal(token=key) if key else None
    if who is None:
        log.info("sign-in refused: not a valid key")
        return page("timeline/signin.html", 422, error="That key was not accepted. Check it and try again.")
    _start_session(kind="key", key_id=who.key_id or "")
    log.info("signed in with key %s", who.key_id)
    return redirect(url_for("timeline.timeline"), 303)


def _signin_links() -> SigninLinks:
    return SigninLinks(current_app.extensions["careloop"].runtime.secret)


LINK_SENT = (
    "If that address belongs to a parent or guardian on a care team, a sign-in link is on its way "
    f"to it. The link works once, for {int(LINK_TTL.total_seconds() // 60)} minutes."
)
"""The one answer to every "email me a link", known address or not."""


@bp.post("/signin/email")
def email_link():
    address = (request.form.get("email") or "").strip()
    try:
        address = normalize_email(address) if 0 < len(address) <= 254 else ""
    except ValueError:
        address = ""
    links = _signin_links()
    sent = 0
    for member in links.members_for(g.db, address) if address else []:
        token = links.issue(g.db, member)
        if token is not None:
            _send_link(member, g.db.get(Notebook, member.notebook_id), token)
            sent += 1
    log.info("sign-in link asked for: %d sent", sent)  # never the address
    return page("timeline/message.html", title="Check your email", message=LINK_SENT)


def _send_link(member: Member, notebook: Notebook, token: str) -> None:
    """Email ``member`` their link, on a thread of its own (see the module docstring)."""
    runtime = current_app.extensions["careloop"].runtime
    url = link_url(runtime.settings.public_url, token)
    minutes = int(LINK_TTL.total_seconds() // 60)
    text = (
        f"Hello {member.name},\n\n"
        f"Open this link to see the timeline of {notebook.name} in careloop:\n\n{url}\n\n"
        f"It works once, for {minutes} minutes. If you did not ask for it, ignore this email: "
        "nobody can sign in without it.\n"
    )
    message = OutgoingMessage(
        delivery_id=f"signin_{secrets.token_hex(10)}",
        attempt=1,
        channel=ChannelKind.EMAIL,
        to=member.email or "",
        to_name=member.name,
        subject="Your careloop sign-in link",
        text=text,
    )
    channel = runtime.channels[ChannelKind.EMAIL]
    threading.Thread(
        target=_deliver, args=(channel, message), name="careloop-signin-link", daemon=True
    ).start()


def _deliver(channel: Channel, message: OutgoingMessage) -> None:
    try:
        channel.send(message)  # every channel call has its provider timeout
    except Exception as exc:  # the person can ask again; say why in the log, never to whom
        log.warning("sign-in link not sent: %s", getattr(exc, "reason", type(exc).__name__))


@bp.get("/signin/link/<token>")
def open_link(token: str):
    if len(token) > 200 or not _signin_links().check(g.db, token):
        return _link_gone()
    return page("timeline/link.html", referrer=LINK_PAGE_REFERRER_POLICY, token=token)


@bp.post("/signin/link")
def use_link():
    token = request.form.get("token") or ""
    claim = _signin_links().use(g.db, token) if 0 < len(token) <= 200 else None
    if claim is None:
        return _link_gone()
    _start_session(kind="member", member_id=claim.member_id, generation=claim.generation)
    log.info("signed in with an emailed link: member %s", claim.member_id)
    return redirect(url_for("timeline.timeline"), 303)


def _link_gone():
    return page(
        "timeline/message.html",
        404,
        title="This sign-in link no longer works",
        message="Sign-in links work once, for a short time. Ask for a new one on the sign-in page.",
        signin=True,
    )


@bp.post("/signout")
def sign_out():
    session.clear()
    return redirect(url_for("signin.form"), 303)


protect_forms(bp)
