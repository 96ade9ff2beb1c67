"""The timeline pages through the app (Flask's test client, as a browser would, over https):
sign-in and its cookie, CSRF on every form, what the timeline shows, filters, paging, retry,
the admin view. On SQLite and PostgreSQL; the SMTP server is aiosmtpd (refusing when told).
The real browser is tests/test_timeline_browser.py."""

from __future__ import annotations

import base64
import json
import re
import zlib
from html import unescape

import pytest
from sqlalchemy import update

from careloop.db import session_scope
from careloop.models import ApiKey, Delivery, utcnow
from careloop.service import timeline as timeline_module
from careloop.service.timeline import STATUS_WORDS
from careloop.vocabulary import DeliveryStatus
from tests.conftest import ADMIN_KEY, build_app, build_team, drain, make_settings

HTTPS = "https://localhost"
"""The app's public URL is https (make_settings), so its cookie is Secure: talk https to it."""

MEDICATION = {"medication": "levetiracetam", "change": "dose_changed", "dose": "250 mg"}


class Browser:
    """A test client that behaves like a browser on this site: https, same-origin Referer,
    the CSRF token taken from the page's own form."""

    def __init__(self, app):
        self.client = app.test_client()
        self.page = None

    def get(self, path, status=200, **kwargs):
        response = self.client.get(path, base_url=HTTPS, **kwargs)
        assert response.status_code == status, (path, response.status_code, response.text[:2000])
        if status == 200:
            self.page = response.text
        return response

    def token(self, html: str | None = None) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', html or self.page or "")
        assert found, "the page has no CSRF token in its form"
        return found.group(1)

    def post(self, path, data, status=303, csrf=True):
        data = dict(data)
        if csrf:
            data["csrf_token"] = self.token()
        response = self.client.post(path, data=data, base_url=HTTPS, headers={"Referer": f"{HTTPS}/timeline"})
        assert response.status_code == status, (path, response.status_code, response.text[:2000])
        return response

    def sign_in(self, key: str):
        self.get("/signin")
        response = self.post("/signin", {"key": key})
        assert response.headers["Location"] == "/timeline"
        return response

    def cookie(self):
        return self.client.get_cookie("careloop_session", domain="localhost")


def text(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def headings(html: str) -> list[str]:
    """The events a timeline page shows, in order."""
    return re.findall(r'<h3 id="evt_[^"]+">([^<]+)</h3>', html)


def deliveries(html: str) -> list[str]:
    """Each delivery line on a page, as text."""
    return [text(li) for li in re.findall(r'<li class="delivery">(.*?)</li>', html, re.S)]


def cookie_payload(value: str) -> dict:
    """What a Flask session cookie says (it is signed, not encrypted: anyone holding it can read it)."""
    compressed = value.startswith(".")  # itsdangerous zlib-compresses when that is shorter
    data = value.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    return json.loads(zlib.decompress(raw) if compressed else raw)


@pytest.fixture
def setup(db_url, tmp_path, smtp):
    """Embedded mode, email through aiosmtpd (texts to the outbox); a routed team and a key."""
    settings = make_settings(db_url, tmp_path, smtp_host=smtp.host, smtp_port=smtp.port, smtp_starttls=False)
    app, api = build_app(settings)
    nb, m = build_team(api)
    key = api.post(f"/v1/notebooks/{nb['id']}/keys", {"name": "coordinator"})
    return app, api, nb, m, key


def test_without_a_session_the_pages_send_you_to_sign_in(setup):
    app, *_ = setup
    browser = Browser(app)
    for path in ("/timeline", "/timeline/admin", "/timeline?type=concern.raised"):
        assert browser.get(path, status=303).headers["Location"] == "/signin"
    page = browser.get("/signin").text
    assert 'type="password"' in page and '<label for="key">' in page


def test_signing_in_keeps_the_key_id_not_the_key_in_a_secure_httponly_samesite_cookie(setup):
    app, api, nb, m, key = setup
    browser = Browser(app)
    response = browser.sign_in(key["key"])
    header = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("careloop_session="))
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
    assert {"secure", "httponly", "expires"} <= attributes and "SameSite=Lax" in header, header
    payload = cookie_payload(browser.cookie().value)
    assert payload["key_id"] == key["id"] and payload["kind"] == "key"
    assert key["key"] not in header and key["key"].removeprefix("clk_") not in json.dumps(payload)
    page = browser.get("/timeline").text
    assert f"Timeline: {nb['name']}" in page and "Times are in America/Chicago" in page


