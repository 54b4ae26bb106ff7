"""Reading a policy test file (`*.test.toml`) into cases.

The format (docs/tooling.md, "Test files"):

    [request]                      # optional: fields every case starts from
    stage = "rcpt"

    [[rows.mailing_lists]]         # optional: rows every case sees
    id = 1
    name = "Info"
    email_address = "info@solawi.example"

    [[case]]
    name = "a list nobody may post to"
    fixture = "fixtures/derived-rcpt-3.json"   # optional, relative to this file
    payload = { ... }              # optional: a Stalwart payload inline
    request = { sender = "anna@example.org", rcpt = "nobody@solawi.example" }
    rows = { members = [ { id = 1, ... } ] }           # added to the file's rows
    expect = { action = "reject", status = 550, enhanced = "5.1.1", rule = "unknown_list" }

A problem with the file as a whole (TOML syntax, an unknown key) is a `SpecError` naming
the file and line; a problem with one case (its request, rows or expectation) is kept on
that case, so the other cases still run.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ..directory import Directory
from ..directory.schema import Schema
from ..textfile import loads_toml
from ..tomlpos import KeyPositions
from ..wire import AnyModification, Request
from .requests import CaseRequestError, build_request, flatten
from .tables import RowError, UnavailableDirectory, build_directory, check_rows

FILE_SUFFIX = ".test.toml"
ACTIONS = ("accept", "reject", "tempfail", "discard", "quarantine")

_FILE_KEYS = ("request", "rows", "case")
_CASE_KEYS = ("name", "description", "fixture", "payload", "request", "rows",
              "directory_unavailable", "expect")
EXPECT_KEYS = ("action", "status", "enhanced", "message", "message_matches", "rule",
               "modifications", "fallback", "logs", "dry_run")
_EXPECT_TYPES: dict[str, type | tuple[type, ...]] = {
    "action": str, "status": int, "enhanced": str, "message": str, "message_matches": str,
    "rule": str, "modifications": list, "fallback": bool, "logs": list, "dry_run": list,
}
_CASE_HEADER = re.compile(r"^\s*\[\[\s*case\s*\]\]")


class SpecError(ValueError):
    """A test file that cannot be read as tests: `file:line: message`."""

    def __init__(self, file: str, line: int | None, message: str,
                 column: int | None = None) -> None:
        where = f"{file}:{line}:{column}" if line and column else (
            f"{file}:{line}" if line else file)
        super().__init__(f"{where}: {message}")
        self.file = file
        self.line = line
        self.column = column
        self.message = message


@dataclass(slots=True)
class Case:
    """One test case, ready to run (or with `error` set when it cannot be)."""

    file: str
    index: int
    line: int
    name: str
    expect: dict[str, Any] = field(default_factory=dict)
    request: Request | None = None
    directory: Directory | None = None
    error: str | None = None
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Where `expect.rule` and `expect.dry_run` are written (line, column), for an error
    naming an unknown rule."""

    @property
    def title(self) -> str:
        return f"{self.file}:{self.line}: {self.name}"


def _unknown(keys: Mapping[str, Any], allowed: tuple[str, ...], what: str) -> str | None:
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            return f"unknown key `{key}` in {what}{hint} (keys: {', '.join(allowed)})"
    return None


