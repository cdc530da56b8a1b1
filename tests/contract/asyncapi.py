"""Validation against the official AsyncAPI 3.0.0 schema, and of messages against a document.

Shared by the unit tests (the document itself) and the integration test (what the service really
sends and takes, checked against the document's schemas)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

SCHEMA = Path(__file__).with_name("asyncapi-3.0.0.schema.json")
DOCUMENT_URI = "urn:test:asyncapi-document"


@cache
def _asyncapi_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA.read_text())
    return schema


def asyncapi_errors(document: dict[str, Any]) -> list[str]:
    """What is wrong with ``document`` as AsyncAPI 3.0.0: one line per error, none if valid."""
    validator = jsonschema.Draft7Validator(_asyncapi_schema())
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message[:300]}"
        for error in validator.iter_errors(document)
    ]


def validator(document: dict[str, Any], *pointer: str) -> jsonschema.Draft7Validator:
    """A validator for the schema at ``pointer`` inside ``document`` (a message's payload or
    headers), its ``#/components/schemas/...`` references resolved in the document itself. Draft 7:
    an AsyncAPI 3.0.0 schema object is a superset of JSON Schema draft 07."""
    registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, Resource(document, DRAFT7))
    escaped = "/".join(p.replace("~", "~0").replace("/", "~1") for p in pointer)
    return jsonschema.Draft7Validator({"$ref": f"{DOCUMENT_URI}#/{escaped}"}, registry=registry)


def message_errors(document: dict[str, Any], type_name: str, part: str, value: Any) -> list[str]:
    """What is wrong with a message's ``payload`` or ``headers`` against the document's message of
    ``type_name``."""
    found = validator(document, "components", "messages", type_name, part).iter_errors(value)
    return [f"{type_name} {part}: {error.message[:300]}" for error in found]