def test_a_wrong_key_or_a_form_without_its_csrf_token_signs_nobody_in(setup):
    app, api, nb, m, key = setup
    browser = Browser(app)
    browser.get("/signin")
    refused = browser.post("/signin", {"key": key["key"] + "x"}, status=422)
    assert "That key was not accepted" in refused.text and 'role="alert"' in refused.text
    assert browser.get("/timeline", status=303).headers["Location"] == "/signin"
    forged = browser.post("/signin", {"key": key["key"]}, status=400, csrf=False)
    assert "This form has expired" in forged.text
    wrong_token = browser.client.post(
        "/signin", data={"key": key["key"], "csrf_token": "forged"}, base_url=HTTPS,
        headers={"Referer": f"{HTTPS}/signin"},
    )  # fmt: skip
    assert wrong_token.status_code == 400
    other_site = browser.client.post(
        "/signin", data={"key": key["key"], "csrf_token": browser.token()}, base_url=HTTPS,
        headers={"Referer": "https://evil.example/signin"},
    )  # fmt: skip
    assert other_site.status_code == 400
    assert browser.get("/timeline", status=303).headers["Location"] == "/signin"


def test_the_api_never_takes_the_page_session(setup):
    app, api, nb, m, key = setup
    browser = Browser(app)
    browser.sign_in(ADMIN_KEY)
    browser.get("/timeline")
    response = browser.client.get(f"/v1/notebooks/{nb['id']}/members", base_url=HTTPS)
    assert response.status_code == 401
    assert "careloop_session" not in response.headers.get("Set-Cookie", "")


def test_a_revoked_key_ends_its_session_at_the_next_request(setup, db_url):
    app, api, nb, m, key = setup
    browser = Browser(app)
    browser.sign_in(key["key"])
    browser.get("/timeline")
    with session_scope(db_url) as session:
        session.execute(update(ApiKey).where(ApiKey.id == key["id"]).values(revoked_at=utcnow()))
        session.commit()
    assert browser.get("/timeline", status=303).headers["Location"] == "/signin"
    assert browser.cookie() is None  # the session itself was ended (its cookie deleted)
    browser.get("/signin")
    browser.post("/signin", {"key": key["key"]}, status=422)


def test_a_changed_admin_key_ends_admin_sessions(setup, db_url, tmp_path):
    app, *_ = setup
    browser = Browser(app)
    browser.sign_in(ADMIN_KEY)
    cookie = browser.cookie().value
    assert ADMIN_KEY not in cookie and "admin" in cookie_payload(cookie)
    browser.get("/timeline/admin")
    rotated, _ = build_app(make_settings(db_url, tmp_path, admin_key="another-admin-key-" + "x" * 20))
    other = Browser(rotated)
    other.client.set_cookie("careloop_session", cookie, domain="localhost")
    assert other.get("/timeline", status=303).headers["Location"] == "/signin"


def test_signing_out_ends_the_session_and_needs_its_token(setup):
    app, api, nb, m, key = setup
    browser = Browser(app)
    browser.sign_in(key["key"])
    browser.get("/timeline")
    browser.post("/signout", {}, status=400, csrf=False)
    browser.get("/timeline")
    assert browser.post("/signout", {}).headers["Location"] == "/signin"
    assert browser.get("/timeline", status=303).headers["Location"] == "/signin"


def test_the_timeline_shows_who_was_told_how_and_whether_it_arrived_and_retry_sends_it_again(setup, smtp):
    app, api, nb, m, key = setup
    smtp.fail_always("550 5.1.1 mailbox unavailable")
    event = api.event(nb["id"], "medication.changed", MEDICATION, author_member_id=m["mom"]["id"])
    drain(app)
    browser = Browser(app)
    browser.sign_in(key["key"])
    page = text(browser.get("/timeline").text)
    assert "Medication update" in page and "recorded by Dana Rivera (parent)" in page
    assert "Sam Rivera (parent) Text (SMS) Sent" in page  # through the outbox
    assert "Dr. Shah (neurology) Text (SMS) Skipped : member has no phone number" in page
    assert re.search(r"Dr\. Shah \(neurology\) Email Failed : [^.]*550", page), page
    assert "levetiracetam" not in page  # the timeline says who was told, not what

    with session_scope(app.extensions["careloop"].settings.database_url) as session:
        failed = session.query(Delivery).filter_by(event_id=event["id"], status=DeliveryStatus.FAILED).all()
    shah = next(d for d in failed if d.member_id == m["neuro"]["id"])
    assert f'id="retry-{shah.id}"' in browser.page and "Retry the email to Dr. Shah (neurology)" in text(
        browser.page
    )
    browser.post(f"/timeline/deliveries/{shah.id}/retry", {"back": "/timeline"}, status=400, csrf=False)
    smtp.clear()
    response = browser.post(f"/timeline/deliveries/{shah.id}/retry", {"back": "/timeline?status=failed"})
    assert response.headers["Location"] == f"/timeline?status=failed#{event['id']}"
    drain(app)
    page = text(browser.get("/timeline").text)
    assert "The email to Dr. Shah (neurology) is queued to be sent again." in page
    assert "Dr. Shah (neurology) Email Sent" in page
    assert any("shah@example.org" in r.rcpt_tos for r in smtp.received)
    # a second press changes nothing; a skipped one cannot be retried; elsewhere is refused
    again = browser.post(f"/timeline/deliveries/{shah.id}/retry", {"back": "https://evil.example/"})
    assert again.headers["Location"] == f"/timeline#{event['id']}"
    assert "already on its way or sent" in text(browser.get("/timeline").text)
    with session_scope(app.extensions["careloop"].settings.database_url) as session:
        skipped = session.query(Delivery).filter_by(event_id=event["id"], status="skipped").first()
    browser.post(f"/timeline/deliveries/{skipped.id}/retry", {"back": "//evil.example/timeline"})
    assert "was skipped (member has no phone number)" in text(browser.get("/timeline").text)
    assert len([r for r in smtp.received if "shah@example.org" in r.rcpt_tos]) == 1


