"""`komm-policy replay LOG --policies NEW [--baseline OLD]`: what a policy change would change.

LOG is a decision log: a JSON-lines file, or the SQLite store whose `mta_log` table holds
the records.  Each envelope-stage record is rebuilt into its request and decided by the
NEW policy set; the answer is compared with the recorded one, or with `--baseline OLD`
with OLD's answer on the same directory.  The report counts changes by stage and by rule,
shows the first examples (old vs new), and counts the records that cannot be replayed by
reason.  Exit codes: 0 the replay ran (1 with `--fail-on-change` when an answer changed),
1 a policy set has errors, 2 a usage or I/O problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from ..config import Config
from ..directory.schema import Schema
from ..directory.snapshot import Needs
from ..hook.service import close_directory, open_directory
from ..policyset import PolicySet, load_path
from ..replay import Change, LogError, ReplayReport, read_log, replay
from ..text import shown

SHOWN_RECIPIENTS = 5
"""Recipients a change example lists before `… and N more`."""


def register(sub: Any) -> None:
    parser = sub.add_parser("replay", help="re-decide logged requests with other policies",
                            description=__doc__.splitlines()[0])
    parser.add_argument("log", metavar="LOG",
                        help="decision log: a JSONL file or the SQLite store (mta_log)")
    parser.add_argument("--policies", required=True, metavar="NEW",
                        help="the policy set to try (directory or file)")
    parser.add_argument("--baseline", metavar="OLD",
                        help="compare with this policy set re-decided on the same directory "
                             "instead of the logged decisions")
    parser.add_argument("--directory", metavar="URL",
                        help="sqlite:PATH, memory:demo or memory:empty (default: "
                             "$KOMM_DIRECTORY, else the service's default "
                             f"{Config().directory})")
    parser.add_argument("--examples", type=int, default=10, metavar="N",
                        help="show the first N changed decisions (default: 10)")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="output format (default: text)")
    parser.add_argument("--fail-on-change", action="store_true",
                        help="exit 1 when any answer would change")
    parser.set_defaults(run=run)


def _load(path: str, err: TextIO) -> PolicySet | int:
    try:
        result = load_path(path)
    except OSError as exc:
        print(f"komm-policy replay: {exc}", file=err)
        return 2
    if result.policy_set is None:
        print(result.render(result.errors), file=err)
        print(f"komm-policy replay: {path}: the policy set has errors", file=err)
        return 1
    return result.policy_set


def _require(directory: object, *sets: PolicySet | None) -> None:
    """Replicate what both policy sets read (their tables, by their schema files; the new
    set's description of a table wins)."""
    require = getattr(directory, "require", None)
    loaded = [s for s in sets if s is not None]
    schemas = [s.schema for s in loaded if s.schema is not None]
    if require is None or not schemas:
        return
    tables = {name: table for schema in schemas for name, table in schema.tables.items()}
    require(Schema(tables, schemas[-1].source),
            Needs({spec for s in loaded for spec in s.needs.indexes}))


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
        ) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    if args.examples < 0:
        print("komm-policy replay: --examples must be 0 or more", file=err)
        return 2
    new = _load(args.policies, err)
    if isinstance(new, int):
        return new
    baseline = None
    if args.baseline is not None:
        baseline = _load(args.baseline, err)
        if isinstance(baseline, int):
            return baseline
    url = args.directory or os.environ.get("KOMM_DIRECTORY") or Config().directory
    try:
        entries = read_log(Path(args.log))
        directory = open_directory(Config(directory=url))
        try:
            _require(directory, baseline, new)
        except Exception:
            close_directory(directory)
            raise
    except LogError as exc:
        print(f"komm-policy replay: {exc}", file=err)
        return 2
    except Exception as exc:  # a directory that cannot be opened: say which and why
        print(f"komm-policy replay: directory {url}: {exc}", file=err)
        return 2
    try:
        report = replay(entries, new, directory, baseline=baseline,
                        max_examples=args.examples)
    except LogError as exc:
        print(f"komm-policy replay: {exc}", file=err)
        return 2
    finally:
        close_directory(directory)
    if args.format == "json":
        document = report.to_json()
        document.update({"log": args.log, "policies": args.policies,
                         "baseline": args.baseline, "directory": url,
                         "new_version": new.version,
                         "baseline_version": baseline.version if baseline else None})
        json.dump(document, out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        _text(report, args, url, out)
    return 1 if args.fail_on_change and report.total_changed else 0


def _text(report: ReplayReport, args: argparse.Namespace, url: str, out: TextIO) -> None:
    against = f"baseline {args.baseline}" if args.baseline else "the logged decisions"
    print(f"replay of {args.log}: policies {args.policies} against {against}, "
          f"directory {url}", file=out)
    replayed = sum(report.replayed.values())
    stages = ", ".join(f"{s} {n}" for s, n in sorted(report.replayed.items()))
    print(f"{report.records} records: {replayed} replayed" + (f" ({stages})" if stages
                                                               else ""), file=out)
    if report.skipped:
        print(f"{sum(report.skipped.values())} not replayed:", file=out)
        for reason, count in report.skipped.most_common():
            first = shown(report.skipped_examples[reason])
            print(f"  {count:>6}  {reason}  (first: {first})", file=out)
    if report.incomplete:
        print(f"{report.incomplete} replayed records have no record_version: HELO, SASL "
              "login, TLS and server facts were not logged and are replayed as absent",
              file=out)
    share = f" ({100 * report.total_changed / replayed:.1f}%)" if replayed else ""
    print(f"{report.total_changed} answers would change{share}", file=out)
    for stage, count in sorted(report.changed.items()):
        print(f"  {stage:<8} {count}", file=out)
    if report.changed_rules:
        print("by rule (old -> new):", file=out)
        for (stage, old, new), count in report.changed_rules.most_common():
            print(f"  {count:>6}  {stage:<8} {shown(old or '-')} -> {shown(new or '-')}",
                  file=out)
    if report.rule_only:
        print(f"{report.rule_only} answers stay the same but another rule decides", file=out)
    if report.examples:
        print(f"first {len(report.examples)} changes:", file=out)
        for change in report.examples:
            print(f"  {shown(change.where)}  {change.stage}  {_who(change)}".rstrip(),
                  file=out)
            print(f"      old: {shown(change.old)}", file=out)
            print(f"      new: {shown(change.new)}", file=out)


def _who(change: Change) -> str:
    """What identifies the change's session at its stage: `client IP` (`[redacted]` when
    the record was logged with redaction), `helo 'NAME'` at ehlo and auth, `login 'USER'`
    when authenticated, `from 'SENDER'` and `to A, B, … and N more` once known.  Every
    value from the log is escaped (`text.shown`); at most `SHOWN_RECIPIENTS` recipients."""
    recipients = ", ".join(shown(r) for r in change.recipients[:SHOWN_RECIPIENTS])
    more = len(change.recipients) - SHOWN_RECIPIENTS
    if more > 0:
        recipients += f", … and {more} more"
    client = shown(change.client_ip) if change.client_ip is not None else "[redacted]"
    return " ".join(part for part in (
        f"client {client}",
        f"helo '{shown(change.helo)}'" if change.helo is not None
        and change.stage in ("ehlo", "auth") else "",
        f"login '{shown(change.sasl_login)}'" if change.sasl_login is not None else "",
        f"from '{shown(change.sender)}'" if change.sender is not None else "",
        f"to {recipients}" if recipients else "") if part)
