"""Bearer-key authentication and the one way a route reaches a notebook's data.

The admin key comes from CARELOOP_ADMIN_KEY; every other key is minted by the API or the CLI,
has a role and reaches one notebook (or, a clinic key, several): ``careloop.access`` says
what each role may do. A route asks :func:`notebook_or_404` or :func:`reach_or_404` for what
it works on, naming the action; a key that may not do it gets the same 404 as a missing
record, so no key learns what exists beyond its reach.

Each request that presents a key is recorded in the audit log (``careloop.service.audit_trail``);
authentication fills in who, these helpers fill in whose data and why a request was refused.
"""

from __future__ import annotations

import hmac
from functools import wraps

from apiflask import HTTPTokenAuth, abort
from flask import current_app, g

from careloop.access import ADMIN as ADMIN_PRINCIPAL
from careloop.access import Action, KeyRefused, Principal, authenticate, hash_key, mint_secret
from careloop.audit import ActorType
from careloop.models import Notebook
from careloop.service.audit_trail import trail

__all__ = ["hash_key", "mint_key", "Principal"]

auth = HTTPTokenAuth(
    scheme="Bearer",
    description="CARELOOP_ADMIN_KEY, or a key minted by the API (`clk_…`) with a role: family, clinician, "
    "integration (one notebook) or clinic (the notebooks the admin gave it)",
)


def mint_key() -> str:
    return mint_secret()


@auth.verify_token
def _verify(token: str) -> Principal | None:
    seen = trail()
    if not token:
        seen.reason = "no key"
        return None
    admin_key = current_app.extensions["careloop"].settings.admin_key
    if admin_key and hmac.compare_digest(token.encode(), admin_key.get_secret_value().encode()):
        seen.actor_type = ActorType.ADMIN
        return ADMIN_PRINCIPAL
    try:
        who = authenticate(g.db, token)
    except KeyRefused as refused:
        if refused.key_id:
            seen.actor_type, seen.actor_id = ActorType.KEY, refused.key_id
        seen.notebook_ids = refused.notebook_ids  # its families see a revoked key still in use
        seen.reason = refused.reason
        return None
    seen.actor_type = ActorType.KEY
    seen.actor_id = who.key_id
    return who


ADMIN = "admin"
"""The role of the admin key: ``@bp.auth_required(auth, roles=[ADMIN])`` marks an admin-only
route, checked with the key, before the route reads any of its input."""


@auth.get_user_roles
def _roles(who: Principal) -> list[str]:
    return [ADMIN] if who.admin else []


@auth.error_processor
def _auth_error(error):
    if error.status_code == 403:
        trail().reason = "not the admin key"
        return {"error": "forbidden", "message": "this needs the admin key"}, 403
    return (
        {"error": "unauthorized", "message": "a valid Bearer key is required"},
        401,
        {"WWW-Authenticate": 'Bearer realm="careloop"'},
    )


def principal() -> Principal:
    return auth.current_user


def refuse(what: str, notebook_id: str | None, reason: str):
    """404 "<what> not found" — for a record that is missing and for one out of reach alike."""
    seen = trail()
    seen.notebook_ids = [notebook_id] if notebook_id else []
    seen.reason = reason
    abort(404, f"{what} not found")


def notebook_or_404(notebook_id: str, action: Action = Action.READ_NOTEBOOK) -> Notebook:
    """The notebook, if this key may do ``action`` on it; 404 alike for 'missing' and 'not yours'."""
    notebook = g.db.get(Notebook, notebook_id)
    if notebook is None:
        refuse("notebook", None, "missing")
    if not principal().may(action, notebook.id):
        refuse("notebook", notebook.id, "out of reach" if not principal().may_reach(notebook.id) else "role")
    trail().notebook_ids = [notebook.id]
    return notebook


def before_the_body(action: Action, model=Notebook, parameter: str = "notebook_id", what: str = "notebook"):
    """Decorate a route (below ``auth_required``, above its ``input``) so that a key that may
    not do ``action`` on the record its path names is refused (404) before the route reads
    its body or query: a caller learns nothing from input it may not send. The route then
    asks :func:`notebook_or_404` / :func:`reach_or_404` again, from the session's identity
    map (no second query)."""

    def decorate(view):
        @wraps(view)
        def checked(*args, **kwargs):
            if model is Notebook:
                notebook_or_404(kwargs[parameter], action)
            else:
                reach_or_404(model, kwargs[parameter], action, what)
            return view(*args, **kwargs)

        return checked

    return decorate


def reach_or_404(model, record_id: str, action: Action, what: str):
    """The member, event, delivery … of that id, if this key may do ``action`` on its
    notebook; 404 alike for 'missing' and 'not yours'."""
    found = g.db.get(model, record_id)
    if found is None:
        refuse(what, None, "missing")
    if not principal().may(action, found.notebook_id):
        reachable = principal().may_reach(found.notebook_id)
        refuse(what, found.notebook_id, "role" if reachable else "out of reach")
    trail().notebook_ids = [found.notebook_id]
    return found