def test_retry_reaches_only_your_own_notebook(setup, smtp):
    app, api, nb, m, key = setup
    smtp.fail_always("550 5.1.1 mailbox unavailable")
    other = api.notebook(child_name="Noah Park")
    api.member(other["id"], "Dr. Lin", "neurology", email="lin@example.org")
    api.event(other["id"], "medication.changed", MEDICATION)
    drain(app)
    with session_scope(app.extensions["careloop"].settings.database_url) as session:
        theirs = session.query(Delivery).filter_by(notebook_id=other["id"], status="failed").first()
    browser = Browser(app)
    browser.sign_in(key["key"])
    browser.get("/timeline")
    refused = browser.post(f"/timeline/deliveries/{theirs.id}/retry", {}, status=404)
    assert "not part of your notebook" in refused.text and "application/json" not in refused.content_type
    assert browser.get(f"/timeline?notebook={other['id']}").text.count("Noah") == 0
    browser.get("/timeline/admin", status=403)


def test_filters_and_pages(setup, monkeypatch):
    app, api, nb, m, key = setup
    monkeypatch.setattr(timeline_module, "PAGE_SIZE", 2)
    api.event(nb["id"], "medication.changed", MEDICATION)
    api.event(nb["id"], "concern.raised", {"summary": "Falls", "severity": "high", "area": "other"})
    api.event(nb["id"], "note.added", {"text": "Slept well", "voice": "family"})
    drain(app)
    browser = Browser(app)
    browser.sign_in(key["key"])
    first = browser.get("/timeline").text
    assert headings(first) == ["New note", "New concern"]
    older = re.search(r'href="([^"]+)" rel="next"', first).group(1)
    second = browser.get(unescape(older)).text
    assert headings(second) == ["Medication update"] and 'rel="next"' not in second
    assert "Newest updates" in second

    assert headings(browser.get("/timeline?type=concern.raised").text) == ["New concern"]
    skipped = deliveries(browser.get("/timeline?status=skipped").text)
    assert skipped and all(" Skipped : member has no " in d for d in skipped), skipped
    dad = deliveries(browser.get(f"/timeline?member={m['dad']['id']}").text)
    assert dad and all(d.startswith("Sam Rivera (parent) ") for d in dad), dad
    assert "Sam Rivera (parent) Text (SMS) Sent" in " ".join(dad)
    # what the form does not offer is "all", never an error
    assert browser.get("/timeline?type=nope&status=%00&member=x&before=zz").text.count('class="event"') == 2


def test_every_status_has_a_word_and_every_input_a_label(setup):
    assert set(STATUS_WORDS) == set(DeliveryStatus)
    app, api, nb, m, key = setup
    browser = Browser(app)
    for page in (browser.get("/signin").text, (browser.sign_in(ADMIN_KEY), browser.get("/timeline").text)[1]):
        for control in re.findall(r"<(?:input|select)\b[^>]*>", page):
            if 'type="hidden"' in control:
                continue
            ident = re.search(r'id="([^"]+)"', control).group(1)
            assert f'<label for="{ident}">' in page, control