def load_file(path: Path, schema: Schema | None = None) -> list[Case]:
    """The cases of one test file, rows checked against `schema` (the schema file beside
    the policies, when there is one) and the helpers' tables.  Raises SpecError
    (file-level problems) or OSError."""
    name = str(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")  # editors may write a BOM
        document = loads_toml(text)
    except UnicodeDecodeError:
        raise SpecError(name, None, "file is not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = int(match.group(1)) if match else None
        raise SpecError(name, line, f"TOML syntax: {str(exc).split(' (at line')[0]}"
                        ) from None
    problem = _unknown(document, _FILE_KEYS, "the file")
    if problem:
        raise SpecError(name, None, problem)
    cases = document.get("case", [])
    if not isinstance(cases, list) or (cases and not isinstance(cases[0], Mapping)):
        line, column = KeyPositions(text).find(("case",))
        shown = cases[0] if isinstance(cases, list) else cases
        raise SpecError(name, line, "`case` must be an array of tables, each written "
                        f"`[[case]]` (or `case = [{{ … }}]`), not {_toml_kind(shown)}",
                        column)
    if not cases:
        raise SpecError(name, None, "no cases: write each as a [[case]] table")
    lines = [i for i, line in enumerate(text.splitlines(), 1) if _CASE_HEADER.match(line)]
    positions = KeyPositions(text)
    base_fields = document.get("request", {})
    try:
        base_rows = check_rows(document.get("rows", {}), schema)
    except RowError as exc:
        first = positions.find(("rows", *exc.problems[0][0]))
        raise SpecError(name, first[0] or None, "rows: " + exc.located(
            lambda key: positions.find(("rows", *key))), first[1] or None) from None
    shared_directory = build_directory(base_rows)
    result = []
    for index, raw in enumerate(cases):
        line = lines[index] if index < len(lines) else 0
        case = Case(name, index + 1, line, f"case {index + 1}")
        case.positions = {key: positions.find(("case", index, "expect", key))
                          for key in ("rule", "dry_run")}
        if isinstance(raw, Mapping):
            case.name = str(raw.get("name", case.name))
            _prepare(case, raw, path, base_fields, base_rows, shared_directory, schema,
                     positions)
        else:
            case.error = "a case must be a table"
        result.append(case)
    return result


def _prepare(case: Case, raw: Mapping[str, Any], path: Path, base_fields: Any,
             base_rows: dict[str, list], shared_directory: Directory,
             schema: Schema | None, positions: KeyPositions) -> None:
    problem = _unknown(raw, _CASE_KEYS, "a case")
    if problem:
        case.error = problem
        return
    try:
        case.expect = _expectation(raw.get("expect"))
        base = _base_payload(raw, path)
        # merged field by field: `client.helo` in a case keeps the file's `client.ip`
        fields = {**flatten(_mapping(base_fields, "request")),
                  **flatten(_mapping(raw.get("request", {}), "request"))}
        if base is None and "stage" not in fields:
            raise CaseRequestError("no stage: set `stage` in `request`, or give a fixture "
                                   "or payload")
        case.request = build_request(base, fields)
        unavailable = raw.get("directory_unavailable", False)
        if not isinstance(unavailable, bool):
            raise ValueError("`directory_unavailable` must be true or false")
        if unavailable:
            if "rows" in raw:
                raise ValueError("a case with `directory_unavailable = true` has no rows")
            case.directory = UnavailableDirectory()  # type: ignore[assignment]
        elif "rows" in raw:
            try:
                rows = check_rows(raw["rows"], schema)
            except RowError as exc:
                at = ("case", case.index - 1, "rows")
                raise ValueError(exc.located(lambda key: positions.find((*at, *key)))
                                 ) from None
            merged = {t: [*base_rows.get(t, []), *rows.get(t, [])]
                      for t in {*base_rows, *rows}}
            case.directory = build_directory(merged)
        else:
            case.directory = shared_directory
    except (CaseRequestError, RowError, ValueError) as exc:
        case.error = str(exc)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"`{what}` must be a table")
    return value


def _base_payload(raw: Mapping[str, Any], path: Path) -> dict | None:
    if "fixture" in raw and "payload" in raw:
        raise ValueError("give either `fixture` or `payload`, not both")
    if "payload" in raw:
        return dict(_mapping(raw["payload"], "payload"))
    if "fixture" in raw:
        fixture = path.parent / str(raw["fixture"])
        try:
            payload = json.loads(fixture.read_bytes())
        except OSError as exc:
            raise ValueError(f"fixture {fixture}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ValueError(f"fixture {fixture}: not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ValueError(f"fixture {fixture}: not a JSON object")
        return payload
    return None


def _expectation(value: Any) -> dict[str, Any]:
    if value is None:
        raise ValueError("no `expect`: say at least the expected `action`")
    expect = dict(_mapping(value, "expect"))
    problem = _unknown(expect, EXPECT_KEYS, "`expect`")
    if problem:
        raise ValueError(problem)
    if not expect:
        raise ValueError("`expect` is empty: say at least the expected `action`")
    for key, wanted in _EXPECT_TYPES.items():
        if key in expect and (not isinstance(expect[key], wanted)
                              or (wanted is int and isinstance(expect[key], bool))):
            raise ValueError(f"`expect.{key}` must be {_type_name(wanted)}")
    if "action" in expect and expect["action"] not in ACTIONS:
        raise ValueError(f"`expect.action` must be one of {', '.join(ACTIONS)}")
    if "message_matches" in expect:
        try:
            expect["message_matches"] = re.compile(expect["message_matches"])
        except re.error as exc:
            raise ValueError(f"`expect.message_matches`: invalid regex: {exc}") from None
    if "modifications" in expect:
        try:
            msgspec.convert(expect["modifications"], list[AnyModification])
        except msgspec.ValidationError as exc:
            raise ValueError(f"`expect.modifications`: {exc} (each is a table with "
                             "`type` and the fields Stalwart uses, e.g. { type = "
                             "\"addHeader\", name = \"X-A\", value = \"1\" })") from None
    return expect


def _toml_kind(value: Any) -> str:
    """How TOML calls a parsed value: `an integer`, `a string`, …"""
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
             (list, "an array"), (Mapping, "a table"))
    return next((f"{kind} ({value!r})" if kind not in ("an array", "a table") else kind
                 for cls, kind in kinds if isinstance(value, cls)), "a date or time")


def _type_name(wanted: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "an array"}
    return names.get(wanted, str(wanted))  # type: ignore[call-overload]
