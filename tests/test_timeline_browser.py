"""The timeline in a real browser: Debian's headless Chromium (Selenium, Debian's
chromium-driver, on a phone-sized screen) against a live local server in RQ mode with the real
peers — texts through Twilio's API shape (Prism) and a signed "delivered" status callback,
email through an SMTP server (aiosmtpd) that refuses it. A coordinator signs in with the
keyboard, sees the delivered text and the failed email with its reason, presses "Retry" and
sees it sent; no console errors, every input labelled, AA contrast, no sideways scrolling.

``CARELOOP_SCREENSHOT=1`` saves the timeline as ``docs/timeline.png`` (the README shows it)."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from werkzeug.serving import make_server

from tests import test_member_page_browser
from tests.conftest import ADMIN_KEY, build_team, run_rq_until_settled, wait_until
from tests.test_member_page_browser import PAGE_FACTS, PHONE, console, contrast, open_page
from tests.test_twilio_status import post_callback, twilio_form

browser = test_member_page_browser.browser
"""The member-page test's headless Chromium on a phone's screen (the same fixture)."""

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "timeline.png"

LABELS = """
const controls = [...document.querySelectorAll('input:not([type=hidden]), select, textarea')];
return controls.filter(c => !(c.labels && c.labels.length && c.labels[0].textContent.trim()))
               .map(c => c.outerHTML);
