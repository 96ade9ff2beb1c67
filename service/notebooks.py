"""Notebooks, their API keys, and the team directory (members)."""

from __future__ import annotations

from apiflask import APIBlueprint, abort
from flask import g
from sqlalchemy import select

from careloop import links, serialize
from careloop.models import ApiKey, Member, Notebook, utcnow
from careloop.service import api_links
from careloop.service.auth import ADMIN, auth, hash_key, mint_key, notebook_or_404, principal
from careloop.service.schemas import (
    CreatedKeyOut,
    KeyIn,
    LinksRevokedOut,
    MemberIn,
    MemberList,
    MemberOut,
    MemberPatch,
    NotebookIn,
    NotebookOut,
    NotebookPatch,
)

bp = APIBlueprint("notebooks", __name__, url_prefix="/v1", tag="Notebooks")


@bp.post("/notebooks")
@bp.auth_required(auth, roles=[ADMIN])
@bp.input(NotebookIn, arg_name="body")
@bp.output(NotebookOut, status_code=201, links=api_links.FROM_NOTEBOOK)
@bp.doc(
    operation_id="createNotebook",
    summary="Create a notebook (admin key)",
    responses={201: "Created", 403: "Not the admin key"},
)
def create_notebook(body: NotebookIn):
    notebook = Notebook(**body.model_dump())
    g.db.add(notebook)
    g.db.commit()
    return serialize.notebook(notebook), 201


@bp.get("/notebooks/<id:notebook_id>")
@bp.auth_required(auth)
@bp.output(NotebookOut)
@bp.doc(operation_id="getNotebook", summary="Get a notebook", responses=[404])
def get_notebook(notebook_id: str):
    return serialize.notebook(notebook_or_404(notebook_id))


@bp.patch("/notebooks/<id:notebook_id>")
@bp.auth_required(auth)
@bp.input(NotebookPatch, arg_name="body")
@bp.output(NotebookOut)
@bp.doc(
    operation_id="updateNotebook",
    summary="Change a notebook (name, child's name, time zone, email_detail)",
    description="`email_detail: true` lets emails list an event's details, only those each "
    "recipient's role may see (see the policy file); texts and subjects never carry them.",
    responses=[404],
)
def patch_notebook(notebook_id: str, body: NotebookPatch):
    notebook = notebook_or_404(notebook_id)
    changes = body.model_dump(include=body.model_fields_set)
    for name, value in changes.items():
        setattr(notebook, name, value)
    g.db.commit()
    return serialize.notebook(notebook)


@bp.post("/notebooks/<id:notebook_id>/keys")
@bp.auth_required(auth, roles=[ADMIN])
@bp.input(KeyIn, arg_name="body")
@bp.output(CreatedKeyOut, status_code=201)
@bp.doc(
    operation_id="createKey",
    summary="Mint a key for this notebook only (admin key); the key is shown once",
    responses={201: "Created: `key` is shown this once", 403: "Not the admin key"},
)
def create_key(notebook_id: str, body: KeyIn):
    notebook = notebook_or_404(notebook_id)
    secret = mint_key()
    key = ApiKey(notebook_id=notebook.id, name=body.name, key_hash=hash_key(secret))
    g.db.add(key)
    g.db.commit()
    return {**serialize.api_key(key), "key": secret}, 201


@bp.post("/notebooks/<id:notebook_id>/members")
@bp.auth_required(auth)
@bp.input(MemberIn, arg_name="body")
@bp.output(MemberOut, status_code=201, links=api_links.FROM_MEMBER)
@bp.doc(
    operation_id="createMember",
    summary="Add a care-team member",
    responses={201: "Created", 404: "No such notebook"},
)
def create_member(notebook_id: str, body: MemberIn):
    notebook = notebook_or_404(notebook_id)
    member = Member(notebook_id=notebook.id, **body.model_dump())
    g.db.add(member)
    g.db.commit()
    return serialize.member(member), 201


@bp.get("/notebooks/<id:notebook_id>/members")
@bp.auth_required(auth)
@bp.output(MemberList, links=api_links.FROM_MEMBERS)
@bp.doc(operation_id="listMembers", summary="List the care team", responses=[404])
def list_members(notebook_id: str):
    notebook = notebook_or_404(notebook_id)
    members = g.db.scalars(
        select(Member).where(Member.notebook_id == notebook.id).order_by(Member.created_at, Member.id)
    ).all()
    return {"items": [serialize.member(m) for m in members]}


@bp.patch("/members/<id:member_id>")
@bp.auth_required(auth)
@bp.input(MemberPatch, arg_name="body")
@bp.output(MemberOut)
@bp.doc(
    operation_id="updateMember",
    summary="Change a member (send null to clear email, phone or timezone)",
    responses=[404],
)
def patch_member(member_id: str, body: MemberPatch):
    member = g.db.get(Member, member_id)
    if member is None or not principal().may_reach(member.notebook_id):
        abort(404, "member not found")
    changes = body.model_dump(include=body.model_fields_set)
    deactivated = member.active and changes.get("active") is False
    for name, value in changes.items():
        setattr(member, name, value)
    if deactivated:  # the links they hold stop working now, and stay dead if they come back
        links.revoke(g.db, member.id)
    g.db.commit()
    return serialize.member(member)


@bp.post("/members/<id:member_id>/links/revoke")
@bp.auth_required(auth)
@bp.output(LinksRevokedOut)
@bp.doc(
    operation_id="revokeMemberLinks",
    summary="Revoke every member link this member was sent",
    description="Each text and email carries a link of the member's own to the event's page. After "
    "this, every link sent before answers \"this link no longer works\"; messages sent later carry "
    "links that work. Deactivating a member does the same.",
    responses=[404],
)
def revoke_member_links(member_id: str):
    member = g.db.get(Member, member_id)
    if member is None or not principal().may_reach(member.notebook_id):
        abort(404, "member not found")
    links.revoke(g.db, member.id)
    g.db.commit()
    return {"member_id": member.id, "revoked_at": serialize.iso(utcnow())}
