"""Bearer-key authentication. The admin key comes from CARELOOP_ADMIN_KEY; notebook keys are
minted by the API, shown once, and stored as SHA-256 hashes (they are 256-bit random, so a
plain hash is enough; no slow KDF is needed)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from apiflask import HTTPTokenAuth, abort
from flask import current_app, g
from sqlalchemy import select

from careloop.models import ApiKey, Notebook

KEY_PREFIX = "clk_"
"""Every minted key starts with this, so leaked keys are easy to spot and scan for."""

auth = HTTPTokenAuth(scheme="Bearer", description="CARELOOP_ADMIN_KEY, or a notebook key minted by the API")


@dataclass(frozen=True)
class Principal:
    admin: bool
    notebook_id: str | None = None
    key_id: str | None = None

    def may_reach(self, notebook_id: str) -> bool:
        return self.admin or self.notebook_id == notebook_id


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def mint_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@auth.verify_token
def _verify(token: str) -> Principal | None:
    if not token:
        return None
    admin_key = current_app.extensions["careloop"].settings.admin_key
    if admin_key and hmac.compare_digest(token.encode(), admin_key.get_secret_value().encode()):
        return Principal(admin=True)
    if not token.startswith(KEY_PREFIX):
        return None
    # The key's notebook comes with it (one round trip): notebook_or_404 then finds it in the
    # session's identity map, which holds it only weakly, so the request holds it (g).
    row = g.db.execute(
        select(ApiKey, Notebook)
        .join(Notebook, Notebook.id == ApiKey.notebook_id)
        .where(ApiKey.key_hash == hash_key(token), ApiKey.revoked_at.is_(None))
    ).one_or_none()
    if row is None:
        return None
    key, g.key_notebook = row
    return Principal(admin=False, notebook_id=key.notebook_id, key_id=key.id)


ADMIN = "admin"
"""The role of the admin key: ``@bp.auth_required(auth, roles=[ADMIN])`` marks an admin-only
route, checked with the key, before the route reads any of its input."""


@auth.get_user_roles
def _roles(who: Principal) -> list[str]:
    return [ADMIN] if who.admin else []


@auth.error_processor
def _auth_error(error):
    if error.status_code == 403:
        return {"error": "forbidden", "message": "this needs the admin key"}, 403
    return (
        {"error": "unauthorized", "message": "a valid Bearer key is required"},
        401,
        {"WWW-Authenticate": 'Bearer realm="careloop"'},
    )


def principal() -> Principal:
    return auth.current_user


def notebook_or_404(notebook_id: str) -> Notebook:
    """The notebook, if this key may reach it; 404 alike for 'missing' and 'not yours'."""
    if not principal().may_reach(notebook_id):
        abort(404, "notebook not found")
    notebook = g.db.get(Notebook, notebook_id)
    if notebook is None:
        abort(404, "notebook not found")
    return notebook
