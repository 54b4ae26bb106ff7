"""`komm-policy db init|schema|export|import|delete`: the embedded SQLite store, any table.

`schema` prints the store's tables as a schema file (keeping the meanings of an existing
one for the columns it still has); `export`/`import` move rows of any table as JSON (the
format is in `directory/transfer.py` and the README); `delete TABLE KEY…` removes rows by
primary key.  `import` and `delete` validate everything first and write nothing on error.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import ConfigError, load_config
from ..demo import DEMO_TABLES
from ..directory.schema import (
    Schema,
    SchemaError,
    Table,
    dump_schema,
    find_schema,
    load_schema,
)
from ..directory.sqlite import connect, create_database, init_schema
from ..directory.sqlite_tables import read_schema
from ..directory.transfer import (
    TransferError,
    export_tables,
    import_tables,
    undescribed_tables,
)
from ..directory.transfer_delete import delete_rows
from . import os_error_text, read_input, spacetimedb

DEFAULT_PATH = "var/komm.sqlite3"
DEFAULT_SCHEMA = "policies/schema.toml"
"""Where the schema file is without --schema, --policies or a configured policy directory
(the service's default policy directory, `policies`, with its `schema.toml`)."""


def register(sub: Any) -> None:
    parser = sub.add_parser("db", help="create, describe, export, import or edit the store",
                            description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="db_command", required=True)
    init = actions.add_parser("init", help="create the tables (idempotent)")
    _store_arguments(init)
    init.add_argument("--demo", action="store_true",
                      help="also insert the demo data that exercises every shipped rule")
    init.set_defaults(run=run_init)
    schema = actions.add_parser("schema", help="print the tables as a schema file (TOML)")
    schema.add_argument("tables", nargs="*", help="only these tables")
    _store_arguments(schema, "keep the meanings this schema file gives", spacetimedb=True)
    schema.set_defaults(run=run_schema)
    export = actions.add_parser("export", help="print tables as JSON")
    export.add_argument("tables", nargs="*", help="only these tables (default: all)")
    _store_arguments(export, "shape values by this schema file (bools, lists)",
                     spacetimedb=True)
    export.set_defaults(run=run_export)
    load = actions.add_parser("import", help="validate, then insert or replace rows")
    load.add_argument("file", help="JSON as written by `db export` ('-' for stdin)")
    _store_arguments(load, "validate by this schema file")
    load.add_argument("--storage-types-only", action="store_true",
                      help="accept that no schema file describes some tables: check their "
                           "rows against the store's declared types only (no notice)")
    load.set_defaults(run=run_import)
    delete = actions.add_parser("delete", help="delete rows by primary key")
    delete.add_argument("table", help="the table")
    delete.add_argument("keys", nargs="+", metavar="KEY",
                        help="primary-key values (rowid when the table declares none)")
    _store_arguments(delete, "match keys by value (networks, identities, addresses) by this "
                             "schema file")
    delete.set_defaults(run=run_delete)


def _store_arguments(parser: argparse.ArgumentParser, schema_help: str | None = None, *,
                     spacetimedb: bool = False) -> None:
    """The options naming the store every `db` action reads: `--path`, and `--schema`
    (with what this action uses it for) and `--directory` where the action takes them."""
    parser.add_argument("--path", default=DEFAULT_PATH, help=f"database file ({DEFAULT_PATH})")
    if schema_help is not None:
        parser.add_argument("--schema", metavar="FILE",
                            help=f"{schema_help} (default: schema.toml in the policy directory)")
        parser.add_argument("--policies", metavar="DIR",
                            help="the policy directory whose schema.toml to use, as `check` "
                                 "and `serve` find it (default: [policies] path of --config "
                                 "or KOMM_CONFIG, KOMM_POLICIES, else policies)")
        parser.add_argument("--config", metavar="FILE",
                            help="komm.toml naming the policy directory (or KOMM_CONFIG)")
    if spacetimedb:
        parser.add_argument("--directory", metavar="URL",
                            help="read a SpacetimeDB database (spacetimedb://HOST:PORT/DB) "
                                 "instead of the SQLite file (token: "
                                 "KOMM_SPACETIMEDB_TOKEN_FILE or KOMM_SPACETIMEDB_TOKEN)")


def schema_path(args: argparse.Namespace, command: str) -> tuple[Path | None, str]:
    """The schema file a `db` command uses, and where it looked: `--schema FILE`; else
    `schema.toml` in the policy directory (`--policies DIR`, else the configured one as
    `serve` reads it: --config/KOMM_CONFIG `[policies] path`, KOMM_POLICIES, `policies`).
    Exits 2 when the configuration is broken."""
    if args.schema:
        return Path(args.schema), args.schema
    policies = args.policies
    if policies is None:
        try:
            policies = load_config(args.config, only=()).policies
        except ConfigError as exc:
            raise SystemExit(_fail(command, str(exc), 2)) from exc
    return find_schema(policies), str(Path(policies) / "schema.toml")


def _schema(args: argparse.Namespace, command: str) -> Schema | None:
    """The schema file `schema_path` names (None: there is none)."""
    path, _where = schema_path(args, command)
    if path is None:
        return None
    try:
        return load_schema(path)
    except OSError as exc:
        raise SystemExit(_fail(command, os_error_text(exc, path), 2)) from exc
    except SchemaError as exc:
        raise SystemExit(_fail(command, str(exc), 2)) from exc


def _fail(command: str, message: str, code: int) -> int:
    print(f"komm-policy db {command}: {message}", file=sys.stderr)
    return code


def _open(args: argparse.Namespace, command: str) -> sqlite3.Connection | int:
    """The store at `--path`, proved to be a SQLite database by reading its catalogue,
    or the exit code after saying why not (2: missing, a directory, not a database,
    unreadable), as `serve` and `eval` refuse such a store."""
    path = Path(args.path)
    if path.is_dir():
        return _fail(command, f"{args.path}: is a directory, not a database file", 2)
    if not path.exists():
        return _fail(command, f"{args.path}: no such database", 2)
    try:
        conn = connect(args.path, create=False)
    except sqlite3.DatabaseError as exc:
        return _fail(command, store_error_text(args.path, exc), 2)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        return _fail(command, store_error_text(args.path, exc), 2)
    return conn


def store_error_text(path: str, exc: sqlite3.DatabaseError) -> str:
    """`PATH: cannot use it as a SQLite database: REASON` for an error opening a store."""
    return f"{path}: cannot use it as a SQLite database: {exc}"


def run_init(args: argparse.Namespace) -> int:
    try:
        if Path(args.path).is_dir():
            return _fail("init", f"{args.path}: is a directory, not a database file", 2)
        create_database(args.path, DEMO_TABLES if args.demo else None)
    except OSError as exc:
        return _fail("init", os_error_text(exc, args.path), 2)
    except sqlite3.DatabaseError as exc:  # opening or creating the file, not a query of ours
        return _fail("init", store_error_text(args.path, exc), 2)
    print(f"{args.path}: schema ready{' with demo data' if args.demo else ''}")
    return 0


def run_schema(args: argparse.Namespace) -> int:
    if spacetimedb.is_spacetimedb(args.directory):
        return spacetimedb.db_schema(args.directory, sys.stdout)
    conn = _open(args, "schema")
    if isinstance(conn, int):
        return conn
    try:
        stored = read_schema(conn, args.tables or None)
    finally:
        conn.close()
    missing = [t for t in args.tables if t not in stored.tables]
    if missing:
        return _fail("schema", f"no table {missing[0]!r} in {args.path}", 1)
    known = _schema(args, "schema")
    tables = {}
    for name, table in stored.tables.items():
        annotated = known.tables.get(name) if known is not None else None
        columns = tuple(
            replace(annotated.by_name[c.name], storage=c.storage)
            if annotated is not None and c.name in annotated.by_name else c
            for c in table.columns)
        tables[name] = Table(name, columns, table.primary_key)
    header = (f"komm-policy db schema of {args.path}: what each column means.  Types from "
              "the store are\ninteger, text, float, bool; annotate address, network, enum "
              "(variants), identity,\ntimestamp, list.  See \"The schema file\" in "
              "docs/language.md.")
    sys.stdout.write(dump_schema(Schema(tables), header))
    return 0


def run_export(args: argparse.Namespace) -> int:
    if spacetimedb.is_spacetimedb(args.directory):
        path, _where = schema_path(args, "export")
        return spacetimedb.db_export(args.directory, args.tables,
                                     str(path) if path is not None else None, sys.stdout)
    conn = _open(args, "export")
    if isinstance(conn, int):
        return conn
    bad: list[str] = []
    try:
        data = export_tables(conn, args.tables or None, _schema(args, "export"), bad)
    except TransferError as exc:
        return _fail("export", str(exc), 1)
    finally:
        conn.close()
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    # As the SpacetimeDB export: the good rows are written, each bad one named, exit 1.
    for problem in bad:
        print(f"komm-policy db export: skipped {problem}", file=sys.stderr)
    if bad:
        print(f"komm-policy db export: {len(bad)} rows skipped (`db import` would refuse "
              "them), the others exported", file=sys.stderr)
    return 1 if bad else 0


def run_import(args: argparse.Namespace) -> int:
    try:
        data = json.loads(read_input(args.file))
    except OSError as exc:
        return _fail("import", os_error_text(exc, args.file), 2)
    except ValueError as exc:
        return _fail("import", f"{args.file}: invalid JSON: {exc}", 1)
    schema = _schema(args, "import")
    exists = Path(args.path).exists()
    # A missing store gets the origin's tables, but only once the rows proved valid.
    conn = _open(args, "import") if exists else sqlite3.connect(":memory:")
    if isinstance(conn, int):
        return conn
    try:
        if not exists:
            init_schema(conn)
        counts = import_tables(conn, data, schema)
        if not exists:
            conn.close()
            try:
                create_database(args.path)
            except OSError as exc:
                return _fail("import", os_error_text(exc, args.path), 2)
            except sqlite3.DatabaseError as exc:
                return _fail("import", store_error_text(args.path, exc), 2)
            conn = connect(args.path, create=False)
            counts = import_tables(conn, data, schema)
        undescribed = undescribed_tables(conn, counts, schema)
    except TransferError as exc:
        return _fail("import", f"{args.file}: nothing imported:\n  "
                     + "\n  ".join(exc.problems), 1)
    finally:
        conn.close()
    if not counts:
        print(f"{args.path}: imported 0 rows (the file names no tables)")
        return 0
    print(f"{args.path}: imported " + ", ".join(f"{n} {t}" for t, n in counts.items()))
    if undescribed and not args.storage_types_only:
        _path, where = schema_path(args, "import")
        source = (f"{schema.source} does not describe" if schema is not None
                  else f"no schema file ({where} does not exist) describes")
        print(f"komm-policy db import: notice: {source} {', '.join(undescribed)}: "
              "only the store's declared types were checked "
              "(not address or network syntax, not enum variants); describe the tables "
              "there, name the schema file with --schema or --policies, or pass "
              "--storage-types-only", file=sys.stderr)
    return 0


def run_delete(args: argparse.Namespace) -> int:
    conn = _open(args, "delete")
    if isinstance(conn, int):
        return conn
    try:
        deleted = delete_rows(conn, args.table, args.keys, _schema(args, "delete"))
    except TransferError as exc:
        return _fail("delete", "\n".join(exc.problems), 1)
    finally:
        conn.close()
    print(f"{args.path}: deleted {deleted} row{'s' if deleted != 1 else ''} of {args.table}")
    return 0
