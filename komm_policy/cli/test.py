"""`komm-policy test [PATH…]`: run the policy test files (`*.test.toml`) beside the policies.

Each PATH is a policy directory (its `*.test.toml` files are run against the policy set
of that directory) or one test file (run against the policies of its directory).  Every
case is decided in-process against an in-memory directory holding the case's table rows.
Exit codes as for `check`: 0 every case passed (and coverage reached `--threshold`), 1 a
failure, an unreadable test file, a policy set with errors or coverage below the
threshold, 2 a usage or I/O problem (a missing path, no test files).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ..directory.schema import SchemaError, find_schema, load_schema
from ..policyset import load_path
from ..policytest.report import Run, write
from ..policytest.runner import Coverage, run_cases
from ..policytest.spec import FILE_SUFFIX, SpecError, load_file


def register(sub: Any) -> None:
    parser = sub.add_parser("test", help="run policy test files (*.test.toml)",
                            description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=["policies"], metavar="PATH",
                        help="policy directory or test file (default: policies)")
    parser.add_argument("--format", choices=("text", "json", "junit"), default="text",
                        help="output format: text (default), json, or junit (JUnit XML)")
    parser.add_argument("--coverage", action="store_true",
                        help="report which rules, defaults and `on error` branches the "
                             "cases evaluated, matched and decided")
    parser.add_argument("--threshold", type=float, metavar="PCT",
                        help="fail (exit 1) when coverage is below PCT percent "
                             "(implies --coverage)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="list passing cases and fully covered rules too")
    parser.set_defaults(run=run)


def _test_sets(paths: list[str]) -> list[tuple[Path, list[Path]]]:
    """(policy directory, its test files) per PATH; OSError for a missing path."""
    sets: dict[Path, list[Path]] = {}
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.name.endswith(FILE_SUFFIX))
            if not files:
                raise FileNotFoundError(f"{path}: no *{FILE_SUFFIX} files")
            sets.setdefault(path, []).extend(files)
        elif path.is_file():
            sets.setdefault(path.parent, []).append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return list(sets.items())


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
        ) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    if args.threshold is not None and not 0 <= args.threshold <= 100:
        print("komm-policy test: --threshold must be a percentage from 0 to 100", file=err)
        return 2
    want_coverage = args.coverage or args.threshold is not None
    report = Run(threshold=args.threshold)
    started = time.perf_counter()
    try:
        sets = _test_sets(args.paths)
    except OSError as exc:
        print(f"komm-policy test: {exc}", file=err)
        return 2
    coverages = []
    for directory, files in sets:
        try:
            loaded = load_path(directory)
        except OSError as exc:
            print(f"komm-policy test: {exc}", file=err)
            return 2
        if loaded.policy_set is None:
            print(loaded.render(loaded.errors), file=err)
            print(f"komm-policy test: {directory}: the policy set has errors "
                  "(see `komm-policy check`)", file=err)
            return 1
        try:
            schema_path = find_schema(directory)
            schema = load_schema(schema_path) if schema_path is not None else None
        except (OSError, SchemaError) as exc:
            print(f"komm-policy test: {exc}", file=err)
            return 1
        coverage = Coverage(loaded.policy_set) if want_coverage else None
        for file in files:
            try:
                cases = load_file(file, schema)
            except SpecError as exc:
                report.file_errors.append(str(exc))
                continue
            except OSError as exc:
                print(f"komm-policy test: {file}: {exc.strerror or exc}", file=err)
                return 2
            report.results.extend(run_cases(loaded.policy_set, cases, coverage))
        if coverage is not None:
            coverages.append(coverage)
    if coverages:
        report.coverage = coverages[0]
        for extra in coverages[1:]:
            report.coverage.items.extend(extra.items)
    report.seconds = time.perf_counter() - started
    write(report, out, args.format, verbose=args.verbose)
    return 0 if report.ok else 1
