"""`komm-policy check [PATH…]`: lint policy sets for CI and editors.

Each PATH is one policy set (a directory of `*.policy` files, or a single file).  Output is
human text with source excerpts, JSON for tools, or GitHub workflow annotations.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any, TextIO

from ..directory.sqlite_store import connect
from ..directory.sqlite_tables import store_problems
from ..errors import Diagnostic, render
from ..policyset import LoadResult, load_path
from . import spacetimedb


def register(sub: Any) -> None:
    parser = sub.add_parser("check", help="check policy files and report problems",
                            description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=["policies"], metavar="PATH",
                        help="policy directory or file (default: policies)")
    parser.add_argument("--format", choices=("text", "json", "github"), default="text",
                        help="output format (default: text)")
    parser.add_argument("--strict", action="store_true",
                        help="treat warnings as errors (exit 1 on any warning)")
    parser.add_argument("--directory", metavar="URL",
                        help="also check a store (sqlite:PATH, or a SpacetimeDB database: "
                             "spacetimedb://HOST:PORT/DB) against the schema file and the "
                             "tables the policies read")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
        ) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    results: list[tuple[str, LoadResult]] = []
    for path in args.paths:
        try:
            results.append((path, load_path(Path(path))))
        except OSError as exc:
            print(f"komm-policy check: {exc.strerror or exc}: {exc.filename or path}"
                  if exc.filename else f"komm-policy check: {exc}", file=err)
            return 2
    errors = sum(len(r.errors) for _, r in results)
    warnings = sum(len(r.warnings) for _, r in results)
    if args.format == "json":
        _json(results, errors, warnings, out)
    elif args.format == "github":
        for _, result in results:
            for diagnostic in result.diagnostics:
                print(github_annotation(diagnostic, strict=args.strict), file=out)
    else:
        _text(results, errors, warnings, out, strict=args.strict)
    status = 1 if errors or (args.strict and warnings) else 0
    if getattr(args, "directory", None):
        for path, result in results:
            if result.policy_set is None:
                continue
            if args.directory.startswith("sqlite:"):
                found = check_sqlite(args.directory[len("sqlite:"):], Path(path),
                                     result.policy_set, out)
            else:
                found = spacetimedb.check_against(args.directory, Path(path),
                                                  result.policy_set, out, strict=args.strict)
            status = max(status, found)
    return status


def check_sqlite(store: str, policy_path: Path, policy_set: Any, out: TextIO) -> int:
    """Check the SQLite store at `store` (a path) against what `policy_set` reads, as the
    replica does when it meets the store (`sqlite_tables.store_problems`: tables, columns,
    declared keys); 0 ok, 1 problems, 2 the store cannot be read.  Prints one line per
    problem; a key problem is positioned at the schema file's `primary_key` entry.  The
    store is opened read-only (nothing is created or changed)."""
    tables = sorted(policy_set.needs.tables)
    if not store.strip():
        print(f"{policy_path}: sqlite: needs a path, e.g. sqlite:var/komm.sqlite3", file=out)
        return 2
    try:
        conn = connect(store, readonly=True)
        try:
            problems = store_problems(conn, policy_set.schema, tables, store)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        print(f"{policy_path}: cannot read the store {store}: {exc}", file=out)
        return 2
    for problem in problems:
        print(f"{policy_path}: error: {problem}", file=out)
    if not problems:
        print(f"{policy_path}: the store {store} has what the policies read "
              f"({', '.join(tables) or 'no tables'})", file=out)
    return 1 if problems else 0


def _text(results: list[tuple[str, LoadResult]], errors: int, warnings: int,
          out: TextIO, *, strict: bool = False) -> None:
    for path, result in results:
        for diagnostic in result.diagnostics:
            print(render(diagnostic, result.texts.get(diagnostic.span.file)), file=out)
            print(file=out)
        if result.policy_set is not None:
            ps = result.policy_set
            print(f"{path}: ok, {ps.rule_count} rule{'s' if ps.rule_count != 1 else ''} in "
                  f"{len(ps.sources)} file{'s' if len(ps.sources) != 1 else ''}, "
                  f"version {ps.version}", file=out)
        else:
            print(f"{path}: failed", file=out)
    verdict = ("; failed: --strict treats warnings as errors"
               if strict and warnings and not errors else "")
    print(f"{errors} error{'s' if errors != 1 else ''}, "
          f"{warnings} warning{'s' if warnings != 1 else ''}{verdict}", file=out)


def _json(results: list[tuple[str, LoadResult]], errors: int, warnings: int,
          out: TextIO) -> None:
    sets = []
    for path, result in results:
        ps = result.policy_set
        sets.append({
            "path": path,
            "ok": ps is not None,
            "version": ps.version if ps else None,
            "rules": ps.rule_count if ps else None,
            "files": [s.name for s in ps.sources] if ps else sorted(result.texts),
            "diagnostics": [d.to_json() for d in result.diagnostics],
        })
    json.dump({"errors": errors, "warnings": warnings, "sets": sets}, out, indent=2)
    out.write("\n")


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotation(diagnostic: Diagnostic, *, strict: bool = False) -> str:
    """A GitHub Actions workflow command that annotates the diagnostic's line."""
    level = "error" if diagnostic.is_error or strict else "warning"
    span = diagnostic.span
    props = ",".join([
        f"file={_escape_property(span.file)}",
        f"line={span.line}",
        f"col={span.column}",
        f"endLine={span.end_line}",
        f"endColumn={span.end_column}",
        f"title={_escape_property(diagnostic.code)}",
    ])
    message = diagnostic.message
    if diagnostic.hint:
        message += f" ({diagnostic.hint})"
    return f"::{level} {props}::{_escape_data(message)}"
