"""What Stalwart's own serde types accept as a hook response (wire reference §4).

An independent re-statement of Stalwart's parsing rules, used to check every answer the
service gives: lowercase action from the four, integer status, string `enhanced_status`,
boolean `disconnect` (null is an error), `modifications` a list of known types with
well-typed fields (an unknown type fails the whole response).
"""

from __future__ import annotations

import json
from typing import Any

ACTIONS = {"accept", "discard", "reject", "quarantine"}
MODIFICATION_FIELDS: dict[str, dict[str, str]] = {
    "changeFrom": {"value": "str", "parameters": "params?"},
    "addRecipient": {"value": "str", "parameters": "params?"},
    "deleteRecipient": {"value": "str"},
    "replaceContents": {"value": "str"},
    "addHeader": {"name": "str", "value": "str"},
    "insertHeader": {"index": "u32", "name": "str", "value": "str"},
    "changeHeader": {"index": "u32", "name": "str", "value": "str"},
    "deleteHeader": {"index": "u32", "name": "str"},
}


def _is_int(value: Any, bits: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**bits


def stalwart_parse_problems(body: bytes) -> list[str]:
    """Every reason Stalwart would fail to parse this body (empty list: it parses)."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        return [f"not JSON: {exc}"]
    if not isinstance(data, dict):
        return ["not an object"]
    problems = []
    if data.get("action") not in ACTIONS:
        problems.append(f"action {data.get('action')!r} is not one of {sorted(ACTIONS)}")
    response = data.get("response")
    if response is not None:
        if not isinstance(response, dict):
            problems.append("response is not an object")
        else:
            status = response.get("status")
            if status is not None and not _is_int(status, 16):
                problems.append(f"status {status!r} is not a u16")
            for key in ("enhanced_status", "message"):
                if response.get(key) is not None and not isinstance(response[key], str):
                    problems.append(f"{key} is not a string")
            if "disconnect" in response and not isinstance(response["disconnect"], bool):
                problems.append("disconnect is not a boolean")
    if "modifications" in data:
        mods = data["modifications"]
        if not isinstance(mods, list):
            problems.append("modifications is not a list")
        else:
            for i, mod in enumerate(mods):
                problems.extend(f"modifications[{i}]: {p}" for p in _modification(mod))
    return problems


def _modification(mod: Any) -> list[str]:
    if not isinstance(mod, dict):
        return ["not an object"]
    spec = MODIFICATION_FIELDS.get(mod.get("type"))
    if spec is None:
        return [f"unknown type {mod.get('type')!r}"]
    problems = []
    for key, kind in spec.items():
        if kind == "params?":
            if key not in mod:
                continue
            params = mod[key]
            if not isinstance(params, dict) or not all(
                    isinstance(v, str | type(None)) for v in params.values()):
                problems.append(f"{key} must be a map of strings")
        elif key not in mod:
            problems.append(f"missing {key}")
        elif kind == "str" and not isinstance(mod[key], str):
            problems.append(f"{key} is not a string")
        elif kind == "u32" and not _is_int(mod[key], 32):
            problems.append(f"{key} is not a u32")
    return problems
