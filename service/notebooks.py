"""Notebooks and the team directory (members). Keys: ``careloop.service.keys``."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import g
from sqlalchemy import select

from careloop import links, serialize
from careloop.access import Action
from careloop.models import Member, Notebook, utcnow
from careloop.service import api_links
from careloop.service.audit_trail import trail
from careloop.service.auth import ADMIN, auth, before_the_body, notebook_or_404, principal, reach_or_404
from careloop.service.schemas import (
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
    trail().notebook_ids = [notebook.id]
    return serialize.notebook(notebook), 201


@bp.get("/notebooks/<id:notebook_id>")
@bp.auth_required(auth)
@bp.output(NotebookOut)
@bp.doc(operation_id="getNotebook", summary="Get a notebook", responses=[404])
def get_notebook(notebook_id: str):
    return serialize.notebook(notebook_or_404(notebook_id))


@bp.patch("/notebooks/<id:notebook_id>")
@bp.auth_required(auth)
@before_the_body(Action.CHANGE_NOTEBOOK)
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
    notebook = notebook_or_404(notebook_id, Action.CHANGE_NOTEBOOK)
    changes = body.model_dump(include=body.model_fields_set)
    for name, value in changes.items():
        setattr(notebook, name, value)
    g.db.commit()
    return serialize.notebook(notebook)


@bp.post("/notebooks/<id:notebook_id>/members")
@bp.auth_required(auth)
@before_the_body(Action.CHANGE_MEMBERS)
@bp.input(MemberIn, arg_name="body")
@bp.output(MemberOut, status_code=201, links=api_links.FROM_MEMBER)
@bp.doc(
    operation_id="createMember",
    summary="Add a care-team member",
    responses={201: "Created", 404: "No such notebook"},
)
def create_member(notebook_id: str, body: MemberIn):
    notebook = notebook_or_404(notebook_id, Action.CHANGE_MEMBERS)
    member = Member(notebook_id=notebook.id, **body.model_dump())
    g.db.add(member)
    g.db.commit()
    trail().target_id = member.id
    return serialize.member(member), 201


@bp.get("/notebooks/<id:notebook_id>/members")
@bp.auth_required(auth)
@bp.output(MemberList, links=api_links.FROM_MEMBERS)
@bp.doc(
    operation_id="listMembers",
    summary="List the care team",
    description="An integration key gets each member's id, name, role and whether they are active: "
    "never a phone number or an email.",
    responses=[404],
)
def list_members(notebook_id: str):
    notebook = notebook_or_404(notebook_id, Action.READ_MEMBERS)
    members = g.db.scalars(
        select(Member).where(Member.notebook_id == notebook.id).order_by(Member.created_at, Member.id)
    ).all()
    # An integration key sees who is on the team, never how to reach them.
    with_contacts = principal().may(Action.READ_CONTACTS, notebook.id)
    shape = serialize.member if with_contacts else serialize.member_summary
    return {"items": [shape(m) for m in members]}


@bp.patch("/members/<id:member_id>")
@bp.auth_required(auth)
@before_the_body(Action.CHANGE_MEMBERS, Member, "member_id", "member")
@bp.input(MemberPatch, arg_name="body")
@bp.output(MemberOut)
@bp.doc(
    operation_id="updateMember",
    summary="Change a member (send null to clear email, phone or timezone)",
    responses=[404],
)
def patch_member(member_id: str, body: MemberPatch):
    member = reach_or_404(Member, member_id, Action.CHANGE_MEMBERS, "member")
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
    member = reach_or_404(Member, member_id, Action.CHANGE_MEMBERS, "member")
    links.revoke(g.db, member.id)
    g.db.commit()
    return {"member_id": member.id, "revoked_at": serialize.iso(utcnow())}
