"""The API's documentation is complete: every operation in ``/openapi.json`` has a summary, a
request schema where it takes a body, response schemas, examples and its error responses,
all generated from the code; ``/docs`` serves it; every example is valid for its model."""

from __future__ import annotations

import inspect
import re

import pytest
from pydantic import BaseModel

from careloop.db import upgrade
from careloop.service import schemas
from tests.conftest import build_app, make_settings

METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs")
    url = f"sqlite:///{tmp / 'docs.db'}"
    upgrade(url)
    app, _ = build_app(make_settings(url, tmp))
    client = app.test_client()
    spec = client.get("/openapi.json").get_json()
    yield client, spec
    app.extensions["careloop"].runtime.close()


def _operations(spec):
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield f"{method.upper()} {path}", item[method]


def _resolve(spec, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _has_example(spec, media: dict) -> bool:
    """An example on the media type, or on its schema (through references; a union has one when
    it or every branch has one)."""
    if "example" in media or "examples" in media:
        return True
    schema = _resolve(spec, media.get("schema") or {})
    if "example" in schema or "examples" in schema:
        return True
    branches = schema.get("oneOf") or schema.get("anyOf")
    return bool(branches) and all(_has_example(spec, {"schema": b}) for b in branches)


def test_every_operation_is_documented_with_summary_schemas_examples_and_errors(served):
    _, spec = served
    operations = dict(_operations(spec))
    assert len(operations) >= 15, sorted(operations)
    problems = []
    for name, op in operations.items():
        if not (op.get("summary") or "").strip():
            problems.append(f"{name}: no summary")
        if not op.get("operationId"):
            problems.append(f"{name}: no operationId")
        body = op.get("requestBody")
        if name.startswith(("POST", "PUT", "PATCH")) and body is not None:
            for kind, media in body["content"].items():
                if not media.get("schema"):
                    problems.append(f"{name}: request {kind} has no schema")
                elif not _has_example(spec, media):
                    problems.append(f"{name}: request {kind} has no example")
        responses = op.get("responses", {})
        successes = [code for code in responses if code.startswith("2")]
        errors = [code for code in responses if code[0] in "45"]
        if not successes:
            problems.append(f"{name}: no success response")
        if not errors:
            problems.append(f"{name}: no error response")
        for code, response in responses.items():
            if not response.get("description"):
                problems.append(f"{name} {code}: no description")
            content = response.get("content")
            if content is None:
                if code != "204":
                    problems.append(f"{name} {code}: no response schema")
                continue
            for kind, media in content.items():
                if not media.get("schema"):
                    problems.append(f"{name} {code}: {kind} has no schema")
                elif not _has_example(spec, media):
                    problems.append(f"{name} {code}: {kind} has no example")
        if op.get("security") and "401" not in responses:
            problems.append(f"{name}: authenticated, but 401 is not documented")
    assert problems == [], "\n".join(problems)


def test_every_example_is_valid_for_its_model():
    checked = 0
    for model in vars(schemas).values():
        if not (inspect.isclass(model) and issubclass(model, BaseModel)):
            continue
        for example in (model.model_config.get("json_schema_extra") or {}).get("examples", []):
            model.model_validate(example)
            checked += 1
    assert checked >= 20


def test_docs_serves_the_document_with_its_assets_from_this_server(served):
    client, _ = served
    page = client.get("/docs")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    html = page.text
    assert "/openapi.json" in html and "swagger" in html.lower()
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        assert asset in html
        assert client.get(asset).status_code == 200
    assert not re.findall(r'(?:src|href)="(?:https?:)?//', html)  # nothing loaded from a CDN
