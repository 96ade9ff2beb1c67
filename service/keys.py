"""API keys: minted (shown once, stored as a hash), listed without secrets, revoked at once.

A notebook's family key (and the admin) manages the keys that reach that notebook: its own
family, clinician and integration keys, and the clinic keys given it. Revoking a clinic key
from a notebook takes that notebook from it; the admin revokes a clinic key everywhere.
Who may do what with each role: ``careloop.access``.
"""

from __future__ import annotations

from apiflask import APIBlueprint, abort
from flask import g

from careloop import access, serialize
from careloop.access import Action, KeyRole
from careloop.models import ApiKey
from careloop.service import api_links
from careloop.service.audit_trail import trail
from careloop.service.auth import ADMIN, auth, before_the_body, notebook_or_404, refuse
from careloop.service.schemas import ClinicKeyIn, CreatedKeyOut, KeyIn, KeyList

bp = APIBlueprint("keys", __name__, url_prefix="/v1", tag="Keys")

SHOWN_ONCE = {201: "Created: `key` is the secret, shown this once (only its hash is stored)"}


def _created(key: ApiKey) -> dict:
    return serialize.api_key(key, access.notebooks_of(g.db, key))


@bp.post("/notebooks/<id:notebook_id>/keys")
@bp.auth_required(auth)
@before_the_body(Action.MANAGE_KEYS)
@bp.input(KeyIn, arg_name="body")
@bp.output(CreatedKeyOut, status_code=201, links=api_links.FROM_CREATED_KEY)
@bp.doc(
    operation_id="createKey",
    summary="Mint a key for this notebook (admin or family key); the key is shown once",
    description="`role`: `family` (the default; everything on the notebook, keys and audit log "
    "included), `clinician` (events, members with contact details, deliveries) or `integration` "
    "(posts events, reads events and delivery status, members without contact details).",
    responses={**SHOWN_ONCE, 404: "No such notebook (or this key may not manage its keys)"},
)
def create_key(notebook_id: str, body: KeyIn):
    notebook = notebook_or_404(notebook_id, Action.MANAGE_KEYS)
    key, secret = access.create_key(g.db, name=body.name, role=KeyRole(body.role), notebook_id=notebook.id)
    g.db.commit()
    trail().target_id = key.id
    return {**_created(key), "key": secret}, 201


@bp.get("/notebooks/<id:notebook_id>/keys")
@bp.auth_required(auth)
@bp.output(KeyList)
@bp.doc(
    operation_id="listKeys",
    summary="The keys that reach this notebook (admin or family key), never their secrets",
    description="Its own keys and the clinic keys given it, oldest first; revoked keys are not listed.",
    responses=[404],
)
def list_keys(notebook_id: str):
    notebook = notebook_or_404(notebook_id, Action.MANAGE_KEYS)
    keys = access.keys_reaching(g.db, notebook.id)
    return {"items": [serialize.api_key(k, access.notebooks_of(g.db, k)) for k in keys]}


@bp.delete("/notebooks/<id:notebook_id>/keys/<id:key_id>")
@bp.auth_required(auth)
@bp.output({}, status_code=204)
@bp.doc(
    operation_id="revokeKey",
    summary="Revoke a key (admin or family key): its next request is a 401",
    description="A clinic key loses this notebook only (its next request here is a 404) and keeps "
    "the others; the admin revokes it everywhere with `DELETE /v1/keys/{key_id}`.",
    responses={204: "Revoked", 404: "No such key on this notebook"},
)
def revoke_key(notebook_id: str, key_id: str):
    notebook = notebook_or_404(notebook_id, Action.MANAGE_KEYS)
    if not access.revoke(g.db, key_id, notebook_id=notebook.id):
        refuse("key", notebook.id, "missing")
    g.db.commit()
    return "", 204


@bp.post("/keys")
@bp.auth_required(auth, roles=[ADMIN])
@bp.input(ClinicKeyIn, arg_name="body")
@bp.output(CreatedKeyOut, status_code=201, links=api_links.FROM_CLINIC_KEY)
@bp.doc(
    operation_id="createClinicKey",
    summary="Mint a clinic key reaching several notebooks (admin key); the key is shown once",
    description="A clinic key may do on each of its notebooks what a clinician key may: events, "
    "members with contact details, deliveries. A notebook's family key can take that notebook "
    "from it (`DELETE /v1/notebooks/{id}/keys/{key_id}`).",
    responses={**SHOWN_ONCE, 403: "Not the admin key", 422: "Invalid, or a notebook id names no notebook"},
)
def create_clinic_key(body: ClinicKeyIn):
    try:
        key, secret = access.create_key(
            g.db, name=body.name, role=KeyRole.CLINIC, notebook_ids=body.notebook_ids
        )
    except access.UnknownNotebooks as unknown:
        fields = {f"notebook_ids.{i}": ["no such notebook"] for i in unknown.positions}
        abort(422, "Validation error", detail={"json": fields})
    g.db.commit()
    seen = trail()
    seen.target_id = key.id
    seen.notebook_ids = list(dict.fromkeys(body.notebook_ids))  # each family's log shows the new key
    return {**_created(key), "key": secret}, 201


@bp.delete("/keys/<id:key_id>")
@bp.auth_required(auth, roles=[ADMIN])
@bp.output({}, status_code=204)
@bp.doc(
    operation_id="revokeAnyKey",
    summary="Revoke any key everywhere (admin key): its next request is a 401",
    responses={204: "Revoked", 403: "Not the admin key", 404: "No such key (or revoked already)"},
)
def revoke_any_key(key_id: str):
    key = g.db.get(ApiKey, key_id)
    reached = access.notebooks_of(g.db, key) if key is not None else []
    if not access.revoke(g.db, key_id):
        refuse("key", None, "missing")
    g.db.commit()
    trail().notebook_ids = reached
    return "", 204
