"""The OpenAPI 3.1 document, generated from the route table and its pydantic models.

Request bodies, query parameters and responses are the JSON Schemas of the very models that
validate them, so the document cannot drift from the handlers. Every status a route can answer is
listed (schemathesis checks that no other comes back).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from aimctl.api.models import Error

if TYPE_CHECKING:
    from aimctl.api.app import Api, Route

REF = "#/components/schemas/{model}"
PARAM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")
    return f"{method.lower()}_{words or 'root'}"


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}}


class _Schemas:
    """Collects the models' ``$defs`` into ``components/schemas``."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def of(self, tp: Any, mode: str) -> dict[str, Any]:
        schema: dict[str, Any] = TypeAdapter(tp).json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
        for name, d in schema.pop("$defs", {}).items():
            self.components[name] = d
        title = schema.get("title")
        if isinstance(tp, type) and title and "properties" in schema:
            self.components[title] = schema
            return {"$ref": REF.format(model=title)}
        return schema


def _operation(r: Route, schemas: _Schemas) -> dict[str, Any]:
    if r.content_type != "application/json":
        ok: dict[str, Any] = {"schema": {"type": "string"}}
    elif r.response is not None:
        ok = {"schema": schemas.of(r.response, "serialization")}
    else:
        ok = {"schema": {}}
    responses: dict[str, Any] = {str(r.status): {"description": "OK", "content": {r.content_type: ok}}}
    responses["400"] = _error("Bad request: the one line names the field")
    responses["404"] = _error("Not found")
    op: dict[str, Any] = {"summary": r.summary, "operationId": _operation_id(r.method, r.path), "responses": responses}
    params: list[dict[str, Any]] = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string", "pattern": PARAM_PATTERN}}
        for p in r.params]
    if r.query is not None:
        q = r.query.model_json_schema(ref_template=REF)
        required = set(q.get("required", []))
        for name, prop in q.get("properties", {}).items():
            params.append({"name": name, "in": "query", "required": name in required, "schema": prop})
    if params:
        op["parameters"] = params
    if r.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schemas.of(r.body, "validation")}}}
    if r.method != "GET":
        responses["409"] = _error("Conflict: another operation holds the persona or server")
        responses["413"] = _error("Request body too large")
        responses["503"] = _error("Refused: this controller does not take changes now (not the leader)")
    if r.role is None:
        op["security"] = []
    else:
        op["security"] = [{"bearerAuth": []}]
        op["x-aimctl-role"] = r.role
        if r.scope is not None:
            op["x-aimctl-scope"] = "pool"
        responses["401"] = _error("Missing or invalid token")
        responses["403"] = _error(f"Token role below {r.role} (in the pool the call acts on)")
    return op


def openapi(api: Api) -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for r in api.routes:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r, schemas)
    schemas.components["Error"] = Error.model_json_schema()
    return {
        "openapi": "3.1.0",
        "info": {"title": api.title, "version": api.version,
                 "description": "Roles: viewer < operator < admin, possibly per pool; each operation names its"
                                " minimum in x-aimctl-role, and x-aimctl-scope says the role is taken in the pool"
                                " the call acts on."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": dict(sorted(schemas.components.items())),
        },
        "security": [{"bearerAuth": []}],
    }