def test_the_admin_view_lists_failed_deliveries_across_notebooks_and_the_embedded_queue(setup, smtp):
    app, api, nb, m, key = setup
    smtp.fail_always("550 5.1.1 mailbox unavailable")
    other = api.notebook(child_name="Noah Park")
    api.member(other["id"], "Dr. Lin", "neurology", email="lin@example.org")
    api.event(other["id"], "medication.changed", MEDICATION)
    api.event(nb["id"], "medication.changed", MEDICATION)
    drain(app)
    browser = Browser(app)
    browser.sign_in(ADMIN_KEY)
    page = text(browser.get("/timeline/admin").text)
    assert "Dr. Lin (neurology) Email Failed" in page and "Dr. Shah (neurology) Email Failed" in page
    assert "Embedded queue" in page and "Times are in UTC" in page
    assert re.search(r"email 0", page), page
    # the admin's timeline offers every notebook
    assert browser.get(f"/timeline?notebook={other['id']}").text.count("Dr. Lin (neurology)") >= 2


# --- "Email me a sign-in link" ---------------------------------------------------------------------


def _main(html: str) -> str:
    return re.search(r"<main.*</main>", html, re.S).group(0)


def _link_in(received) -> str:
    body = received.message.get_body(("plain",)).get_content()
    return re.search(r"https://careloop\.test(/signin/link/\S+)", body).group(1)


def test_an_emailed_link_signs_a_parent_in_once_and_the_answer_never_says_whether_the_address_is_known(
    setup, smtp
):
    app, api, nb, m, key = setup
    browser = Browser(app)
    answers = {}
    for address in ("dana@example.org", "nobody@example.org", "shah@example.org", "not an address", ""):
        browser.get("/signin")
        answers[address] = _main(browser.post("/signin/email", {"email": address}, status=200).text)
    assert len(set(answers.values())) == 1, answers  # the same page, known or not
    assert "works once, for 15 minutes" in answers["dana@example.org"]
    (received,) = smtp.wait_for(1)
    assert received.rcpt_tos == ["dana@example.org"]  # a parent; never the neurologist
    path = _link_in(received)

    stranger = Browser(app)
    opened = stranger.get(path)  # opening it (a mail scanner's GET) uses nothing
    assert opened.headers["Referrer-Policy"] == "strict-origin" and "Sign in" in opened.text
    stranger.get(path)
    token = path.rsplit("/", 1)[1]
    assert stranger.post("/signin/link", {"token": token}).headers["Location"] == "/timeline"
    payload = cookie_payload(stranger.cookie().value)
    assert payload["member_id"] == m["mom"]["id"] and token not in json.dumps(payload)
    assert f"Timeline: {nb['name']}" in stranger.get("/timeline").text

    # used once: the link is gone, for this browser and any other
    assert "no longer works" in Browser(app).get(path, status=404).text
    again = Browser(app)
    again.get("/signin")
    assert "no longer works" in again.post("/signin/link", {"token": token}, status=404).text
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    assert Browser(app).get(f"/signin/link/{forged}", status=404)

    # revoking the member's links ends the session at its next request
    api.post(f"/v1/members/{m['mom']['id']}/links/revoke", {}, status=200)
    assert stranger.get("/timeline", status=303).headers["Location"] == "/signin"


def test_sign_in_links_expire_and_a_member_gets_at_most_three_open_ones(setup, smtp, db_url):
    from datetime import timedelta

    from careloop.models import Member, SigninLink
    from careloop.signin_links import LINK_TTL, MAX_OPEN_LINKS, SigninLinks

    app, api, nb, m, key = setup
    browser = Browser(app)
    for _ in range(MAX_OPEN_LINKS + 2):
        browser.get("/signin")
        browser.post("/signin/email", {"email": "DANA@example.org"}, status=200)
    smtp.wait_for(MAX_OPEN_LINKS)
    with session_scope(db_url) as session:  # the links made (each one is sent as it is made)
        assert session.query(SigninLink).filter_by(member_id=m["mom"]["id"]).count() == MAX_OPEN_LINKS
    token = _link_in(smtp.received[0]).rsplit("/", 1)[1]
    links = SigninLinks(app.extensions["careloop"].runtime.secret)
    with session_scope(db_url) as session:
        assert links.use(session, token, now=utcnow() + LINK_TTL + timedelta(seconds=1)) is None
        assert links.check(session, token)  # not used by the late try
        assert links.use(session, token) is not None
        member = session.get(Member, m["mom"]["id"])
        assert links.issue(session, member) is not None  # one was used: room for another


def test_sign_in_tokens_never_reach_a_request_log_line():
    from careloop.service.redaction import redact

    line = '127.0.0.1 - - "GET /signin/link/b64nonce.ZmTime.Sig-nature_ HTTP/1.1" 200 "-"'
    assert redact(line) == '127.0.0.1 - - "GET /signin/link/[token] HTTP/1.1" 200 "-"'
