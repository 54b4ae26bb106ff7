"""The SpacetimeDB side of `db schema`, `db export` and `check --directory`.

The token comes from `KOMM_SPACETIMEDB_TOKEN_FILE` or `KOMM_SPACETIMEDB_TOKEN`, never from
the command line (other users can read it there).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TextIO

import msgspec

from ..config_tokens import token_text_problem
from ..directory.schema import BadValue, Schema, SchemaError, dump_schema, find_schema, load_schema
from ..spacetimedb.http import Endpoint, SpacetimeError, SpacetimeHttp
from ..spacetimedb.tools import check_directory, export_tables, schema_of
from ..textfile import NotUtf8Error, read_utf8


def token_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """`KOMM_SPACETIMEDB_TOKEN_FILE` (its content, stripped) or `KOMM_SPACETIMEDB_TOKEN`.
    Raises `OSError` when the file cannot be read or is empty (an empty token would
    silently connect anonymously)."""
    env = os.environ if env is None else env
    path = env.get("KOMM_SPACETIMEDB_TOKEN_FILE")
    if path:
        if "KOMM_SPACETIMEDB_TOKEN" in env:
            raise OSError("KOMM_SPACETIMEDB_TOKEN and KOMM_SPACETIMEDB_TOKEN_FILE are both "
                          "set: set one (which token is meant is not guessed)")
        try:
            token = read_utf8(path).strip()
        except NotUtf8Error as exc:
            raise OSError(f"KOMM_SPACETIMEDB_TOKEN_FILE: {exc}") from None
        problem = token_text_problem(token)
        if problem is not None:
            raise OSError(f"KOMM_SPACETIMEDB_TOKEN_FILE: token file {path} {problem}")
        return token
    return env.get("KOMM_SPACETIMEDB_TOKEN") or None


def is_spacetimedb(url: str | None) -> bool:
    return bool(url) and url.startswith("spacetimedb")  # type: ignore[union-attr]


def _client(command: str, url: str) -> SpacetimeHttp | None:
    try:
        return SpacetimeHttp(Endpoint.parse(url), token_from_env())
    except (ValueError, OSError) as exc:
        print(f"komm-policy {command}: {exc}", file=sys.stderr)
        return None


def db_schema(url: str, out: TextIO) -> int:
    """Print the schema file for the module's user tables."""
    http = _client("db schema", url)
    if http is None:
        return 2
    try:
        with http:
            schema = schema_of(http.schema(), source=str(http.endpoint))
    except SpacetimeError as exc:
        print(f"komm-policy db schema: {exc}", file=sys.stderr)
        return 2
    out.write(dump_schema(schema, header=(
        f"Schema of {http.endpoint}, written by `komm-policy db schema`.\n"
        "Refine meanings (text -> address, network, enum) for the policies; columns of\n"
        "type \"unsupported\" have no meaning a lookup can use.")))
    return 0


def db_export(url: str, tables: Iterable[str] | None, schema_path: str | None,
              out: TextIO) -> int:
    """Print the rows of `tables` (default: every user table) as JSON.  Rows that do not
    decode or fit the schema are left out, each reported on stderr (table, row number,
    reason), and the exit status is 1; the JSON holds every good row."""
    http = _client("db export", url)
    if http is None:
        return 2
    try:
        with http:
            module = http.schema()
            names = list(tables) if tables else sorted(
                n for n, t in module.tables.items() if t.table_type == "user")
            unknown = [n for n in names if n not in module.tables]
            if unknown:
                print(f"komm-policy db export: {http.endpoint} has no table {unknown[0]!r}",
                      file=sys.stderr)
                return 1
            schema = load_schema(schema_path) if schema_path else Schema({})
            derived = schema_of(module, names)
            merged = Schema({n: schema.tables.get(n) or derived.tables[n] for n in names})
            bad: list[str] = []
            rows = export_tables(http, merged, names, bad)
    except (SpacetimeError, SchemaError, OSError) as exc:
        print(f"komm-policy db export: {exc}", file=sys.stderr)
        return 2
    except BadValue as exc:
        print(f"komm-policy db export: {exc}", file=sys.stderr)
        return 1
    out.write(msgspec.json.format(msgspec.json.encode(rows)).decode() + "\n")
    for problem in bad:
        print(f"komm-policy db export: skipped {problem}", file=sys.stderr)
    if bad:
        print(f"komm-policy db export: {len(bad)} rows skipped, the others exported",
              file=sys.stderr)
    return 1 if bad else 0


def check_against(url: str, policy_path: Path, policy_set: object, out: TextIO, *,
                  strict: bool = False) -> int:
    """Check the module behind `url` against what `policy_set` reads (its tables); 0 ok,
    1 problems (or warnings with `strict`), 2 unreachable.  Prints one line per problem
    or warning."""
    http = _client("check", url)
    if http is None:
        return 2
    needs = getattr(policy_set, "needs", None)
    schema = getattr(policy_set, "schema", None)
    try:
        if schema is None:
            found = find_schema(policy_path)
            schema = load_schema(found) if found is not None else None
        with http:
            tables = set(needs.tables) if needs else set()
            result = check_directory(http, schema, sorted(tables))
    except (SpacetimeError, SchemaError, OSError) as exc:
        print(f"{policy_path}: {exc}", file=out)
        return 2
    for problem in result.problems:
        print(f"{policy_path}: error: {problem}", file=out)
    for warning in result.warnings:
        print(f"{policy_path}: warning: {warning}", file=out)
    if result.ok:
        print(f"{policy_path}: SpacetimeDB {http.endpoint} has what the policies read "
              f"({', '.join(sorted(tables)) or 'no tables'})", file=out)
    return 1 if result.problems or (strict and result.warnings) else 0
