"""`komm-policy db init|export|import`: the embedded SQLite store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

from ..demo import DEMO_ROWS
from ..directory import DirectoryRows
from ..directory.sqlite import connect, create_database, read_rows, write_rows
from . import os_error_text, read_input

DEFAULT_PATH = "var/komm.sqlite3"


def register(sub: Any) -> None:
    parser = sub.add_parser("db", help="create, export or import the SQLite store",
                            description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="db_command", required=True)
    init = actions.add_parser("init", help="create the tables (idempotent)")
    init.add_argument("--path", default=DEFAULT_PATH, help=f"database file ({DEFAULT_PATH})")
    init.add_argument("--demo", action="store_true",
                      help="also insert the demo data that exercises every shipped rule")
    init.set_defaults(run=run_init)
    export = actions.add_parser("export", help="print the directory tables as JSON")
    export.add_argument("--path", default=DEFAULT_PATH, help=f"database file ({DEFAULT_PATH})")
    export.set_defaults(run=run_export)
    load = actions.add_parser("import", help="insert or replace rows from a JSON file")
    load.add_argument("file", help="JSON as written by `db export` ('-' for stdin)")
    load.add_argument("--path", default=DEFAULT_PATH, help=f"database file ({DEFAULT_PATH})")
    load.set_defaults(run=run_import)


def run_init(args: argparse.Namespace) -> int:
    try:
        create_database(args.path, DEMO_ROWS if args.demo else None)
    except OSError as exc:
        print(f"komm-policy db init: {os_error_text(exc, args.path)}", file=sys.stderr)
        return 2
    print(f"{args.path}: schema ready{' with demo data' if args.demo else ''}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    if not Path(args.path).exists():
        print(f"komm-policy db export: {args.path}: no such database", file=sys.stderr)
        return 2
    conn = connect(args.path, readonly=True)
    try:
        rows = read_rows(conn)
    finally:
        conn.close()
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(rows)).decode() + "\n")
    return 0


def run_import(args: argparse.Namespace) -> int:
    try:
        data = read_input(args.file)
        rows = msgspec.json.decode(data, type=DirectoryRows)
    except OSError as exc:
        print(f"komm-policy db import: {os_error_text(exc, args.file)}", file=sys.stderr)
        return 2
    except msgspec.ValidationError as exc:
        print(f"komm-policy db import: {args.file}: {exc}", file=sys.stderr)
        return 1
    except msgspec.DecodeError as exc:
        print(f"komm-policy db import: {args.file}: invalid JSON: {exc}", file=sys.stderr)
        return 1
    create_database(args.path)
    conn = connect(args.path)
    try:
        write_rows(conn, rows)
    finally:
        conn.close()
    counts = {name: len(getattr(rows, name)) for name in rows.__struct_fields__}
    print(f"{args.path}: imported " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return 0