"""

FOCUSED = "const e = document.activeElement; return e && (e.id || e.textContent.trim())"


@pytest.fixture
def api(rq_api):
    return rq_api


@pytest.fixture
def story(rq_app, rq_api, runtime, smtp, twilio_proxy):
    """A team, a coordinator's key, and one medication change: the dad's text delivered (Twilio's
    callback), every email refused by the SMTP server (550)."""
    nb, m = build_team(rq_api)
    key = rq_api.post(f"/v1/notebooks/{nb['id']}/keys", {"name": "coordinator"})
    smtp.fail_always("550 5.1.1 mailbox unavailable")
    twilio_proxy.remember_sent = True
    event = rq_api.event(
        nb["id"], "medication.changed",
        {"medication": "levetiracetam", "change": "dose_changed", "dose": "250 mg twice daily"},
        author_member_id=m["mom"]["id"],
    )  # fmt: skip
    run_rq_until_settled(runtime)
    deliveries = rq_api.get(f"/v1/events/{event['id']}")["deliveries"]
    (text,) = [d for d in deliveries if d["channel"] == "sms" and d["member_id"] == m["dad"]["id"]]
    (email,) = [d for d in deliveries if d["channel"] == "email" and d["member_id"] == m["neuro"]["id"]]
    assert text["status"] == "sent" and email["status"] == "failed" and "550" in email["error"], deliveries
    (sent,) = twilio_proxy.sent
    client = rq_app.test_client()
    response = post_callback(
        client, sent["StatusCallback"], twilio_form(sent["Sid"], "delivered", To=sent["To"])
    )
    assert response.status_code == 204
    assert rq_api.get(f"/v1/deliveries/{text['id']}")["status"] == "delivered"

    server = make_server("127.0.0.1", 0, rq_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", key, email, event
    finally:
        server.shutdown()
        server.server_close()


def _check_page(driver, label: str) -> None:
    facts = driver.execute_script(PAGE_FACTS)
    assert facts["lang"] == "en" and facts["scripts"] == 0, (label, facts)
    assert len(facts["h1"]) == 1 and facts["title"].startswith(facts["h1"][0]), (label, facts)
    assert facts["landmarks"] == [1, 1, 1] and facts["unnamedSections"] == 0, (label, facts)
    assert facts["stylesheetLoaded"] and facts["fontSize"] >= 16, (label, facts)
    assert facts["innerWidth"] <= PHONE[0] and facts["scrollWidth"] <= facts["innerWidth"], (label, facts)
    for colour in set(facts["colours"]):
        assert contrast(colour, facts["background"]) >= 4.5, (label, colour, facts["background"])
    assert driver.execute_script(LABELS) == [], (label, "an input without a label")
    errors = [entry for entry in console(driver) if entry["level"] in ("SEVERE", "WARNING")]
    assert errors == [], (label, errors)


def _tab_to(driver, element_id: str, limit: int = 80) -> list[str]:
    """Press Tab until ``element_id`` has the focus; returns what had it on the way."""
    seen = []
    for _ in range(limit):
        driver.switch_to.active_element.send_keys(Keys.TAB)
        focused = driver.execute_script(FOCUSED)
        seen.append(focused)
        if focused == element_id:
            return seen
    raise AssertionError(f"the keyboard never reached #{element_id}: {seen}")


def _delivery_text(driver, button_id: str) -> str:
    return driver.find_element(By.ID, button_id).find_element(By.XPATH, "ancestor::li[1]").text


def test_a_coordinator_signs_in_sees_who_was_told_and_retries_the_failed_email(
    browser, story, runtime, smtp, tmp_path
):
    base, key, email, event = story
    console(browser)  # start from an empty log
    browser.delete_all_cookies()

    # No session: the timeline sends the browser to the sign-in form.
    open_page(browser, f"{base}/timeline")
    assert browser.current_url == f"{base}/signin"
    _check_page(browser, "sign-in")
    # Keyboard only: the skip link first, then the key field; Enter submits.
    _tab_to(browser, "key")
    browser.switch_to.active_element.send_keys(key["key"], Keys.ENTER)
    wait_until(lambda: browser.current_url == f"{base}/timeline", timeout=10, message="the timeline")
    cookie = browser.get_cookie("careloop_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and key["key"] not in cookie["value"]
    _check_page(browser, "timeline")

    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Medication update" in body and "Times are in America/Chicago" in body
    items = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "li.delivery")]
    assert any(t.startswith("Sam Rivera (parent) Text (SMS) Delivered") for t in items), items
    retry_id = f"retry-{email['id']}"
    failed = _delivery_text(browser, retry_id)
    assert "Dr. Shah (neurology)" in failed and "Failed" in failed and "550" in failed, failed
    if os.environ.get("CARELOOP_SCREENSHOT") == "1":
        shot = browser.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
    browser.save_screenshot(str(tmp_path / "timeline.png"))

    # The SMTP server takes mail again; the coordinator presses Retry with the keyboard.
    smtp.clear()
    _tab_to(browser, retry_id)
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_until(lambda: "queued to be sent again" in browser.find_element(By.TAG_NAME, "body").text,
               timeout=10, message="the retry's notice")  # fmt: skip
    assert browser.current_url.startswith(f"{base}/timeline#{event['id']}")
    assert "Queued" in browser.find_element(By.CSS_SELECTOR, f"#{event['id']} ul").text
    _check_page(browser, "after retry")

    run_rq_until_settled(runtime)
    assert any("shah@example.org" in r.rcpt_tos for r in smtp.received)
    browser.refresh()
    sent = next(
        li.text
        for li in browser.find_elements(By.CSS_SELECTOR, "li.delivery")
        if "Dr. Shah (neurology)" in li.text and "Email" in li.text
    )
    assert "Sent" in sent and "Failed" not in sent and "Retry" not in sent, sent
    _check_page(browser, "after the worker")

    # Sign out (a form with its token): the timeline is closed again.
    browser.find_element(By.XPATH, "//button[normalize-space()='Sign out']").click()
    wait_until(lambda: browser.current_url == f"{base}/signin", timeout=10, message="the sign-in page")
    open_page(browser, f"{base}/timeline")
    assert browser.current_url == f"{base}/signin"


def test_the_admin_view_in_chromium_shows_failed_deliveries_and_rq_queue_depths(browser, story):
    base, key, email, event = story
    console(browser)
    browser.delete_all_cookies()
    open_page(browser, f"{base}/signin")
    browser.find_element(By.ID, "key").send_keys(ADMIN_KEY, Keys.ENTER)
    wait_until(lambda: browser.current_url == f"{base}/timeline", timeout=10, message="the timeline")
    open_page(browser, f"{base}/timeline/admin")
    _check_page(browser, "admin")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Failed deliveries" in body and "Jobs queued" in body and "Embedded queue" not in body
    assert "550" in _delivery_text(browser, f"retry-{email['id']}")
    rows = {
        row.find_element(By.TAG_NAME, "th").text: row.text
        for row in browser.find_elements(By.CSS_SELECTOR, "tbody tr")
    }
    assert {"sms", "email", "route", "sms-urgent"} <= set(rows), rows
