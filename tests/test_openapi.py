"""/openapi.json: a valid OpenAPI 3.1 document covering every route, with request and error schemas."""

from __future__ import annotations

import re
from typing import Any

from openapi_spec_validator import validate
from starlette.routing import Mount, Route

from gateway.edge.routes import OPEN, ROUTES
from tests.harness import RunningGateway


def documented_path(path: str) -> str:
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def route_operations() -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for route in ROUTES:
        if isinstance(route, Mount):
            out.add((route.path + "/{file}", "get"))
            continue
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                out.add((documented_path(route.path), method.lower()))
    return out


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_the_served_document_is_valid_and_covers_every_route(gateway: RunningGateway) -> None:
    with gateway.client() as c:  # an open route
        r = c.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    validate(doc)
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    missing = route_operations() - documented
    assert not missing, f"routes missing from gateway/edge/openapi.py: {sorted(missing)}"
    stale = documented - route_operations()
    assert not stale, f"documented operations with no route: {sorted(stale)}"
    # Every $ref points at something that exists.
    for target in refs(doc):
        node: Any = doc
        for part in target.removeprefix("#/").split("/"):
            node = node[part]


def test_operations_document_errors_bodies_and_auth(gateway: RunningGateway) -> None:
    with gateway.client() as c:
        doc = c.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/Error"}
    anthropic = {"$ref": "#/components/schemas/AnthropicError"}  # the Messages routes' shape
    for name, response in doc["components"]["responses"].items():
        schema = response["content"]["application/json"]["schema"]
        assert schema == (anthropic if name.startswith("A") else error), name
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        refs = doc["paths"][path]["post"]["responses"]
        assert all(r["$ref"].rsplit("/", 1)[1].startswith("A")
                   for code, r in refs.items() if code != "200"), path
    open_paths = {documented_path(p) for p in OPEN} | {"/dashboard/static/{file}"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = {int(c) for c in op["responses"]}
            assert any(400 <= c < 600 for c in codes), f"{method} {path} documents no error"
            if method in ("post", "put", "patch") and path not in ("/dashboard/logout",) \
                    and not path.endswith(("/suspend", "/resume")):
                assert "requestBody" in op, f"{method} {path} has no request schema"
            if path in open_paths:
                assert op["security"] == [], f"{method} {path} is open"
            else:
                assert op["security"], f"{method} {path} needs auth"
                assert 401 in codes and 403 in codes
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "402", "403", "429", "502", "503", "504"} <= set(chat)
    assert doc["paths"]["/v1/usage"]["get"]["security"] == [{"workspaceKey": []},
                                                           {"dashboardSession": []}]
