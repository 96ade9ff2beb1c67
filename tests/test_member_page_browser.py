"""Member pages in a real browser: Debian's headless Chromium, driven by Selenium through
Debian's chromium-driver, loads pages from a live local server (127.0.0.1 only) and reports
no console errors; the page is laid out for a phone and keeps its accessibility promises.

scripts/test.sh installs chromium and chromium-driver when they are missing (as root), or
says what to install and stops; this module fails — it never skips — without them."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.conftest import build_app, build_team, checkin_data, drain, make_settings
from tests.test_member_links import link_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
PHONE = (390, 844)
"""A small phone's viewport, in CSS pixels."""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: run `bash scripts/test.sh` as root (it installs them), or "
            "`apt-get install chromium chromium-driver`"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # a phone's screen (a headless window is never narrower than 500 pixels)
    options.add_experimental_option(
        "mobileEmulation", {"deviceMetrics": {"width": PHONE[0], "height": PHONE[1], "pixelRatio": 3.0}}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A driver path given: Selenium Manager (which could download a browser) is never run.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def served(db_url, tmp_path):
    """The app on a live HTTP server on 127.0.0.1, with a routed team and three events."""
    settings = make_settings(db_url, tmp_path)
    app, api = build_app(settings)
    nb, m = build_team(api)
    events = {
        "medication": api.event(nb["id"], "medication.changed",
                                {"medication": "levetiracetam", "change": "dose_changed", "dose": "250 mg"},
                                author_member_id=m["mom"]["id"]),
        "concern": api.event(nb["id"], "concern.raised",
                             {"summary": "Choking on liquids", "severity": "urgent", "area": "swallowing"},
                             author_member_id=m["mom"]["id"]),
        "checkin": api.event(nb["id"], "checkin.scheduled",
                             checkin_data([m["mom"]["id"], m["school"]["id"]], location="Room 12")),
    }  # fmt: skip
    drain(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", settings, m, events
    finally:
        server.shutdown()
        server.server_close()
        drain(app)


def console(driver) -> list[dict]:
    return driver.get_log("browser")


def open_page(driver, url: str) -> None:
    assert url.startswith("http://127.0.0.1:"), "the browser only ever loads this machine's pages"
    driver.get(url)
    assert driver.execute_script("return document.readyState") == "complete"


def _luminance(rgb: str) -> float:
    r, g, b = (int(v) / 255 for v in re.findall(r"\d+", rgb)[:3])
    channel = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * channel[0] + 0.7152 * channel[1] + 0.0722 * channel[2]


def contrast(foreground: str, background: str) -> float:
    light, dark = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


PAGE_FACTS = """
const style = (el) => getComputedStyle(el);
const sections = [...document.querySelectorAll('section')];
return {
  lang: document.documentElement.lang,
  title: document.title,
  h1: [...document.querySelectorAll('h1')].map(h => h.textContent.trim()),
  landmarks: ['header', 'main', 'footer'].map(t => document.querySelectorAll(t).length),
  unnamedSections: sections.filter(s => {
    const id = s.getAttribute('aria-labelledby');
    return !id || !document.getElementById(id) || !document.getElementById(id).textContent.trim();
  }).length,
  scrollWidth: document.documentElement.scrollWidth,
  innerWidth: window.innerWidth,
  stylesheetLoaded: style(document.querySelector('.brand')).fontWeight === '700',
  fontSize: parseFloat(style(document.body).fontSize),
  colours: [...document.querySelectorAll('h1, p, dt, dd, li, a')].map(el => style(el).color),
  background: style(document.body).backgroundColor,
  scripts: document.scripts.length,
};
"""


def test_member_pages_render_in_chromium_on_a_phone_with_no_console_errors(browser, served, tmp_path):
    base, settings, m, events = served
    pages = {
        "parent, medication": (link_for(settings, events["medication"]["id"], m["dad"]["id"], "sms"),
                               "levetiracetam"),
        "school, urgent concern": (link_for(settings, events["concern"]["id"], m["school"]["id"]),
                                   "shared only with the members"),
        "school, check-in": (link_for(settings, events["checkin"]["id"], m["school"]["id"]), "Room 12"),
    }  # fmt: skip
    console(browser)  # start from an empty log
    for label, (token, expected) in pages.items():
        open_page(browser, f"{base}/m/{token}")
        text = browser.find_element("tag name", "body").text
        assert expected in text, (label, text)
        assert "Choking" not in text or label != "school, urgent concern"
        facts = browser.execute_script(PAGE_FACTS)
        browser.save_screenshot(str(tmp_path / f"{label}.png"))
        assert facts["lang"] == "en" and facts["scripts"] == 0, (label, facts)
        assert len(facts["h1"]) == 1 and facts["title"].startswith(facts["h1"][0]), (label, facts)
        assert facts["landmarks"] == [1, 1, 1], (label, facts)
        assert facts["unnamedSections"] == 0, (label, facts)
        assert facts["stylesheetLoaded"], (label, "the stylesheet did not load")
        assert facts["innerWidth"] <= PHONE[0] and facts["scrollWidth"] <= facts["innerWidth"], (
            label, "the page scrolls sideways on a phone", facts,
        )  # fmt: skip
        assert facts["fontSize"] >= 16, (label, facts)
        for colour in set(facts["colours"]):
            assert contrast(colour, facts["background"]) >= 4.5, (label, colour, facts["background"])
        errors = [entry for entry in console(browser) if entry["level"] in ("SEVERE", "WARNING")]
        assert errors == [], (label, errors)

    # The keyboard reaches the skip link first, and it leads to the content.
    from selenium.webdriver.common.keys import Keys

    browser.find_element("tag name", "body").send_keys(Keys.TAB)
    assert browser.execute_script("return document.activeElement.getAttribute('href')") == "#main"


def test_a_dead_link_in_chromium_is_a_plain_page_with_only_its_404(browser, served):
    base, settings, m, events = served
    token = link_for(settings, events["medication"]["id"], m["dad"]["id"], "sms")
    console(browser)
    open_page(browser, f"{base}/m/{token[:-2]}zz")
    text = browser.find_element("tag name", "body").text
    assert "This link no longer works" in text and "Sam" not in text and "Maya" not in text
    entries = console(browser)
    assert len(entries) == 1 and "404" in entries[0]["message"], entries  # the page's own status, no more
