"""The OpenAPI links between careloop's operations: how the id one answer returns feeds the
next request (a notebook's id → its members, events and deliveries; an event's → its
deliveries …). Clients and schemathesis' stateful tests follow them to real resources."""

from __future__ import annotations


def _link(operation_id: str, description: str, **parameters: str) -> dict:
    return {"operationId": operation_id, "description": description, "parameters": parameters}


_NOTEBOOK = "$response.body#/id"

FROM_NOTEBOOK = {
    "GetNotebook": _link("getNotebook", "The notebook just created", notebook_id=_NOTEBOOK),
    "UpdateNotebook": _link("updateNotebook", "Change it", notebook_id=_NOTEBOOK),
    "CreateKey": _link("createKey", "A key for it", notebook_id=_NOTEBOOK),
    "ListKeys": _link("listKeys", "The keys that reach it", notebook_id=_NOTEBOOK),
    "ListAudit": _link("listAudit", "Its audit log", notebook_id=_NOTEBOOK),
    "CreateMember": _link("createMember", "A member of its team", notebook_id=_NOTEBOOK),
    "ListMembers": _link("listMembers", "Its team", notebook_id=_NOTEBOOK),
    "CreateEvent": _link("createEvent", "An event in it", notebook_id=_NOTEBOOK),
    "ListEvents": _link("listEvents", "Its events", notebook_id=_NOTEBOOK),
    "ListDeliveries": _link("listDeliveries", "Its deliveries", **{"query.notebook_id": _NOTEBOOK}),
    "SetCaldavCalendar": _link("setCaldavCalendar", "Publish its check-ins", notebook_id=_NOTEBOOK),
}
FROM_MEMBER = {
    "GetMember": _link("getMember", "The member and their feed URL", member_id="$response.body#/id"),
    "RotateCalendarFeed": _link(
        "rotateCalendarFeed", "Give them a new calendar feed URL", member_id="$response.body#/id"
    ),
    "UpdateMember": _link("updateMember", "Change the member just added", member_id="$response.body#/id"),
    "RevokeMemberLinks": _link(
        "revokeMemberLinks", "Turn off the links they were sent", member_id="$response.body#/id"
    ),
    "GetMemberPreferences": _link(
        "getMemberPreferences", "How and when they hear about events", member_id="$response.body#/id"
    ),
    "SetMemberPreferences": _link(
        "setMemberPreferences", "Set how and when they hear about events", member_id="$response.body#/id"
    ),
}
FROM_MEMBERS = {
    "GetMember": _link("getMember", "The first member", member_id="$response.body#/items/0/id"),
    "UpdateMember": _link("updateMember", "Change the first member", member_id="$response.body#/items/0/id"),
    "GetMemberPreferences": _link(
        "getMemberPreferences", "The first member's preferences", member_id="$response.body#/items/0/id"
    ),
}
FROM_PREFERENCES = {
    "SetMemberPreferences": _link(
        "setMemberPreferences", "Change them", member_id="$response.body#/member_id"
    ),
    "UpdateMember": _link(
        "updateMember", "Change the member (their time zone)", member_id="$response.body#/member_id"
    ),
}
FROM_ACCEPTED_EVENT = {
    "GetEvent": _link("getEvent", "The event just recorded", event_id="$response.body#/id"),
}
FROM_EVENT_BATCH = {
    "GetEvent": _link("getEvent", "The first event of the batch", event_id="$response.body#/results/0/id"),
}
FROM_EVENTS = {
    "GetEvent": _link("getEvent", "The newest event", event_id="$response.body#/items/0/id"),
}
FROM_EVENT = {
    "GetDelivery": _link("getDelivery", "Its first delivery", delivery_id="$response.body#/deliveries/0/id"),
    "RetryDelivery": _link("retryDelivery", "Send it again", delivery_id="$response.body#/deliveries/0/id"),
    "AcknowledgeDelivery": _link(
        "acknowledgeDelivery", "Say it was seen", delivery_id="$response.body#/deliveries/0/id"
    ),
}
FROM_DELIVERIES = {
    "GetDelivery": _link("getDelivery", "The newest delivery", delivery_id="$response.body#/items/0/id"),
    "RetryDelivery": _link("retryDelivery", "Send it again", delivery_id="$response.body#/items/0/id"),
}
FROM_DELIVERY = {
    "GetDelivery": _link("getDelivery", "The delivery as it is now", delivery_id="$response.body#/id"),
    "RetryDelivery": _link("retryDelivery", "Send it again", delivery_id="$response.body#/id"),
    "AcknowledgeDelivery": _link("acknowledgeDelivery", "Say it was seen", delivery_id="$response.body#/id"),
    "GetEvent": _link("getEvent", "The event it belongs to", event_id="$response.body#/event_id"),
}
FROM_CREATED_KEY = {
    "RevokeKey": _link(
        "revokeKey",
        "Revoke the key just made",
        notebook_id="$response.body#/notebook_id",
        key_id="$response.body#/id",
    ),
    "ListKeys": _link("listKeys", "The notebook's keys", notebook_id="$response.body#/notebook_id"),
}
FROM_CLINIC_KEY = {
    "RevokeAnyKey": _link("revokeAnyKey", "Revoke the key just made", key_id="$response.body#/id"),
    "ListKeys": _link("listKeys", "The first notebook's keys", notebook_id="$response.body#/notebook_ids/0"),
}

_ENDPOINT = "$response.body#/id"

FROM_ENDPOINT_OUT = {
    "GetEndpoint": _link("getEndpoint", "The endpoint as it is now", endpoint_id=_ENDPOINT),
    "ListEndpointMessages": _link("listEndpointMessages", "Its messages, in order", endpoint_id=_ENDPOINT),
    "ListEndpointAttempts": _link("listEndpointAttempts", "Its attempt log", endpoint_id=_ENDPOINT),
    "ReplayEndpoint": _link("replayEndpoint", "Send its messages again", endpoint_id=_ENDPOINT),
}
FROM_ENDPOINT = {
    **FROM_ENDPOINT_OUT,
    "DeleteEndpoint": _link("deleteEndpoint", "Delete it", endpoint_id=_ENDPOINT),
}
_SOURCE = "$response.body#/id"
FROM_SOURCE = {
    "GetSource": _link("getSource", "The source just registered", source_id=_SOURCE),
    "RotateSourceSecret": _link("rotateSourceSecret", "Give it a new secret", source_id=_SOURCE),
    "UpdateSource": _link("updateSource", "Fix its name, notebook or mapping", source_id=_SOURCE),
    "ListInbound": _link("listInbound", "What it posted", source_id=_SOURCE),
    "ReceiveWebhook": _link("receiveWebhook", "Where it posts", source_id=_SOURCE),
}
FROM_SOURCES = {
    "GetSource": _link("getSource", "The first source", source_id="$response.body#/items/0/id"),
    "ListInbound": _link("listInbound", "What it posted", source_id="$response.body#/items/0/id"),
}
_CALDAV_NOTEBOOK = "$response.body#/notebook_id"
FROM_CALDAV = {
    "GetCaldavCalendar": _link("getCaldavCalendar", "The calendar as it is", notebook_id=_CALDAV_NOTEBOOK),
    "DeleteCaldavCalendar": _link("deleteCaldavCalendar", "Stop publishing", notebook_id=_CALDAV_NOTEBOOK),
}
FROM_CALENDAR_FEED = {
    "GetMember": _link("getMember", "The member, with the new URL", member_id="$response.body#/member_id"),
}
