"""Abuse limits, security headers and start-up checks of secrets (issue #10): per-key limits on
the API's reads and writes, per-address limits on member links and webhooks (Flask-Limiter, in
memory embedded and in Redis with REDIS_URL), 429 with Retry-After; every answer's headers;
settings that refuse a missing or malformed secret with a clear error that does not echo it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from careloop.config.settings import Settings
from tests.conftest import REDIS_URL, build_app, make_settings


def _app(db_url, tmp_path, **limits):
    return build_app(make_settings(db_url, tmp_path, **limits))


def assert_429(response, page: bool = False) -> None:
    assert response.status_code == 429, (response.status_code, response.get_data(as_text=True)[:300])
    assert int(response.headers["Retry-After"]) >= 1
    if page:
        assert response.mimetype == "text/html"
    else:
        assert response.get_json()["error"] == "rate_limited"


def test_writes_are_limited_per_key_with_retry_after(db_url, tmp_path):
    app, api = _app(db_url, tmp_path, rate_limit_writes="3/minute")
    client = app.test_client()
    nb = api.notebook()
    minted = api.post(f"/v1/notebooks/{nb['id']}/keys", {"name": "k"})["key"]
    key = {"Authorization": f"Bearer {minted}"}
    note = {"type": "note.added", "data": {"text": "t", "voice": "family"}}
    for _ in range(3):
        assert client.post(f"/v1/notebooks/{nb['id']}/events", json=note, headers=key).status_code == 202
    assert_429(client.post(f"/v1/notebooks/{nb['id']}/events", json=note, headers=key))
    # Reads have their own budget; the admin key (2 writes so far) has its own.
    assert client.get(f"/v1/notebooks/{nb['id']}/events", headers=key).status_code == 200
    assert api.post("/v1/notebooks", {"name": "n", "child_name": "c", "timezone": "UTC"})["id"]


def test_reads_are_limited_per_key(db_url, tmp_path):
    app, api = _app(db_url, tmp_path, rate_limit_reads="2/minute")
    client = app.test_client()
    nb = api.notebook()
    for _ in range(2):
        assert client.get(f"/v1/notebooks/{nb['id']}", headers=api.headers).status_code == 200
    assert_429(client.get(f"/v1/notebooks/{nb['id']}", headers=api.headers))
    assert client.get("/healthz").status_code == 200  # health checks are never limited


def test_member_links_are_limited_per_address_with_a_page(db_url, tmp_path):
    app, _ = _app(db_url, tmp_path, rate_limit_member_links="2/minute")
    client = app.test_client()
    here = {"REMOTE_ADDR": "198.51.100.7"}
    for _ in range(2):
        assert client.get("/m/not-a-token", environ_base=here).status_code == 404
    answer = client.get("/m/not-a-token", environ_base=here)
    assert_429(answer, page=True)
    assert (
        answer.headers["Referrer-Policy"] == "no-referrer"
        and "script-src" not in answer.headers["Content-Security-Policy"]
    )
    assert client.get("/m/not-a-token", environ_base={"REMOTE_ADDR": "198.51.100.8"}).status_code == 404


def test_webhooks_are_limited_per_address(db_url, tmp_path):
    app, api = _app(db_url, tmp_path, rate_limit_webhooks="2/minute")
    client = app.test_client()
    nb = api.notebook()
    src = api.post("/v1/sources", {"name": "EHR", "kind": "careloop", "notebook_id": nb["id"]})
    for _ in range(2):
        assert client.post(f"/v1/webhooks/{src['id']}", data=b"{}").status_code == 401
    assert_429(client.post(f"/v1/webhooks/{src['id']}", data=b"{}"))


def test_with_redis_every_web_process_shares_the_count(db_url, tmp_path, redis_conn):
    settings = make_settings(db_url, tmp_path, redis_url=REDIS_URL, rate_limit_reads="3/minute")
    first, api = build_app(settings)
    second, _ = build_app(settings)
    nb = api.notebook()
    url = f"/v1/notebooks/{nb['id']}"
    assert [first.test_client().get(url, headers=api.headers).status_code for _ in range(2)] == [200, 200]
    assert second.test_client().get(url, headers=api.headers).status_code == 200
    assert_429(second.test_client().get(url, headers=api.headers))
    assert_429(first.test_client().get(url, headers=api.headers))


# --- headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, html", [("/healthz", False), ("/v1/notebooks", False), ("/v1/nothing", False), ("/docs", True),
                   ("/m/not-a-token", True), ("/openapi.json", False)],
)  # fmt: skip
def test_every_answer_carries_the_security_headers(client, admin, path, html):
    response = client.get(path, headers=admin)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "Server" not in response.headers
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert (
        "'unsafe-inline'" not in policy.split("script-src", 1)[-1].split(";")[0] or "script-src" not in policy
    )
    assert (response.mimetype == "text/html") == html


def test_the_docs_page_runs_only_its_own_scripts(client):
    response = client.get("/docs")
    policy = response.headers["Content-Security-Policy"]
    script_src = next(p for p in policy.split(";") if p.strip().startswith("script-src")).split()[1:]
    assert script_src[0] == "'self'" and all(s.startswith("'sha256-") for s in script_src[1:])
    assert len(script_src) == response.get_data(as_text=True).count("<script>") + 1


# --- secrets checked at start ------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, named",
    [
        ({"admin_key": "too-short-admin-key"}, "CARELOOP_ADMIN_KEY"),
        ({"admin_key": " " * 40}, "CARELOOP_ADMIN_KEY"),
        ({"admin_key": "a-long-enough-admin-key-with-a-newline\n"}, "CARELOOP_ADMIN_KEY"),
        ({"secret_key": "s3cr3t-but-short"}, "CARELOOP_SECRET_KEY"),
        ({"twilio_account_sid": "AB" + "0" * 32}, "TWILIO_ACCOUNT_SID"),
        ({"twilio_account_sid": "AC123"}, "TWILIO_ACCOUNT_SID"),
        ({"twilio_auth_token": "not-a-twilio-token-zzzz"}, "TWILIO_AUTH_TOKEN"),
        ({"rate_limit_writes": "lots"}, "CARELOOP_RATE_LIMIT_WRITES"),
        ({"webhook_secret_grace": "a while"}, "a while"),
    ],
)
def test_a_malformed_secret_or_setting_stops_start_up_naming_it(values, named):
    with pytest.raises(ValidationError) as refused:
        Settings.from_values(**values)
    message = str(refused.value)
    assert named in message
    if named.startswith(("CARELOOP_ADMIN", "CARELOOP_SECRET", "TWILIO")):  # a secret is never echoed
        assert all(value.strip() not in message for value in values.values() if value.strip())


def test_the_environment_is_checked_too(monkeypatch):
    monkeypatch.setenv("CARELOOP_ADMIN_KEY", "short")
    with pytest.raises(ValidationError, match="CARELOOP_ADMIN_KEY must be at least 32 characters"):
        Settings()



def test_a_trusted_proxy_names_the_client_and_an_untrusted_header_is_ignored(db_url, tmp_path):
    """Behind one trusted proxy, each client's own address is counted (the last hop of
    X-Forwarded-For); without that setting the header is ignored and the proxy is counted."""

    def get(client, forwarded_for):
        proxy = {"REMOTE_ADDR": "10.0.0.2"}
        return client.get("/m/x", environ_base=proxy, headers={"X-Forwarded-For": forwarded_for})

    behind, _ = _app(db_url, tmp_path, rate_limit_member_links="2/minute", trusted_proxies=1)
    client = behind.test_client()
    assert get(client, "198.51.100.7").status_code == 404
    assert get(client, "198.51.100.7").status_code == 404
    assert_429(get(client, "198.51.100.7"), page=True)
    # Another client behind the same proxy has its own budget; a forged first hop changes nothing.
    assert get(client, "203.0.113.9, 198.51.100.8").status_code == 404
    assert get(client, "198.51.100.8").status_code == 404
    assert_429(get(client, "198.51.100.8"), page=True)

    direct, _ = _app(db_url, tmp_path, rate_limit_member_links="2/minute")
    client = direct.test_client()
    assert get(client, "198.51.100.20").status_code == 404  # the header is not believed:
    assert get(client, "198.51.100.21").status_code == 404  # all three are the proxy's
    assert_429(get(client, "198.51.100.22"), page=True)
