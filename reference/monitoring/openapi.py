"""The monitoring app's OpenAPI 3.0 document: what it accepts and every answer it gives,
refusals included, so a schema-driven fuzzer (schemathesis) can hold it to them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}
# refusals a POST can get before or while its body is read, or when the body is wrong
POST_REFUSALS = {
    "400": "Malformed body: not JSON, NaN/Infinity, nested too deeply, fields missing, of the wrong type or "
           "out of range; or a Content-Length that is not a non-negative integer, or a body shorter than it.",
    "409": "The id was already predicted (/predict), or already has a different label (/label).",
    "408": "The request (headers and body) did not arrive within the read timeout.",
    "411": "No Content-Length, or a chunked Transfer-Encoding (bodies must declare their length).",
    "413": "Content-Length above the body limit; the body is not read.",
    "415": "Content-Type is not application/json.",
}
COMMON_REFUSALS = {
    "404": "Any path not listed in `paths`.",
    "405": "A method the path does not serve; the `Allow` header lists the ones it does.",
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _refusals(answers: dict[str, str]) -> dict[str, Any]:
    return {status: {"description": text, "content": _json(ERROR)} for status, text in answers.items()}


def _post(summary: str, request: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    return {"post": {"summary": summary, "requestBody": {"required": True, "content": _json(request)},
                     "responses": {"200": {"description": "Done.", "content": _json(answer)},
                                   **_refusals(POST_REFUSALS)}}}


def openapi_document(features: int, classes: Sequence[str], max_body_bytes: int, read_timeout_s: float,
                     feature_limit: float) -> dict[str, Any]:
    identifier = {"type": "string", "description": "The caller's prediction id, unique per prediction."}
    return {
        "openapi": "3.0.3",
        "info": {"title": "mlsuite monitoring app", "version": "1",
                 "description": f"Instrumented wine classifier. Request bodies are at most {max_body_bytes} bytes "
                                f"and must arrive within {read_timeout_s:g} s."},
        "paths": {
            "/predict": _post("Classify one row of wine features.", {
                "type": "object", "required": ["id", "features"],
                "properties": {"id": identifier, "features": {"type": "array", "minItems": features,
                                                              "maxItems": features,
                                                              "items": {"type": "number", "minimum": -feature_limit,
                                                                        "maximum": feature_limit}}},
            }, {
                "type": "object", "required": ["id", "predicted_class", "confidence"],
                "properties": {"id": {"type": "string"}, "predicted_class": {"type": "string", "enum": list(classes)},
                               "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
            }),
            "/label": _post("Deliver the true class of a prediction (before or after it is served).", {
                "type": "object", "required": ["id", "label"],
                "properties": {"id": identifier, "label": {"type": "string", "enum": list(classes)}},
            }, {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}),
            "/metrics": {"get": {"summary": "Prometheus text exposition.", "responses": {"200": {
                "description": "Metrics.",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document.", "responses": {"200": {
                "description": "The OpenAPI document.", "content": _json({"type": "object"})}}}},
        },
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error"],
                                  "properties": {"error": {"type": "string"}}}},
            "responses": {"NotFound": {"description": COMMON_REFUSALS["404"], "content": _json(ERROR)},
                          "MethodNotAllowed": {"description": COMMON_REFUSALS["405"], "content": _json(ERROR)}},
        },
    }
