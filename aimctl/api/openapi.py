"""OpenAPI 3.1 document generated from the routes the controller registered."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aimctl.api.app import Api

ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def _operation_id(method: str, pattern: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", pattern).strip("_")
    return f"{method.lower()}_{words or 'root'}"


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi(api: Api) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in api.routes:
        default: dict[str, Any] = {} if r.content_type == "application/json" else {"type": "string"}
        schema = dict(r.response_schema) if r.response_schema is not None else default
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": _operation_id(r.method, r.pattern),
            "responses": {
                "200": {"description": "OK", "content": {r.content_type: {"schema": schema}}},
                "400": _error("Bad request"),
                "404": _error("Not found"),
            },
        }
        if r.params:
            op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                                for p in r.params]
        if r.request_schema is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": dict(r.request_schema)}}}
        if r.role is None:
            op["security"] = []
        else:
            op["security"] = [{"bearerAuth": []}]
            op["x-aimctl-role"] = r.role
            op["responses"]["401"] = _error("Missing or invalid token")
            op["responses"]["403"] = _error(f"Token role below {r.role}")
        paths.setdefault(r.pattern, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": api.title, "version": api.version,
                 "description": "Roles: viewer < operator < admin; each operation names its minimum in x-aimctl-role."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR_SCHEMA},
        },
        "security": [{"bearerAuth": []}],
    }
